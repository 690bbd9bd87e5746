"""Shared helpers of the benchmark figures: machine info, timing, result files and the summary table.

Every figure module exposes ``run(quick: bool = False) -> dict`` returning

    {"figure": str, "title": str, "rows": [row, ...], "details": {...}}

where a row is ``{"metric", "target", "measured", "passed"}`` (``passed`` is True, False or None when
the row is informative only). :func:`save` adds the machine description and writes the JSON file.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
TEST_IMAGES = REPO / "tests" / "assets" / "images"


def cpu_model() -> str:
    """The processor's marketing name (Linux ``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(name: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:  # not installed
        return None


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on."""
    import torch

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count()
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        mem = None
    info = {
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "cpu_model": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": usable,
        "torch_threads": torch.get_num_threads(),
        "memory_gib": round(mem / 2**30, 1) if mem else None,
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    for name in ("torch", "transformers", "lightning", "pillow", "numpy", "webdataset", "tokenizers", "av"):
        info[name] = _version(name)
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def median(values: Iterable[float]) -> float:
    return float(statistics.median(list(values)))


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """(seconds, result) of one call."""
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def interleaved(variants: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
    """Time each variant ``repeats`` times, alternating A B A B ... so that load changes on a shared
    machine hit all variants alike. Returns the seconds of every run per variant."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            times[name].append(timed(fn)[0])
    return times


def row(metric: str, target: str, measured: str, passed: bool | None) -> dict[str, Any]:
    return {"metric": metric, "target": target, "measured": measured, "passed": passed}


def status(passed: bool | None) -> str:
    return "n/a" if passed is None else ("pass" if passed else "short")


def save(result: dict[str, Any], out_dir: Path = RESULTS, machine: dict | None = None) -> Path:
    """Write ``<out_dir>/<figure>.json`` (result + machine description); return its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {"machine": machine or machine_info(), **result}
    path = out_dir / f"{result['figure']}.json"
    path.write_text(json.dumps(payload, indent=1, default=float) + "\n")
    return path


def table(results: list[dict[str, Any]]) -> str:
    """The summary table: figure | metric | target | measured | pass/short."""
    lines = [("figure", "metric", "target", "measured", "result")]
    for res in results:
        for r in res["rows"]:
            lines.append((res["figure"], r["metric"], r["target"], r["measured"], status(r["passed"])))
    widths = [max(len(str(line[i])) for line in lines) for i in range(5)]
    out = []
    for k, line in enumerate(lines):
        out.append("  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip())
        if k == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def markdown_table(results: list[dict[str, Any]]) -> str:
    """The same table in Markdown (for benchmarks/README.md)."""
    out = ["| figure | metric | target | measured | result |", "|---|---|---|---|---|"]
    for res in results:
        for r in res["rows"]:
            cells = (res["figure"], r["metric"], r["target"], r["measured"], status(r["passed"]))
            out.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(out)


def print_result(result: dict[str, Any]) -> None:
    print(f"\n== {result['figure']}: {result['title']}")
    print(table([result]))


class cpu_settings:
    """Context: ``threads`` torch threads and denormals flushed to zero, restored afterwards.

    On a small shared machine, OpenMP's barriers make multi-threaded small ops stall whenever a
    neighbour's process takes a core (we measured 5-10x slower steps), and Adam's second moments of
    a randomly initialised model reach denormal floats, which x86 computes ~100x slower. Both
    distort CPU timings without saying anything about the code under test.
    """

    def __init__(self, threads: int = 1) -> None:
        self.threads = threads

    def __enter__(self) -> cpu_settings:
        import torch

        self._saved = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        torch.set_flush_denormal(True)
        return self

    def __exit__(self, *exc: object) -> None:
        import torch

        torch.set_num_threads(self._saved)
        torch.set_flush_denormal(False)
