"""A real SIGKILL in the middle of a fit, then the same command again: the loss curve continues exactly
(a Python fit, and the `fit` command with `--ckpt_path=last` as SLURM requeue scripts run it)."""

from __future__ import annotations

import csv
import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from tests.helpers.launch import script_env, start
from tests.helpers.recipes import cpu_recipe
from tests.helpers.streams import write_shards


def read_losses(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_sigkill_then_resume_continues_the_loss_curve_exactly(tiny_components, tmp_path):
    """Kill a fit with SIGKILL after step 3 (possibly mid-save), resume from `last`: every step's loss
    equals the uninterrupted run's, bit for bit. Exact because the resumed process starts from
    bit-identical fp32 weights and AdamW state, the same data position and RNG states, and runs the
    same deterministic single-thread CPU kernels on the same shapes."""
    steps, kill_after = 6, 3
    vision, llm = (str(p) for p in tiny_components)
    shards = str(write_shards(tmp_path / "shards"))
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    ref_dir.mkdir(), run_dir.mkdir()
    args = [vision, llm, shards]
    ref = start("fit_killable.py", [*args, str(ref_dir), str(steps)], ref_dir / "log.txt")
    victim = start("fit_killable.py", [*args, str(run_dir), str(steps)], run_dir / "log1.txt")
    deadline = time.monotonic() + 300
    try:
        while len(read_losses(run_dir / "losses.jsonl")) < kill_after:
            assert victim.poll() is None, (run_dir / "log1.txt").read_text()[-3000:]
            assert time.monotonic() < deadline, "the run never reached step 3"
            time.sleep(0.05)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        assert ref.wait(timeout=300) == 0, (ref_dir / "log.txt").read_text()[-3000:]
    finally:
        for p in (ref, victim):
            if p.poll() is None:
                p.kill()
    last = run_dir / "ckpt" / "last.ckpt"
    resumed_from = torch.load(last, map_location="cpu", weights_only=True)["global_step"]
    assert kill_after - 1 <= resumed_from <= kill_after  # the step-3 save may have been cut short
    again = start("fit_killable.py", [*args, str(run_dir), str(steps), "last"], run_dir / "log2.txt")
    assert again.wait(timeout=300) == 0, (run_dir / "log2.txt").read_text()[-3000:]

    want = {r["step"]: r["loss"] for r in read_losses(ref_dir / "losses.jsonl")}
    got = read_losses(run_dir / "losses.jsonl")
    assert sorted(want) == list(range(1, steps + 1)) and all(math.isfinite(v) for v in want.values())
    pids = list(dict.fromkeys(r["pid"] for r in got))
    assert len(pids) == 2  # killed process, resumed process
    second = [r["step"] for r in got if r["pid"] == pids[1]]
    assert second == list(range(resumed_from + 1, steps + 1))
    assert {r["step"] for r in got} == set(want)
    for r in got:  # steps run twice (after the kill, before the last complete save) agree too
        assert r["loss"] == want[r["step"]], (r, want[r["step"]])


def cli_losses(run: Path) -> list[dict[int, float]]:
    """Per-step train/loss of each CSV-logged run (version) under `run`, in run order."""
    out = []
    for version in sorted((run / "lightning_logs").iterdir(), key=lambda p: int(p.name.split("_")[1])):
        with open(version / "metrics.csv") as f:
            rows = [r for r in csv.DictReader(f) if r.get("train/loss")]
        out.append({int(r["step"]): float(r["train/loss"]) for r in rows})
    return out


def test_rerunning_the_same_command_after_a_crash_continues_the_run(tiny_components, tmp_path):
    """`fit --config ... --ckpt_path=last`, as a SLURM requeue script runs it: the first time it starts
    from scratch with one warning; after a SIGKILL the identical command resumes from the run's
    newest checkpoint (<default_root_dir>/checkpoints), and its losses equal an uninterrupted run's."""
    steps = 6
    vision, llm = tiny_components
    shards = write_shards(tmp_path / "shards")

    def command(root: Path) -> list[str]:
        recipe = cpu_recipe("stage1", root, max_steps=steps)  # checkpoints every 2 steps
        cfg = yaml.safe_load(recipe.read_text())
        cfg["trainer"]["logger"] = {
            "class_path": "lightning.pytorch.loggers.CSVLogger",
            "init_args": {"save_dir": str(root / "stage1"), "flush_logs_every_n_steps": 1},
        }
        cfg["model"]["drop_path_rate"] = 0.1  # the RNG matters
        recipe.write_text(yaml.safe_dump(cfg))
        return [sys.executable, "-m", "internvl_lightning", "fit", "--config", str(recipe),
                f"--model.vision={vision}", f"--model.llm={llm}", f"--data.shards={shards}",
                "--model.lr=1e-3", "--ckpt_path=last"]  # fmt: skip

    def run(root: Path, log: str) -> subprocess.Popen:
        root.mkdir(exist_ok=True)
        with open(root / log, "w") as out:
            return subprocess.Popen(command(root), env=script_env(), stdout=out, stderr=subprocess.STDOUT)

    ref_root, root = tmp_path / "ref", tmp_path / "run"
    ref, victim = run(ref_root, "log.txt"), run(root, "log1.txt")
    ckpt_dir = root / "stage1" / "checkpoints"
    deadline = time.monotonic() + 300
    try:
        # the checkpoint and its "last" link: a kill between the two leaves no last.ckpt to read below
        while not ((ckpt_dir / "epoch=0-step=2.ckpt").exists() and (ckpt_dir / "last.ckpt").exists()):
            assert victim.poll() is None, (root / "log1.txt").read_text()[-3000:]
            assert time.monotonic() < deadline, "the run never saved step 2"
            time.sleep(0.05)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        assert ref.wait(timeout=300) == 0, (ref_root / "log.txt").read_text()[-3000:]
    finally:
        for p in (ref, victim):
            if p.poll() is None:
                p.kill()
    first_log = (root / "log1.txt").read_text()
    warnings = [
        line for line in first_log.splitlines() if line.startswith("WARNING:") and "ckpt_path" in line
    ]
    assert warnings == [f"WARNING: --ckpt_path=last: no checkpoint in {ckpt_dir} yet; starting from scratch"]
    assert "no last checkpoint available" not in first_log  # Lightning's own, misleading here
    resumed_from = torch.load(ckpt_dir / "last.ckpt", map_location="cpu", weights_only=True)["global_step"]

    again = run(root, "log2.txt")
    assert again.wait(timeout=300) == 0, (root / "log2.txt").read_text()[-3000:]
    (want,) = cli_losses(ref_root / "stage1")
    assert sorted(want) == list(range(steps)) and all(math.isfinite(v) for v in want.values())
    resumed = cli_losses(root / "stage1")[-1]
    assert resumed_from in (2, 4) and sorted(resumed) == list(range(resumed_from, steps))
    assert resumed == {s: want[s] for s in resumed}
    assert "Restored all states from the checkpoint at" in (root / "log2.txt").read_text()
