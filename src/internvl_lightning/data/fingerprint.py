"""What defines a data stream, hashed per part, so a resume can tell whether it may continue.

A saved data state names byte offsets, shuffle-buffer contents and rng states that only mean
something for the stream they were taken from. :func:`fingerprint` hashes each part that
defines it: ``shards`` (per dataset its shards' names, counts, sizes, checksums and meta
options), ``mixture`` (weights, replacement), ``packing`` (budgets, batch size), ``order``
(seed, shuffling) and ``encoding`` (template, tiling, frames, media limits).
:func:`changed_parts` compares two fingerprints part by part.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import asdict, is_dataclass
from typing import Any
from urllib.parse import urlparse

from .sources import DatasetSource, ShardInfo

Fingerprint = dict[str, dict[str, str]]  # part -> {"hash": ..., "about": short summary}


class DataChanged(ValueError):
    """A data state saved for a stream other than this one."""


def settings_of(encode: Any) -> dict[str, Any] | None:
    """The config of an encoder object with a dataclass ``cfg`` (``ShardEncoder``), else None."""
    cfg = getattr(encode, "cfg", None)
    return asdict(cfg) if is_dataclass(cfg) and not isinstance(cfg, type) else None


def _shard_identity(shard: ShardInfo) -> list:
    """A shard's identity; local shards without a recorded size are stat-ed (re-written files differ)."""
    out = shard.describe()
    if out[2] is None and urlparse(shard.url).scheme in ("", "file"):
        with contextlib.suppress(OSError):
            out[2] = os.stat(urlparse(shard.url).path if shard.url.startswith("file:") else shard.url).st_size
    return out


def fingerprint(
    sources: list[DatasetSource],
    weights: list[float],
    replacement: bool,
    packing: dict[str, Any],
    order: dict[str, Any],
    settings: dict[str, Any] | None,
) -> Fingerprint:
    """Per part, a hash of what defines the stream and a short summary for messages."""
    shards = {
        s.name: [s.repeat_time, s.data_augment, s.max_dynamic_patch, [_shard_identity(sh) for sh in s.shards]]
        for s in sources
    }
    about_shards = "; ".join(
        f"{s.name}: {len(s.shards)} shards, {'?' if s.num_samples is None else s.num_samples} samples"
        for s in sources
    )
    parts: dict[str, tuple[Any, str | None]] = {
        "shards": (shards, about_shards),
        "mixture": ({"weights": [round(w, 12) for w in weights], "replacement": replacement}, None),
        "packing": (packing, None),
        "order": (order, None),
        "encoding": (settings, None),
    }
    out = {}
    for name, (value, about) in parts.items():
        text = json.dumps(value, sort_keys=True, default=str)
        out[name] = {"hash": hashlib.sha256(text.encode()).hexdigest()[:16], "about": (about or text)[:300]}
    return out


def changed_parts(saved: Fingerprint, mine: Fingerprint) -> tuple[list[str], str]:
    """The parts whose hash differs, and ``part: saved summary -> this summary; ...``."""
    changed = [k for k in mine if saved.get(k, {}).get("hash") != mine[k]["hash"]]
    what = "; ".join(f"{k}: {saved.get(k, {}).get('about', '?')} -> {mine[k]['about']}" for k in changed)
    return changed, what
