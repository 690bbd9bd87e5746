"""Published InternVL2.5 numbers to print beside ours (data in ``baselines.json``, with its source).

The model size comes from ``--baseline SIZE`` or is guessed from the parameter count: the
published size whose parameter count (InternVL2.5 shapes, see ``model/presets.py``) is nearest
in ratio, if within 25%; otherwise (a tiny or custom model) no baseline is shown.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path
from typing import Any

# Substrings of a VQA file name -> baseline key (the split in the label says what the number is for).
_VQA_NAMES = (("textvqa", "textvqa"), ("docvqa", "docvqa"), ("chartqa", "chartqa"), ("ai2d", "ai2d"))
GUESS_TOLERANCE = 0.25


@lru_cache(maxsize=1)
def table() -> dict[str, Any]:
    """The parsed ``baselines.json``."""
    return json.loads((Path(__file__).with_name("baselines.json")).read_text())


def sizes() -> list[str]:
    return list(table()["models"])


def guess_size(num_parameters: int) -> str | None:
    """The published size nearest to ``num_parameters`` (within 25%), else None."""
    best, best_gap = None, math.inf
    for size, count in table()["parameters"].items():
        gap = abs(math.log(num_parameters / count))
        if gap < best_gap:
            best, best_gap = size, gap
    return best if best_gap <= math.log(1 + GUESS_TOLERANCE) else None


def baseline_key(benchmark: str, data: str | Path | None = None, dataset: str | None = None) -> str | None:
    """Which baseline column a run compares with: the benchmark, or for VQA the dataset named by
    ``dataset`` or guessed from the file name (textvqa, docvqa, chartqa, ai2d)."""
    if benchmark != "vqa":
        return benchmark
    name = (dataset or (Path(str(data)).name if data is not None else "")).lower()
    for needle, key in _VQA_NAMES:
        if needle in name:
            return key
    return dataset if dataset in table()["benchmarks"] else None


def lookup(size: str | None, key: str | None) -> dict[str, Any] | None:
    """``{"model", "benchmark", "score", "source"}`` for a size and key; score None when unknown."""
    if size is None:
        return None
    size = size.lower().removesuffix("b") + "b"
    t = table()
    if size not in t["models"]:
        raise ValueError(f"unknown baseline size {size!r}; known: {sizes()}")
    if key is None or key not in t["benchmarks"]:
        return None
    return {
        "model": f"InternVL2.5-{size.upper()}",
        "benchmark": t["benchmarks"][key],
        "score": t["models"][size].get(key),
        "source": t["source"],
    }
