"""The ``shard`` tool: validate an InternVL meta file + JSONL annotations, write WebDataset shards.

Output (``OUT``):

- ``<dataset>/shard-000000.tar`` ...: per kept sample, in line order, the members ``<key>.json``
  (the original record plus ``_meta``: ``num_tokens``, ``num_tiles``, ``line``, ``media``) then the
  original media bytes ``<key>.img0.<ext>``, ``<key>.img1.<ext>``, ... or ``<key>.video.<ext>``;
  ``key`` is the 1-based JSONL line number, zero-padded to 9 digits.
- ``<dataset>/shard-000000.samples.json`` ...: per shard, each sample's key, the byte offset of its
  first tar header, and its token / tile counts (``sources.read_shard_samples``);
- ``index.json``: settings, tokenizer name + vocabulary hash, and per dataset its meta options and
  per shard its path, sample / token / tile totals and its samples file. Only totals: the index
  every rank reads at start-up stays a few hundred bytes per shard, however many samples.
- ``report.json`` / ``report.txt``: per dataset lines seen, kept and rejected by reason, and every
  rejected sample (file:line, id, reason).

Re-runs give byte-identical files, whatever ``workers`` is: workers only check and count; the main
process writes in line order. ``repeat_time`` is recorded, not applied (the stream applies it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import asdict, replace
from pathlib import Path

from tqdm import tqdm

from .encode import EncodeConfig
from .meta import DatasetSpec, is_remote, load_meta
from .schema import MalformedSample, SampleError, iter_jsonl
from .shard_check import INVALID_JSON, SCHEMA, checker
from .shard_write import DatasetReport, Rejection, ShardFailed, ShardReport, TarShards, write_json

INDEX_VERSION = 2  # 2: per-sample lists moved to per-shard samples files
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


def tokenizer_info(tokenizer) -> dict:
    """Name (last path part) and a hash of the full vocabulary, added tokens included."""
    vocab = json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False)
    name = Path(str(getattr(tokenizer, "name_or_path", "") or "tokenizer")).name
    return {
        "name": name,
        "vocab_size": len(tokenizer),
        "sha256": hashlib.sha256(vocab.encode()).hexdigest()[:16],
    }


def load_tokenizer(path: str | os.PathLike, trust_remote_code: bool = False):
    """The LLM's tokenizer with InternVL's special tokens added (as training will see it)."""
    from ..model.tokenizer import load_with_vlm_tokens

    return load_with_vlm_tokens(path, trust_remote_code, check_chat=False)[0]


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
    meta_path: str | os.PathLike,
    tokenizer,
    out_dir: str | os.PathLike,
    cfg: EncodeConfig | None = None,
    shard_size: int | str = "1GB",
    workers: int = 1,
    strict: bool = False,
    progress: bool | None = None,
) -> ShardReport:
    """Validate every sample of every dataset in ``meta_path`` and write shards, index and report.

    ``tokenizer``: a tokenizer object or the LLM directory (VLM tokens are added either way).
    ``strict``: raise :class:`ShardFailed` at the first bad sample (no index is written).
    ``progress``: tqdm bars (None: only on a terminal).
    """
    cfg = cfg or EncodeConfig()
    max_bytes = parse_size(shard_size)
    specs = _load_specs(meta_path)
    dirs = [_dataset_dir(s.name) for s in specs]
    if len(set(dirs)) != len(dirs):
        raise ValueError(f"dataset names collide once made file-system safe: {dirs}")
    if isinstance(tokenizer, str | os.PathLike):
        tokenizer = load_tokenizer(tokenizer)
    else:
        from ..model.tokenizer import add_vlm_tokens

        add_vlm_tokens(tokenizer)
    out = Path(out_dir)
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
                    writer.add(key, [("json", doc), *result.members], result.num_tokens, result.num_tiles)
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


def add_shard_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options of ``python -m internvl_lightning shard``."""
    d = EncodeConfig()
    parser.add_argument(
        "--meta", required=True, help="InternVL meta file (JSON: name -> root, annotation, ...)"
    )
    parser.add_argument("--tokenizer", required=True, help="LLM directory holding its tokenizer")
    parser.add_argument("--template", default=d.template, help="chat template (default %(default)s)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--shard-size", default="1GB", help="target tar size (default %(default)s)")
    parser.add_argument("--workers", type=int, default=1, help="processes checking samples (default 1)")
    parser.add_argument("--strict", action="store_true", help="stop with an error at the first bad sample")
    parser.add_argument("--image-size", type=int, default=d.image_size)
    parser.add_argument("--tokens-per-tile", type=int, default=d.tokens_per_tile)
    parser.add_argument("--min-dynamic-patch", type=int, default=d.min_dynamic_patch)
    parser.add_argument(
        "--max-dynamic-patch",
        type=int,
        default=d.max_dynamic_patch,
        help="tile budget per sample unless the meta file overrides it",
    )
    parser.add_argument("--no-thumbnail", action="store_true", help="tile without the thumbnail")
    parser.add_argument(
        "--max-num-frames",
        type=int,
        default=d.max_num_frames,
        help="videos are counted at this many frames (an upper bound)",
    )
    parser.add_argument("--max-length", type=int, default=d.max_length, help="longer samples are rejected")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow the tokenizer's own code")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def run_shard(args: argparse.Namespace) -> int:
    """Run the tool; 0 on success, 1 when ``--strict`` met a bad sample, 2 on a usage error."""
    cfg = EncodeConfig(
        template=args.template,
        image_size=args.image_size,
        tokens_per_tile=args.tokens_per_tile,
        min_dynamic_patch=args.min_dynamic_patch,
        max_dynamic_patch=args.max_dynamic_patch,
        use_thumbnail=not args.no_thumbnail,
        max_num_frames=args.max_num_frames,
        max_length=args.max_length,
    )
    try:
        tokenizer = load_tokenizer(args.tokenizer, args.trust_remote_code)
        report = shard_dataset(
            args.meta,
            tokenizer,
            args.out,
            cfg,
            args.shard_size,
            args.workers,
            args.strict,
            progress=False if args.quiet else None,
        )
    except ShardFailed as e:
        print(f"error: bad sample (--strict): {e}", file=sys.stderr)
        return 1
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report.to_text(details=False), end="")
    print(f"wrote {args.out}/index.json; rejected samples are listed in {args.out}/report.txt")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_shard(add_shard_args(argparse.ArgumentParser(prog="shard")).parse_args()))
