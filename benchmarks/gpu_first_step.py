"""Time to first step, cold and warm: two fresh processes that each build the 1B shape and train
one pack (``gpu.py``), sharing one on-disk compile cache (inductor's FX graph and autograd caches
and Triton's kernels, :func:`cache_env`). The first finds the cache empty on a fresh machine (its
figure says whether it did), the second reuses what the first wrote.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cache_env(cache_dir: Path) -> dict[str, str]:
    """The environment that keeps PyTorch's compiled artefacts in ``cache_dir`` across processes."""
    return {
        "TORCHINDUCTOR_CACHE_DIR": str(cache_dir / "inductor"),
        "TRITON_CACHE_DIR": str(cache_dir / "triton"),
        "TORCHINDUCTOR_FX_GRAPH_CACHE": "1",
        "TORCHINDUCTOR_AUTOGRAD_CACHE": "1",
    }


def cache_files(cache_dir: Path) -> int:
    return sum(1 for p in cache_dir.rglob("*") if p.is_file()) if cache_dir.exists() else 0


def one_process(label: str, cache_dir: Path, out_dir: Path, gpu_args: list[str], timeout: float) -> dict:
    """Wall time of a fresh ``gpu.py`` process (imports, build, first step) and its own timings."""
    before = cache_files(cache_dir)
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu.py"), *gpu_args, "--steps", "1", "--warmup", "1",
           "--out", str(out_dir), "--name", f"first_step_{label}"]  # fmt: skip
    t0 = time.perf_counter()
    done = subprocess.run(
        cmd, env=os.environ | cache_env(cache_dir), capture_output=True, text=True, timeout=timeout
    )
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{label} run failed ({done.returncode}): {done.stderr[-2000:]}")
    r = json.loads((out_dir / f"first_step_{label}.json").read_text())["results"][0]
    if "error" in r:
        raise RuntimeError(f"{label} run: {r['error']}")
    return {
        "cache_files_before": before,
        "process_seconds": wall,
        "build_seconds": r["build_seconds"],
        "first_step_seconds": r["warmup_seconds"][0],
        "second_step_seconds": r["step_seconds"][0],
    }


def first_step(cache_dir: Path, out_dir: Path, gpu_args: list[str], timeout: float = 420.0) -> dict:
    cold = one_process("cold", cache_dir, out_dir, gpu_args, timeout)
    warm = one_process("warm", cache_dir, out_dir, gpu_args, timeout)
    return {
        "cache_dir_was_empty": cold["cache_files_before"] == 0,
        "cold": cold,
        "warm": warm,
        "warm_over_cold_first_step": warm["first_step_seconds"] / cold["first_step_seconds"],
    }
