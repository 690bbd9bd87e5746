"""The ``shard`` tool: validate an InternVL meta file + JSONL annotations, write WebDataset shards.

Output (``OUT``):

- ``<dataset>/shard-000000.tar`` ...: per kept sample, in line order, the members ``<key>.json``
  (the original record plus ``_meta``: ``num_tokens``, ``num_tiles``, ``line``, ``media``) then the
  original media bytes ``<key>.img0.<ext>``, ``<key>.img1.<ext>``, ... or ``<key>.video.<ext>``;
  ``key`` is the 1-based JSONL line number, zero-padded to 9 digits.
- ``<dataset>/shard-000000.samples.json`` ...: per shard, each sample's key, the byte offset of its
  first tar header, its token / tile counts and the CRC32 of its members (``sources.read_shard_samples``);
- ``index.json``: settings, tokenizer name + vocabulary hash, and per dataset its meta options and
  per shard its path, size, SHA-256, sample / token / tile totals (and the fewest tokens / tiles
  a sample can have, videos at ``min_num_frames``, to check packing budgets before streaming)
  and its samples file. Only totals: the index
  every rank reads at start-up stays a few hundred bytes per shard, however many samples.
- ``report.json`` / ``report.txt``: per dataset lines seen, kept and rejected by reason, and every
  rejected sample (file:line, id, reason).

Re-runs give byte-identical files, whatever ``workers`` is: workers only check and count; the main
process writes in line order. ``repeat_time`` is recorded, not applied (the stream applies it).
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import asdict, replace
from pathlib import Path

from tqdm import tqdm

from ..tokenizer import TokenizerSource, load_tokenizer, tokenizer_info
from .encode import EncodeConfig
from .meta import DatasetSpec, is_remote, load_meta
from .schema import MalformedSample, SampleError, iter_jsonl
from .shard_check import INVALID_JSON, SCHEMA, checker
from .shard_write import DatasetReport, Rejection, ShardFailed, ShardReport, TarShards, write_json

INDEX_VERSION = 3  # 2: per-sample lists moved to per-shard samples files; 3: sizes and checksums
KEY_DIGITS = 9


def parse_size(text: str | int) -> int:
    """``"1GB"`` -> 10**9, ``"512MiB"`` -> 512 * 2**20, ``"4096"`` -> 4096 bytes."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(I?B?)\s*", text.upper())
    if not m:
        raise ValueError(f"cannot read size {text!r} (examples: 1GB, 500MB, 256MiB, 1000000)")
    num, unit, suffix = m.groups()
    base = 1024 if suffix == "IB" else 1000
    size = int(float(num) * base ** " KMGT".index(unit or " "))
    if size <= 0:
        raise ValueError(f"shard size must be positive, got {text!r}")
    return size


def _load_specs(meta_path: str | os.PathLike) -> list[DatasetSpec]:
    """The meta file's datasets; missing or remote files are named in the error."""
    if not Path(meta_path).is_file():
        raise FileNotFoundError(f"meta file not found: {meta_path}")
    specs = list(load_meta(meta_path).values())
    for s in specs:
        if is_remote(s.annotation) or is_remote(s.root):
            raise ValueError(
                f"dataset {s.name!r}: the shard tool reads local files only ({s.root}, {s.annotation})"
            )
        if not Path(s.annotation).is_file():
            raise FileNotFoundError(f"dataset {s.name!r}: annotation file not found: {s.annotation}")
    return specs


def _dataset_dir(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name).strip(".") or "dataset"


def _tasks(spec: DatasetSpec) -> Iterator[tuple]:
    """``(dataset, line, record | (code, reason))`` per non-blank line, streamed."""
    for line, item in iter_jsonl(spec.annotation):
        if isinstance(item, SampleError):  # not picklable as is: send the reason instead
            code = INVALID_JSON if isinstance(item, MalformedSample) else SCHEMA
            item = (code, item.reason)
        yield spec.name, line, item


