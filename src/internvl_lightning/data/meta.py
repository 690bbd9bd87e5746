"""The meta file: which JSONL datasets to mix, where their media live, and how often to repeat them.

Format (InternVL's meta files, e.g. internvl_chat/shell/data/*.json)::

    {"ds_name": {"root": "images/", "annotation": "ds.jsonl", "data_augment": false,
                 "max_dynamic_patch": 12, "repeat_time": 1, "length": 1000}, ...}

Rules, with how they differ from the reference:

- Relative ``annotation`` and local ``root`` paths are resolved against the meta file's directory
  (the reference uses the working directory, so a meta file only worked from one place).
  ``s3://``-style values (anything with ``://``) are kept as written.
- Media paths: ``os.path.join(root, path)`` for local roots, plain ``root + path`` for ``://``
  roots (as the reference does: end such a root with ``/``).
- ``repeat_time`` r > 0: r < 1 keeps the first ``int(n * r)`` lines (no shuffle before the cut);
  r >= 1 must be a whole number and repeats the file r times (the finetune script asserts this;
  the pretrain script silently truncates 2.5 to 2, which we refuse).
- The same annotation file listed under two names (it would be mixed in twice) is logged as a
  warning naming both datasets.
- ``length`` is informational only; unknown keys are an error (they are usually typos, e.g.
  ``repeat_times``) unless ``strict=False``, which keeps them in ``DatasetSpec.extra``.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_KEYS = {"root", "annotation", "data_augment", "max_dynamic_patch", "repeat_time", "length"}


class MetaError(ValueError):
    """A meta file that cannot be used; the message names the file and the dataset."""


def is_remote(path: str) -> bool:
    """True for object-store style paths (``s3://bucket/...``, ``langchao:s3://...``)."""
    return "://" in path


def join_media(root: str, path: str) -> str:
    """Where a sample's media file lives: ``root + path`` for remote roots, else ``os.path.join``."""
    return root + path if is_remote(root) else os.path.join(root, path)


@dataclass
class DatasetSpec:
    """One dataset of the mixture (paths already resolved, see the module doc)."""

    name: str
    root: str
    annotation: str
    data_augment: bool = False
    max_dynamic_patch: int | None = None  # None: the run's global max tiles
    repeat_time: float = 1.0
    length: int | None = None  # informational (the reference never reads it)
    extra: dict[str, Any] = field(default_factory=dict)

    def media_path(self, path: str) -> str:
        """The full path of a media file named in this dataset's JSONL."""
        return join_media(self.root, path)

    def repeat_plan(self, n_lines: int) -> tuple[int, int]:
        """(lines to keep from the start of the file, times to repeat them) for a file of ``n_lines``."""
        if self.repeat_time < 1:
            return int(n_lines * self.repeat_time), 1
        return n_lines, int(self.repeat_time)

    def effective_length(self, n_lines: int) -> int:
        """Samples per epoch after ``repeat_time``."""
        keep, times = self.repeat_plan(n_lines)
        return keep * times


def _resolve(path: str, base: Path) -> str:
    if is_remote(path) or os.path.isabs(path):
        return path
    resolved = str(base / path) if path else str(base)
    # keep a trailing slash: remote-style concatenation and frame folders rely on it
    return resolved + os.sep if path.endswith(("/", os.sep)) and not resolved.endswith(os.sep) else resolved


def repeat_time_problem(repeat: Any) -> str | None:
    """What is wrong with a ``repeat_time`` value (meta file or shard index), or None."""
    if (
        isinstance(repeat, bool)
        or not isinstance(repeat, int | float)
        or not math.isfinite(repeat)
        or repeat <= 0
    ):
        return f"must be a number > 0, got {repeat!r}"
    if repeat > 1 and repeat != int(repeat):
        return (
            f"{repeat} is not a whole number; values above 1 repeat the whole file "
            "a whole number of times (use a value below 1 to keep a fraction of the lines)"
        )
    return None


def parse_dataset(name: str, entry: Any, base: Path, where: str = "meta", strict: bool = True) -> DatasetSpec:
    """Validate one meta entry; ``base`` is the directory relative paths are resolved against."""

    def bad(msg: str) -> MetaError:
        return MetaError(f"{where}: dataset {name!r}: {msg}")

    if not isinstance(entry, dict):
        raise bad(f"entry must be an object, got {type(entry).__name__}")
    unknown = sorted(set(entry) - _KEYS)
    if unknown and strict:
        raise bad(f"unknown key(s) {unknown}; allowed: {sorted(_KEYS)}")
    for key in ("root", "annotation"):
        if not isinstance(entry.get(key), str):
            raise bad(f"'{key}' must be a string, got {entry.get(key)!r}")
    annotation = entry["annotation"]
    if not annotation.endswith(".jsonl"):
        raise bad(f"'annotation' must be a .jsonl file, got {annotation!r}")
    augment = entry.get("data_augment", False)
    if not isinstance(augment, bool):
        raise bad(f"'data_augment' must be true or false, got {augment!r}")
    max_patch = entry.get("max_dynamic_patch")
    if max_patch is not None and (
        isinstance(max_patch, bool) or not isinstance(max_patch, int) or max_patch < 1
    ):
        raise bad(f"'max_dynamic_patch' must be a positive integer, got {max_patch!r}")
    repeat = entry.get("repeat_time", 1)
    problem = repeat_time_problem(repeat)
    if problem:
        raise bad(f"'repeat_time' {problem}")
    length = entry.get("length")
    if length is not None and (isinstance(length, bool) or not isinstance(length, int) or length < 0):
        raise bad(f"'length' must be a non-negative integer, got {length!r}")
    return DatasetSpec(
        name=name,
        root=_resolve(entry["root"], base),
        annotation=_resolve(annotation, base),
        data_augment=augment,
        max_dynamic_patch=max_patch,
        repeat_time=float(repeat),
        length=length,
        extra={k: entry[k] for k in unknown},
    )


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.loads keeps the last of two equal keys silently; two datasets with one name is a bug.
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise MetaError(f"duplicate key {key!r}")
        out[key] = value
    return out


def load_meta(path: str | Path, strict: bool = True) -> dict[str, DatasetSpec]:
    """Read and validate a meta file; datasets keep the file's order."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as e:
        raise MetaError(f"{path}: malformed JSON: {e}") from e
    except MetaError as e:
        raise MetaError(f"{path}: {e}") from e
    if not isinstance(data, dict) or not data:
        raise MetaError(f"{path}: expected a non-empty object {{dataset_name: {{...}}}}")
    base = path.resolve().parent
    specs = {name: parse_dataset(name, entry, base, str(path), strict) for name, entry in data.items()}
    _warn_shared_annotations(specs, str(path))
    return specs


def _warn_shared_annotations(specs: dict[str, DatasetSpec], where: str) -> None:
    """One annotation file under two dataset names is mixed in twice: say so."""
    first: dict[str, str] = {}
    for name, s in specs.items():
        key = s.annotation if is_remote(s.annotation) else os.path.realpath(s.annotation)
        if key in first:
            log.warning(
                "%s: datasets %r and %r have the same 'annotation' %s: its samples are mixed in twice",
                where,
                first[key],
                name,
                s.annotation,
            )
        else:
            first[key] = name


def mixture_weights(lengths: dict[str, int], sqrt: bool = False) -> dict[str, float]:
    """Sampling probability per dataset, proportional to its length after repeat (or its square root).

    ``sqrt=True`` is the reference's ``--use_data_resampling``: it favours small datasets.
    """
    if not lengths:
        raise ValueError("mixture_weights needs at least one dataset")
    for name, n in lengths.items():
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"dataset {name!r}: length must be a non-negative integer, got {n!r}")
    raw = {name: math.sqrt(n) if sqrt else float(n) for name, n in lengths.items()}
    total = sum(raw.values())
    if total == 0:
        raise ValueError(f"all datasets are empty: {sorted(lengths)}")
    return {name: w / total for name, w in raw.items()}
