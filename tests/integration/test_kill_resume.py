"""A real SIGKILL in the middle of a fit, then the same command again: the loss curve continues exactly."""

from __future__ import annotations

import json
import math
import signal
import time
from pathlib import Path

import torch

from tests.helpers.launch import start
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
