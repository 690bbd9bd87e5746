"""Writing side of the shard tool: deterministic, size-capped tar shards and the rejection report.

:class:`TarShards` writes members into tar files whose bytes depend only on their content (USTAR,
mtime 0, uid/gid 0, empty user/group names, mode 0644) and records where each sample starts, each
sample's CRC32 (:func:`.verify.sample_crc`) and, per shard, its size and SHA-256 (checked by the reader).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .verify import sample_crc

SAMPLES_SUFFIX = ".samples.json"


@dataclass
class _Shard:
    path: str  # relative to the output root
    keys: list[str] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    num_tokens: list[int] = field(default_factory=list)
    num_tiles: list[int] = field(default_factory=list)
    crc32: list[int] = field(default_factory=list)
    least: list[tuple[int, int]] = field(default_factory=list)  # fewest (tokens, tiles) per sample
    size: int = 0
    sha256: str = ""

    @property
    def samples_path(self) -> str:
        """The shard's sidecar with per-sample keys, offsets and counts (beside the tar)."""
        return self.path.removesuffix(".tar") + SAMPLES_SUFFIX

    def samples(self) -> dict:
        return {
            "keys": self.keys,
            "offsets": self.offsets,
            "num_tokens": self.num_tokens,
            "num_tiles": self.num_tiles,
            "crc32": self.crc32,
        }

    def entry(self) -> dict:
        """The shard in index.json: totals only, so the index stays small at any dataset size."""
        return {
            "path": self.path,
            "num_samples": len(self.keys),
            "num_tokens": sum(self.num_tokens),
            "num_tiles": sum(self.num_tiles),
            "min_tokens": min(t for t, _ in self.least),
            "min_tiles": min(n for _, n in self.least),
            "size": self.size,
            "sha256": self.sha256,
            "samples": self.samples_path,
        }


def _member_bytes(size: int) -> int:
    return tarfile.BLOCKSIZE + -(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE


class TarShards:
    """Write samples into ``out/<subdir>/shard-000000.tar``, ... of at most ``max_bytes`` each
    (a single larger sample gets a shard of its own). Each file is written as ``.tmp`` and renamed
    when complete. Header fields are fixed (mtime 0, uid/gid 0, no user names, mode 0644)."""

    def __init__(self, out: Path, subdir: str, max_bytes: int):
        self.out, self.subdir, self.max_bytes = Path(out), subdir, max_bytes
        (self.out / subdir).mkdir(parents=True, exist_ok=True)
        for pattern in ("shard-*.tar*", "shard-*" + SAMPLES_SUFFIX):  # stale output of an earlier run
            for old in (self.out / subdir).glob(pattern):
                old.unlink()
        self.shards: list[_Shard] = []
        self._tar: tarfile.TarFile | None = None
        self._size = 0

    def _open(self) -> None:
        self._close_current()
        shard = _Shard(f"{self.subdir}/shard-{len(self.shards):06d}.tar")
        self.shards.append(shard)
        self._tar = tarfile.open(self.out / (shard.path + ".tmp"), "w", format=tarfile.USTAR_FORMAT)
        self._size = 2 * tarfile.BLOCKSIZE  # end-of-archive blocks

    def add(
        self,
        key: str,
        members: list[tuple[str, bytes]],
        num_tokens: int,
        num_tiles: int,
        least: tuple[int, int] | None = None,
    ) -> None:
        """Append one sample; ``least``: its fewest (tokens, tiles) when smaller than the counts
        given (a video counted at its most frames)."""
        need = sum(_member_bytes(len(data)) for _, data in members)
        if self._tar is None or (self.shards[-1].keys and self._size + need > self.max_bytes):
            self._open()
        shard, tar = self.shards[-1], self._tar
        shard.keys.append(key)
        shard.offsets.append(tar.offset)
        shard.num_tokens.append(num_tokens)
        shard.num_tiles.append(num_tiles)
        shard.crc32.append(sample_crc(members))
        shard.least.append(least or (num_tokens, num_tiles))
        for suffix, data in members:
            info = tarfile.TarInfo(f"{key}.{suffix}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
        self._size += need

    def _close_current(self) -> None:
        if self._tar is not None:
            self._tar.close()
            shard = self.shards[-1]
            write_json(self.out / shard.samples_path, shard.samples())
            path = self.out / shard.path
            tmp = Path(str(path) + ".tmp")
            with open(tmp, "rb") as f:
                shard.sha256 = hashlib.file_digest(f, "sha256").hexdigest()
            shard.size = tmp.stat().st_size
            os.replace(tmp, path)
            self._tar = None

    def close(self) -> list[dict]:
        """Finish the last shard; the index entries of all shards."""
        self._close_current()
        return [s.entry() for s in self.shards]

    def abort(self) -> None:
        """Drop the shard being written (its ``.tmp`` file)."""
        if self._tar is not None:
            self._tar.close()
            Path(str(self.out / self.shards[-1].path) + ".tmp").unlink(missing_ok=True)
            self._tar = None


@dataclass
class Rejection:
    """One sample left out, and why."""

    dataset: str
    file: str
    line: int
    id: str | None
    reason: str  # a code from shard_check.REASONS
    message: str

    def __str__(self) -> str:
        sid = "" if self.id is None else f" (id {self.id})"
        return f"{self.file}:{self.line}{sid}: {self.reason}: {self.message}"


@dataclass
class DatasetReport:
    annotation: str
    seen: int = 0
    kept: int = 0
    rejected: Counter = field(default_factory=Counter)


@dataclass
class ShardReport:
    """What :func:`shard_dataset` did; also written as ``report.json`` / ``report.txt``."""

    out_dir: Path
    datasets: dict[str, DatasetReport] = field(default_factory=dict)
    rejected: list[Rejection] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "datasets": {
                name: {
                    "annotation": d.annotation,
                    "seen": d.seen,
                    "kept": d.kept,
                    "rejected": dict(sorted(d.rejected.items())),
                }
                for name, d in self.datasets.items()
            },
            "rejected": [asdict(r) for r in self.rejected],
        }

    def to_text(self, details: bool = True) -> str:
        """A table per dataset; with ``details`` also one line per rejected sample."""
        lines = [f"{'dataset':<28} {'seen':>9} {'kept':>9} {'rejected':>9}"]
        for name, d in self.datasets.items():
            lines.append(f"{name:<28} {d.seen:>9} {d.kept:>9} {sum(d.rejected.values()):>9}")
            lines += [f"    {code}: {n}" for code, n in sorted(d.rejected.items())]
        if self.rejected and details:
            lines += ["", "rejected samples:"] + [f"  [{r.dataset}] {r}" for r in self.rejected]
        return "\n".join(lines) + "\n"

    def __str__(self) -> str:
        return self.to_text(details=False) + (
            f"wrote {self.out_dir}/index.json; rejected samples are listed in {self.out_dir}/report.txt"
        )


class ShardFailed(RuntimeError):
    """``strict`` mode met a bad sample (``rejection`` says which and why)."""

    exit_code = 1  # the command's exit status: the data, not the call, is wrong

    def __init__(self, rejection: Rejection):
        super().__init__(f"bad sample (strict mode): {rejection}")
        self.rejection = rejection


def write_json(path: Path, obj: dict, indent: int | None = None) -> None:
    text = json.dumps(obj, ensure_ascii=False, indent=indent, separators=None if indent else (",", ":"))
    path.write_text(text + "\n", encoding="utf-8")
