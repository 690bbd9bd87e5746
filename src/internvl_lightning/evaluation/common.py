"""What every benchmark shares: the sample record, file readers, column checks, summaries."""

from __future__ import annotations

import base64
import binascii
import csv
import glob
import io
import json
import math
import sys
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from .generate import Request


@dataclass
class Sample:
    """One question to ask. ``group`` ties together the copies of one question that are scored
    jointly (MMBench circular rotations); ``categories`` maps a field (e.g. "category") to a value."""

    id: str
    request: Request
    answer: Any
    group: str = ""
    categories: dict[str, str] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.group = self.group or self.id


@dataclass
class Summary:
    """Benchmark-level numbers (percentages): the headline score, per-category scores and counts."""

    score: float
    num_scored: int
    per_category: dict[str, float] = field(default_factory=dict)
    category_counts: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)  # e.g. questions given no decision


def blank(value: Any) -> bool:
    """True for what pandas would read as a missing cell: None, NaN, "" or the text "nan"."""
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    return isinstance(value, str) and value.strip().lower() in ("", "nan")


def expand_paths(data: str | Path) -> list[Path]:
    """A file, a directory (its supported files, recursively) or a glob pattern, as sorted paths."""
    path = Path(data)
    if path.is_file():
        return [path]
    if path.is_dir():
        found = [p for p in sorted(path.rglob("*")) if p.suffix in (".tsv", ".json", ".jsonl", ".parquet")]
    else:
        found = [Path(p) for p in sorted(glob.glob(str(data), recursive=True))]
    if not found:
        raise FileNotFoundError(f"no benchmark file at {data}")
    return found


def read_records(path: Path) -> list[dict[str, Any]]:
    """Rows of a .tsv, .json (a list, or an object of records keyed by id), .jsonl or .parquet file."""
    suffix = path.suffix.lower()
    if suffix == ".tsv":
        csv.field_size_limit(sys.maxsize)  # base64 images are far longer than csv's default limit
        with open(path, newline="", encoding="utf-8") as f:
            return [dict(row) for row in csv.DictReader(f, delimiter="\t")]
    if suffix == ".jsonl":
        rows = []
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{path}: line {n} is not valid JSON: {e}") from e
        return rows
    if suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict):  # MathVista's testmini.json: {pid: record}
            return [dict(v, **({} if "pid" in v else {"pid": k})) for k, v in data.items()]
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list or object of records")
        return data
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as e:
            raise ImportError(f"{path}: reading parquet needs pyarrow (pip install pyarrow)") from e
        return pq.read_table(path).to_pylist()
    raise ValueError(f"{path}: unsupported file type {suffix!r} (use .tsv, .json, .jsonl or .parquet)")


def check_columns(
    rows: list[dict], required: Iterable[str], path: Path, any_of: tuple[str, ...] = ()
) -> None:
    """Fail naming the file and the column when a required column (or all of ``any_of``) is missing."""
    if not rows:
        raise ValueError(f"{path}: no rows")
    for n, row in enumerate(rows):
        missing = [c for c in required if c not in row]
        if any_of and not any(c in row for c in any_of):
            missing.append(" or ".join(any_of))
        if missing:
            where = "" if n == 0 else f" (row {n})"
            raise ValueError(
                f"{path}{where}: missing column(s) {', '.join(repr(c) for c in missing)}; found {sorted(row)}"
            )


def decode_base64(cell: str, where: str) -> bytes:
    """The bytes of a base64 image cell; line breaks are allowed, any other non-base64 text is an error."""
    text = "".join(str(cell).split())
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ValueError(f"{where}: image cell is not base64 ({text[:24]!r}...): {e}") from e
    if not raw:
        raise ValueError(f"{where}: empty image cell")
    return raw