def _settings(specs: Iterable[DatasetSpec], cfg: EncodeConfig) -> dict[str, tuple[str, EncodeConfig]]:
    out = {}
    for s in specs:
        mdp = s.max_dynamic_patch if s.max_dynamic_patch is not None else cfg.max_dynamic_patch
        out[s.name] = (s.root, replace(cfg, max_dynamic_patch=mdp, data_augment=s.data_augment))
    return out


def shard_dataset(
    meta: str | os.PathLike,
    tokenizer: TokenizerSource,
    out: str | os.PathLike,
    encode: EncodeConfig = EncodeConfig(),
    shard_size: int | str = "1GB",
    workers: int = 1,
    strict: bool = False,
    progress: bool | None = None,
    trust_remote_code: bool = False,
) -> ShardReport:
    """Validate an InternVL meta file + JSONL and write WebDataset shards, an index and a report.

    Args:
        meta: InternVL meta file (JSON: dataset name -> root, annotation, repeat_time, ...).
        tokenizer: the LLM directory holding its tokenizer (or a tokenizer object); VLM tokens are added.
        out: output directory (shards per dataset, index.json, report.json, report.txt).
        encode: how samples become tiles and tokens (a meta file's dataset may set its own tile budget).
        shard_size: target tar size (1GB, 500MB, 256MiB, or bytes).
        workers: processes checking samples (the output is the same for any number).
        strict: stop at the first bad sample with an error naming it (no index is written).
        progress: progress bars (None: only on a terminal).
        trust_remote_code: let the tokenizer run its own code (tokenization_*.py).
    """
    cfg = encode
    max_bytes = parse_size(shard_size)
    specs = _load_specs(meta)
    dirs = [_dataset_dir(s.name) for s in specs]
    if len(set(dirs)) != len(dirs):
        raise ValueError(f"dataset names collide once made file-system safe: {dirs}")
    tokenizer = load_tokenizer(tokenizer, trust_remote_code)  # VLM tokens added, as training sees it
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "index.json").unlink(missing_ok=True)  # a failed run must not look finished
    settings = _settings(specs, cfg)
    show = sys.stderr.isatty() if progress is None else progress
    report = ShardReport(out)
    index = {
        "version": INDEX_VERSION,
        "template": cfg.template,
        "tokenizer": tokenizer_info(tokenizer),
        "image_size": cfg.image_size,
        "tokens_per_tile": cfg.tokens_per_tile,
        "max_length": cfg.max_length,
        "encode": asdict(cfg),
        "datasets": {},
    }
    with checker(tokenizer, settings, workers) as run:
        for spec, subdir in zip(specs, dirs):
            dreport = report.datasets[spec.name] = DatasetReport(spec.annotation)
            writer = TarShards(out, subdir, max_bytes)
            bar = tqdm(desc=spec.name, unit="sample", total=spec.length, disable=not show)
            try:
                for line, result, record, sid in run(_tasks(spec)):
                    dreport.seen += 1
                    bar.update()
                    if isinstance(result, str):
                        rej = Rejection(spec.name, spec.annotation, line, sid, result, record)
                        if strict:
                            raise ShardFailed(rej)
                        report.rejected.append(rej)
                        dreport.rejected[result] += 1
                        continue
                    key = f"{line:0{KEY_DIGITS}d}"
                    media = [f"{key}.{suffix}" for suffix, _ in result.members]
                    meta = dict(
                        num_tokens=result.num_tokens, num_tiles=result.num_tiles, line=line, media=media
                    )
                    doc = json.dumps({**record, "_meta": meta}, ensure_ascii=False).encode()
                    members = [("json", doc), *result.members]
                    writer.add(key, members, result.num_tokens, result.num_tiles, result.least)
                    dreport.kept += 1
            except BaseException:
                writer.abort()
                raise
            finally:
                bar.close()
            index["datasets"][spec.name] = {
                "dir": subdir, "repeat_time": spec.repeat_time, "data_augment": spec.data_augment,
                "max_dynamic_patch": spec.max_dynamic_patch, "num_samples": dreport.kept, "shards": writer.close(),
            }  # fmt: skip
    write_json(out / "report.json", report.to_json(), indent=1)
    (out / "report.txt").write_text(report.to_text(), encoding="utf-8")
    write_json(out / "index.json", index)
    return report
