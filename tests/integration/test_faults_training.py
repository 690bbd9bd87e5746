"""Faults on the training side, each with its exact outcome: SIGTERM while the loader waits (one
process, and two where one rank's loader never returns), and a DeepSpeed checkpoint whose pickle
would run code."""

from __future__ import annotations

import json
import re
import shutil
import signal
import time
from pathlib import Path

import torch

from internvl_lightning.training.integrity import record, verify
from tests.helpers.launch import start, start_ranks
from tests.helpers.streams import write_shards


def read_losses(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


STEPS, STALL_AT = 5, 4  # the stream stalls fetching pack 4: steps 1-3 are done (one batch fetched ahead)


def wait_for(condition, what: str, procs: list, logs: list[Path], timeout: float = 300) -> None:
    """Poll `condition` until it holds, failing (with the logs' tails) if a process ends first."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert all(p.poll() is None for p in procs), [log.read_text()[-3000:] for log in logs]
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
        wait_for(lambda: (run_dir / "stalled").exists(), "the stall", [victim], [run_dir / "log1.txt"])
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


def start_stuck_ranks(args: list[str], logdir: Path, tag: str, **env: str) -> list:
    """fit_stuck_rank.py as 2 local ranks, logs in LOGDIR/<tag>-rank<r>.log."""
    return start_ranks("fit_stuck_rank.py", args, logdir, tag=tag, **env)


def sigterm_when(procs: list, ready, what: str, logs: list[Path], timeout: float, settle: float = 0.0):
    """Wait until `ready()` (each process still running), then SIGTERM every one: (exit codes,
    seconds from the signal to the last exit). Whatever is still running afterwards is killed."""
    try:
        wait_for(ready, what, procs, logs)
        time.sleep(settle)
        sent = time.monotonic()
        for p in procs:
            p.send_signal(signal.SIGTERM)
        codes = [p.wait(timeout=timeout) for p in procs]
        return codes, time.monotonic() - sent
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


GRACE = 5  # seconds (INTERNVL_SIGTERM_GRACE): short, so the test is quick


def test_sigterm_with_one_rank_stuck_in_its_loader_ends_both_after_the_grace(tiny_components, tmp_path):
    """Rank 1's loader blocks for good at step 4; rank 0 waits for it in the gradient all-reduce.
    SIGTERM to both: each exits 143 shortly after the grace, with one ERROR line, and the periodic
    checkpoint of step 2 stays intact and resumes."""
    vision, llm = (str(p) for p in tiny_components)
    run = tmp_path / "run"
    run.mkdir()
    args = [vision, llm, str(write_shards(tmp_path / "shards")), str(run)]
    ckpt = run / "checkpoints" / "epoch=0-step=2.ckpt"
    procs = start_stuck_ranks([*args, "6", str(STALL_AT)], run, "stuck", INTERNVL_SIGTERM_GRACE=str(GRACE))
    codes, took = sigterm_when(
        procs,
        lambda: (run / "stalled").exists() and (run / "checkpoints" / "last.ckpt").exists(),
        "rank 1's stall",
        [run / f"stuck-rank{r}.log" for r in (0, 1)],
        timeout=30,
        settle=1,  # rank 0 reaches the all-reduce that rank 1 never joins
    )
    logs = [(run / f"stuck-rank{r}.log").read_text() for r in (0, 1)]
    assert codes == [143, 143], [log[-3000:] for log in logs]
    assert GRACE <= took < 30
    for rank, log in enumerate(logs):
        lines = [ln for ln in log.splitlines() if ln.startswith("ERROR: ")]
        assert len(lines) == 1, log[-3000:]
        assert lines[0].startswith(
            f"ERROR: [rank {rank}] SIGTERM: the ranks did not stop together within {GRACE} s"
        )
        assert lines[0].endswith(
            f"exiting with status 143: no checkpoint was written this time; "
            f"a rerun with --ckpt_path=last resumes from {ckpt}"
        )
    assert "(this rank is waiting for the data loader)" in logs[1]
    assert "(this rank is waiting in " in logs[0]
    last = run / "checkpoints" / "last.ckpt"
    assert last.resolve() == ckpt.resolve() and verify(last).intact and not verify(last).unverified

    again = start_stuck_ranks([*args, "4", "-1", "last"], run, "again")
    try:
        codes = [p.wait(timeout=300) for p in again]
    finally:
        for p in again:
            if p.poll() is None:
                p.kill()
    assert codes == [0, 0], [(run / f"again-rank{r}.log").read_text()[-3000:] for r in (0, 1)]
    resumed = [r for r in read_losses(run / "losses-rank0.jsonl") if r["pid"] == again[0].pid]
    assert [r["step"] for r in resumed] == [3, 4]  # on from the step-2 checkpoint


def test_sigterm_on_two_ranks_stops_both_at_one_batch_and_saves(tiny_components, tmp_path):
    """No rank stuck: the ranks agree at a batch end, save that step and exit 143 well within the grace."""
    vision, llm = (str(p) for p in tiny_components)
    run = tmp_path / "run"
    run.mkdir()
    args = [vision, llm, str(write_shards(tmp_path / "shards")), str(run)]
    procs = start_stuck_ranks([*args, "40", "-1"], run, "plain", INTERNVL_SIGTERM_GRACE="60")
    codes, took = sigterm_when(
        procs,
        lambda: len(read_losses(run / "losses-rank0.jsonl")) >= 3,
        "training reaching step 3",
        [run / f"plain-rank{r}.log" for r in (0, 1)],
        timeout=60,
    )
    log = (run / "plain-rank0.log").read_text()
    assert codes == [143, 143] and took < 60, log[-3000:]
    found = re.search(r"stopped by SIGTERM after step (\d+) \(step \1\); checkpoint (\S+)", log)
    assert found, log[-3000:]
    assert "ERROR: " not in log + (run / "plain-rank1.log").read_text()
    last = run / "checkpoints" / "last.ckpt"
    assert last.resolve() == Path(found[2]).resolve() and verify(last).intact
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == int(found[1])


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
