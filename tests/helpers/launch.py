"""Start a test script as N local ranks the way torchrun would (env vars), for 2-process CPU tests.

Lightning sees `LOCAL_RANK` and treats the processes as launched externally (its
`LightningEnvironment`), exactly as under torchrun or SLURM.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from . import REPO, TESTS

SCRIPTS = TESTS / "scripts"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def script_env(**extra: str) -> dict[str, str]:
    """Environment for a test script: CPU DeepSpeed, one thread per process, `tests.helpers` importable."""
    env = dict(os.environ)
    env.update(
        DS_ACCELERATOR="cpu",
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]),
        TOKENIZERS_PARALLELISM="false",
    )
    env.update(extra)
    return env


def start(script: str, args: list[str], log: Path, **env: str) -> subprocess.Popen:
    """One process running tests/scripts/<script>, output to `log`."""
    with open(log, "w") as out:
        return subprocess.Popen(
            [sys.executable, str(SCRIPTS / script), *args],
            env=script_env(**env),
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def start_ranks(
    script: str, args: list[str], logdir: Path, nprocs: int = 2, tag: str = "", **env: str
) -> list[subprocess.Popen]:
    """`script` as `nprocs` local ranks (torchrun's env vars), logs in LOGDIR/<tag->rank<r>.log."""
    ranks = dict(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), WORLD_SIZE=str(nprocs), NODE_RANK="0")
    prefix = f"{tag}-" if tag else ""
    return [
        start(script, args, logdir / f"{prefix}rank{r}.log", RANK=str(r), LOCAL_RANK=str(r), **ranks, **env)
        for r in range(nprocs)
    ]


def launch(script: str, args: list[str], logdir: Path, nprocs: int = 2, timeout: float = 600) -> None:
    """Run `script` on `nprocs` ranks and wait; on failure or timeout, kill all and show the logs."""
    procs = start_ranks(script, args, logdir, nprocs)
    deadline = time.monotonic() + timeout
    try:
        while any(p.poll() is None for p in procs):
            if time.monotonic() > deadline or any(p.returncode not in (None, 0) for p in procs):
                break
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    codes = [p.returncode for p in procs]
    if any(codes):
        tails = "\n".join(
            f"--- rank {r} (exit {c}) ---\n" + (logdir / f"rank{r}.log").read_text()[-4000:]
            for r, c in enumerate(codes)
        )
        raise AssertionError(f"{script} failed: exit codes {codes}\n{tails}")