def check_image_bytes(raw: bytes, where: str) -> bytes:
    """``raw`` if its header is one Pillow reads (the pixels are decoded later, on use)."""
    try:
        with Image.open(io.BytesIO(raw)):
            pass
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ValueError(
            f"{where}: not an image Pillow can read ({len(raw)} bytes, starting {raw[:12]!r})"
        ) from e
    return raw


def image_ref(value: Any, base: Path, where: str, root: str | Path | None = None) -> tuple[Any, str]:
    """An image cell as a lazy ``(bytes_or_path, where)`` reference.

    Accepts raw bytes (their header is checked now), a ``{"bytes": ..., "path": ...}`` dict
    (parquet image columns) or a path.
    A relative path is looked up under ``root`` (if given), beside the benchmark file, then in
    the working directory (InternVL's JSONL files hold paths like ``data/textvqa/...``).
    """
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if isinstance(value, bytes | bytearray | memoryview):
        return check_image_bytes(bytes(value), where), where
    if isinstance(value, str) and value:
        p = Path(value)
        if p.is_absolute():
            return str(p), where
        tries = ([Path(root) / p] if root is not None else []) + [base / p, p]
        return str(next((t for t in tries if t.exists()), tries[0])), where
    raise ValueError(f"{where}: no usable image (got {type(value).__name__})")


def limit_groups(samples: list[Sample], limit: int | None) -> list[Sample]:
    """The samples of the first ``limit`` groups (questions), all copies of each kept together."""
    if limit is None:
        return samples
    keep: dict[str, None] = {}
    for s in samples:
        if s.group not in keep and len(keep) >= limit:
            continue
        keep.setdefault(s.group, None)
    return [s for s in samples if s.group in keep]


def mean_summary(samples: list[Sample], scores: list[float], by_group: bool = False) -> Summary:
    """Mean score (x100) overall and per category value; ``by_group``: a group scores 1 only if
    every member scores 1 (circular evaluation), and counts once."""
    units: dict[str, tuple[float, dict[str, str]]] = {}
    for s, sc in zip(samples, scores):
        if by_group:
            prev = units.get(s.group, (1.0, s.categories))[0]
            units[s.group] = (min(prev, 1.0 if sc >= 1.0 else 0.0), s.categories)
        else:
            units[s.id] = (sc, s.categories)
    buckets: dict[str, list[float]] = defaultdict(list)
    for sc, cats in units.values():
        for key, value in cats.items():
            buckets[f"{key}: {value}"].append(sc)
    total = [sc for sc, _ in units.values()]
    return Summary(
        score=100.0 * sum(total) / len(total) if total else 0.0,
        num_scored=len(total),
        per_category={k: 100.0 * sum(v) / len(v) for k, v in sorted(buckets.items())},
        category_counts={k: len(v) for k, v in sorted(buckets.items())},
    )


class Benchmark:
    """A benchmark: how to read its files into samples and how to score an answer."""

    name = ""
    default_max_new_tokens = 32

    def __init__(self, image_root: str | Path | None = None) -> None:
        self.image_root = image_root  # where relative image paths live, when not beside the file

    def load(self, path: Path, circular: bool = True) -> list[Sample]:
        raise NotImplementedError

    def judge(self, sample: Sample, prediction: str) -> tuple[float, Any]:
        """(score in [0, 1], the answer extracted from ``prediction``)."""
        raise NotImplementedError

    def summarize(self, samples: list[Sample], judged: list[tuple[float, Any]], circular: bool) -> Summary:
        return mean_summary(samples, [sc for sc, _ in judged])

    def protocol(self, data: str | Path, circular: bool, samples: list[Sample]) -> dict[str, str]:
        """The protocol of each number: ``{"score": ..., <metric>: ...}`` (see ``protocols.py``)."""
        return {"score": f"{self.name}: the benchmark's own judge"}

    def write_submission(
        self, out_dir: Path, stem: str, samples: list[Sample], predictions: list[str]
    ) -> Path | None:
        """Write a leaderboard upload file where the benchmark has one; returns its path."""
        return None
