"""The shortened demo (`demo --quick`): every step of `make demo` runs end to end on CPU."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForImageTextToText

from internvl_lightning.demo.run import run_demo


@pytest.mark.slow
def test_quick_demo_runs_every_step(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative output directory, as `make demo` passes it
    result = run_demo("demo", quick=True)
    out = tmp_path / "demo"
    # every stage trained, wrote its output and logged losses
    for stage in ("stage1", "stage1_5", "stage2"):
        assert (out / "run" / stage / "hf" / "stage_complete.json").exists()
    assert [r[0] for r in result["rows"]] == ["stage1", "stage1_5", "stage2"]
    assert all(r[2] == r[2] and r[2] > 0 for r in result["rows"]), "a finite final loss per stage"
    # evaluated on the held-out MMBench-format set after stage 1 and stage 2
    assert set(result["accuracy"]) == {"stage1", "stage2"}
    assert all(0.0 <= a <= 1.0 for a in result["accuracy"].values())
    # the summary, the plot and an export transformers loads natively
    assert (out / "loss_curve.png").stat().st_size > 1000
    assert "held-out accuracy" in (out / "summary.md").read_text()
    export = result["export"]["hf"]
    model = AutoModelForImageTextToText.from_pretrained(export)
    assert type(model).__name__ == "InternVLForConditionalGeneration"
    assert json.loads((out / "summary.json").read_text())["accuracy"] == result["accuracy"]
    assert torch.isfinite(next(model.parameters())).all()


_ENCODE_CLIPS = """
import hashlib, pathlib, sys, tempfile
from internvl_lightning.demo.dataset import write_stage_data
with tempfile.TemporaryDirectory() as d:
    write_stage_data(pathlib.Path(d), 200, 200, 300, seed=0)  # the demo-quick mixtures (37 clips)
    h = hashlib.md5()
    for f in sorted(pathlib.Path(d).rglob("*.mp4")):
        h.update(f.read_bytes())
print(h.hexdigest())
"""


def test_demo_videos_are_the_same_bytes_in_every_process():
    """The demo's clips must not depend on the process that encodes them (libx264's macroblock
    tree once made about one demo run in three train stage 2 on different pixels)."""
    import subprocess
    import sys

    digests = {
        subprocess.run(
            [sys.executable, "-c", _ENCODE_CLIPS], check=True, capture_output=True, text=True
        ).stdout
        for _ in range(5)
    }
    assert len(digests) == 1, digests
