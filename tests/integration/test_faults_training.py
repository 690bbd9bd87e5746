"""Faults on the training side, each with its exact outcome: SIGTERM while the loader waits, and a
DeepSpeed checkpoint whose pickle would run code."""

from __future__ import annotations

import json
import shutil
import signal
import time
from pathlib import Path

import torch

from internvl_lightning.training.integrity import record, verify
from tests.helpers.launch import start
from tests.helpers.streams import write_shards


def read_losses(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


STEPS, STALL_AT = 5, 4  # the stream stalls fetching pack 4: steps 1-3 are done (one batch fetched ahead)


def wait_for(condition, what: str, proc, log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"{what} never happened"
        time.sleep(0.05)


def test_sigterm_while_the_loader_waits_saves_and_exits_promptly(tiny_components, tmp_path):
    vision, llm = (str(p) for p in tiny_components)
    shards = str(write_shards(tmp_path / "shards"))
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    ref_dir.mkdir(), run_dir.mkdir()
    args = [vision, llm, shards]
    ref = start("fit_stalling.py", [*args, str(ref_dir), str(STEPS), "-1"], ref_dir / "log.txt")
    victim = start("fit_stalling.py", [*args, str(run_dir), str(STEPS), str(STALL_AT)], run_dir / "log1.txt")
    try:
        wait_for(lambda: (run_dir / "stalled").exists(), "the stall", victim, run_dir / "log1.txt")
        assert len(read_losses(run_dir / "losses.jsonl")) == 3
        sent = time.monotonic()
        victim.send_signal(signal.SIGTERM)
        code = victim.wait(timeout=30)
        took = time.monotonic() - sent
        assert ref.wait(timeout=300) == 0, (ref_dir / "log.txt").read_text()[-3000:]
    finally:
        for p in (ref, victim):
            if p.poll() is None:
                p.kill()
    log = (run_dir / "log1.txt").read_text()
    assert code == 143, log[-3000:]  # 128 + SIGTERM: the scheduler sees a preempted run, not a success
    assert took < 30
    ckpt_dir = run_dir / "checkpoints"
    assert verify(ckpt_dir / "last.ckpt").intact and not verify(ckpt_dir / "last.ckpt").unverified
    assert torch.load(ckpt_dir / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] == 3
    assert "stopped by SIGTERM while waiting for the data loader (step 3); checkpoint" in log

    again = start("fit_stalling.py", [*args, str(run_dir), str(STEPS), "-1", "last"], run_dir / "log2.txt")
    assert again.wait(timeout=300) == 0, (run_dir / "log2.txt").read_text()[-3000:]
    want = {r["step"]: r["loss"] for r in read_losses(ref_dir / "losses.jsonl")}
    got = read_losses(run_dir / "losses.jsonl")
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))  # nothing trained twice or skipped
    assert all(r["loss"] == want[r["step"]] for r in got), (got, want)


class OpensAFile:
    """A pickle payload: unpickling it calls open(path, "w"), creating the file."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_zero_checkpoint_whose_pickle_would_run_code_is_refused(tiny_components, tmp_path):
    """A ZeRO-1 checkpoint with a planted optimizer file (its checksums rewritten to match, as an
    attacker would): resuming fails with a clear error and the payload never runs; an intact
    checkpoint of the same run still resumes exactly."""
    vision, llm = (str(p) for p in tiny_components)
    shards = str(write_shards(tmp_path / "shards"))
    run = tmp_path / "run"
    run.mkdir()
    args = ["1", vision, llm, shards, str(run)]
    first = start("fit_zero.py", [*args, "2"], run / "log1.txt")
    assert first.wait(timeout=300) == 0, (run / "log1.txt").read_text()[-3000:]
    reference = json.loads((run / "result.json").read_text())["losses"]

    ckpt_dir = run / "checkpoints"
    newest = ckpt_dir / "epoch=0-step=2.ckpt"
    planted = newest / "checkpoint" / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    state = torch.load(planted, map_location="cpu", weights_only=False)
    marker = tmp_path / "payload-ran"
    state["optimizer_state_dict"] = OpensAFile(marker)
    torch.save(state, planted)
    record(newest, newest)  # the checksums match the planted file
    assert verify(ckpt_dir / "last.ckpt").intact

    refused = start("fit_zero.py", [*args, "3", "last"], run / "log2.txt")
    assert refused.wait(timeout=300) != 0
    log = (run / "log2.txt").read_text()
    assert not marker.exists()
    via_last = ckpt_dir / "last.ckpt" / planted.relative_to(newest)
    assert f"UnsafeCheckpointError: refusing to resume from {via_last}: it references io.open," in log
    assert "nothing in it was run" in log

    (run / "result.json").unlink()
    shutil.rmtree(newest)
    intact = str(ckpt_dir / "epoch=0-step=1.ckpt")
    again = start("fit_zero.py", [*args, "2", intact], run / "log3.txt")
    assert again.wait(timeout=300) == 0, (run / "log3.txt").read_text()[-3000:]
    resumed = json.loads((run / "result.json").read_text())
    assert resumed["start_step"] == 1 and resumed["losses"] == {"2": reference["2"]}
