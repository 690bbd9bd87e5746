"""A normal run, typed as a user types it, prints no third-party noise; its progress bar counts
optimizer steps; real warnings come once with a WARNING prefix."""

from __future__ import annotations

import subprocess
import sys

import yaml

from tests.helpers import REPO
from tests.helpers.recipes import cpu_recipe

NOISE = (
    "args parameter",
    "Setting accelerator to CPU",
    "litlogger",
    "litmodels",
    "is not supported by the model summary",
    "LeafSpec",
    "across ranks is zero",
    "Writing model shards",
    "Loading weights",
    "Total FLOPs",
    "v_num",
    "Epoch 0/",
)


def _run(args: list[str], cwd) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "internvl_lightning", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    return out


def test_a_stage_run_is_quiet_and_counts_steps(tiny_components, shards, tmp_path):
    vision, llm = tiny_components
    recipe = cpu_recipe("stage1_5", tmp_path, max_steps=4)
    cfg = yaml.safe_load(recipe.read_text())
    cfg["trainer"]["enable_progress_bar"] = True
    recipe.write_text(yaml.safe_dump(cfg))
    out = _run(
        [
            "fit",
            "--config",
            str(recipe),
            f"--model.init_from={_stage_input(vision, llm, tmp_path)}",
            f"--data.shards={shards}",
            "--data.num_workers=64",
        ],  # fmt: skip
        REPO,
    )
    found = [n for n in NOISE if n in out]
    assert not found, (found, out[-3000:])
    lines = out.replace("\r", "\n").splitlines()
    warned = [line for line in lines if "--data.num_workers=64" in line]
    assert len(warned) == 1 and warned[0].startswith("WARNING: "), warned
    bars = [line for line in lines if line.startswith("train") and "step" in line]
    assert bars and "4/4" in bars[-1], bars[-5:]


def _stage_input(vision, llm, tmp_path):
    """A stage-1 output to start stage 1.5 from (the model of the two components, exported)."""
    from internvl_lightning.export import export_hf
    from internvl_lightning.model import build_model

    out = tmp_path / "stage1_hf"
    if not out.exists():
        export_hf(build_model(vision=vision, llm=llm), out, llm)
    return out


def test_commands_that_do_not_train_are_quiet(tmp_path):
    out = _run(["components", "--preset", "tiny", "--out_dir", str(tmp_path / "c")], tmp_path)
    assert not [n for n in NOISE if n in out], out
    out = _run(["plan", "--preset", "tiny", "--gpus", "8"], tmp_path)
    assert not [n for n in NOISE if n in out], out
    assert "--trainer.accumulate_grad_batches" in out or "packs_per_step" in out
