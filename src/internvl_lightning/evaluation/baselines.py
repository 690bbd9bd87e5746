"""Published InternVL numbers to print beside ours (data in ``baselines.json``, each number with its source).

The model comes from ``baseline`` ("internvl2.5-8b", "internvl3.5-2b"; a bare size such as "8b"
means InternVL2.5) or is guessed from the parameter count: the published model whose count is
nearest in ratio, if within 25%; otherwise (a tiny or custom model) no baseline is shown.
A benchmark without a number gives a baseline with score None, and the report says why: none of
the model's tables read has a column for it ("not published"), or none was found.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path
from typing import Any

from .protocols import mmbench_split

# Substrings of a VQA file name -> baseline key (the split in the label says what the number is for).
_VQA_NAMES = (
    ("textvqa", "textvqa"),
    ("docvqa", "docvqa"),
    ("infovqa", "infovqa"),
    ("chartqa", "chartqa"),
    ("ai2d", "ai2d"),
)
GUESS_TOLERANCE = 0.25
DEFAULT_FAMILY = "internvl2.5"
NOT_FOUND = "no published number found"
NOT_PUBLISHED = "not published: no column for it in "  # + the tables read for that model


@lru_cache(maxsize=1)
def table() -> dict[str, Any]:
    """The parsed ``baselines.json``."""
    return json.loads((Path(__file__).with_name("baselines.json")).read_text())


def models() -> list[str]:
    return list(table()["models"])


def model_name(name: str) -> str:
    """ "8B" -> "internvl2.5-8b"; "InternVL3.5-2B" -> "internvl3.5-2b"; unknown names fail."""
    key = name.strip().lower().replace("_", ".")
    if not key.startswith("internvl"):
        key = f"{DEFAULT_FAMILY}-{key.removesuffix('b')}b"
    if key not in table()["models"]:
        raise ValueError(f"unknown baseline model {name!r}; known: {', '.join(models())}")
    return key


def guess_model(num_parameters: int) -> str | None:
    """The published model nearest to ``num_parameters`` (within 25%), else None."""
    best, best_gap = None, math.inf
    for name, entry in table()["models"].items():
        if entry.get("parameters"):
            gap = abs(math.log(num_parameters / entry["parameters"]))
            if gap < best_gap:
                best, best_gap = name, gap
    return best if best_gap <= math.log(1 + GUESS_TOLERANCE) else None


def baseline_key(benchmark: str, data: str | Path | None = None, dataset: str | None = None) -> str | None:
    """Which published number a run compares with: MMBench's split and version read from the file
    name, or for VQA the dataset named by ``dataset`` or guessed from the file name."""
    name = Path(str(data)).name if data is not None else ""
    if benchmark == "mmbench":
        split = mmbench_split(name)  # "MMBench-dev-en v1.1", "CCBench" or "MMBench (<name>)"
        if split == "CCBench":
            return "ccbench"
        if "?" in split or "(" in split:
            return None
        head, version = split.split()
        return head.lower().replace("-", "_") + "_" + version.replace(".", "")
    if benchmark != "vqa":
        return benchmark
    name = (dataset or name).lower()
    for needle, key in _VQA_NAMES:
        if needle in name:
            return key
    return dataset if dataset in table()["benchmarks"] else None


def lookup(model: str | None, key: str | None) -> dict[str, Any] | None:
    """``{"model", "benchmark", "score", "source"}`` for a model and benchmark key (score None
    and source "no published number found" when there is none); None without a model or key."""
    if model is None:
        return None
    name = model_name(model)
    t = table()
    if key is None or key not in t["benchmarks"]:
        return None
    entry = t["models"][name]
    found = entry["scores"].get(key)
    if found is not None:
        source = t["sources"][found["source"]]
    elif key in entry.get("not_published", ()):
        source = NOT_PUBLISHED + ", ".join(entry.get("tables_read", ()))
    else:
        source = NOT_FOUND
    return {
        "model": _display(name),
        "benchmark": t["benchmarks"][key],
        "score": None if found is None else found["score"],
        "source": source,
    }


def _display(name: str) -> str:
    """ "internvl2.5-8b" -> "InternVL2.5-8B"."""
    family, size = name.rsplit("-", 1)
    return "InternVL" + family.removeprefix("internvl") + "-" + size.upper()
