"""Checksums of checkpoints: written once a checkpoint is complete, verified before it is resumed.

A checkpoint (a `.ckpt` file, or a directory for DeepSpeed / FSDP2) gets a sidecar
`<name>.sha256.json` listing every file it holds with its size and SHA-256. The sidecar is written
after every rank has finished writing and before the checkpoint is renamed into place, so a
published checkpoint always has one. `verify` tells whether a checkpoint is still what was
written (sizes first, then contents); `newest_intact` picks what `ckpt_path="last"` resumes from.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch.distributed as dist

SUFFIX = ".sha256.json"
FORMAT = "internvl-lightning checkpoint checksums v1"
VERIFY_LEVELS = ("sha256", "size", "none")
_CHUNK = 16 << 20


def sidecar(checkpoint: str | Path) -> Path:
    """The checksum file of a checkpoint (of a link's target for `last.ckpt` links)."""
    path = Path(checkpoint)
    if path.is_symlink():
        path = path.parent / os.readlink(path)
    return path.with_name(path.name + SUFFIX)


def members(checkpoint: Path) -> list[tuple[str, Path]]:
    """(name relative to the checkpoint, path) of every file; a file checkpoint is its own member ""."""
    if checkpoint.is_file():
        return [("", checkpoint)]
    return sorted((p.relative_to(checkpoint).as_posix(), p) for p in checkpoint.rglob("*") if p.is_file())


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _digests(files: list[tuple[str, Path]]) -> dict[str, dict]:
    with ThreadPoolExecutor(max_workers=min(4, max(1, len(files)))) as pool:  # hashlib frees the GIL
        sums = list(pool.map(lambda f: sha256(f[1]), files))
    return {name: {"size": path.stat().st_size, "sha256": s} for (name, path), s in zip(files, sums)}


def record(staged: Path, final: Path) -> None:
    """Hash the complete checkpoint `staged` and write the sidecar of `final` (collective: every rank
    hashes its share of the files; global rank 0 writes)."""
    files = members(staged) if staged.exists() else []
    rank, world = 0, 1
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    mine = _digests(files[rank::world])
    if world > 1:
        shares: list = [None] * world
        dist.all_gather_object(shares, mine)
        mine = {k: v for share in shares for k, v in share.items()}
    if rank == 0:
        out = sidecar(final)
        tmp = out.with_name(".tmp-" + out.name)
        tmp.write_text(json.dumps({"format": FORMAT, "files": dict(sorted(mine.items()))}, indent=1) + "\n")
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, out)


@dataclass
class Verdict:
    """The outcome of `verify`: `problem` is None when the checkpoint is intact."""

    path: Path
    problem: str | None = None  # what it is: "truncated (...)", "corrupted (...)", "a dangling link to ..."
    unverified: bool = False  # no checksum file (written by an older version): accepted, not checked

    @property
    def intact(self) -> bool:
        return self.problem is None


def verify(checkpoint: str | Path, level: str = "sha256") -> Verdict:
    """Check a checkpoint against its sidecar: present, every file there with its recorded size
    ("size"), and the same contents ("sha256")."""
    path = Path(checkpoint)
    if level not in VERIFY_LEVELS:
        raise ValueError(f"checkpoint verification must be one of {VERIFY_LEVELS}, got {level!r}")
    if path.is_symlink() and not path.exists():
        return Verdict(path, f"a dangling link to {os.readlink(path)}")
    if not path.exists():
        return Verdict(path, "missing")
    if level == "none":
        return Verdict(path)
    sums = sidecar(path)
    if not sums.is_file():
        return Verdict(path, unverified=True)
    try:
        recorded = json.loads(sums.read_text())["files"]
    except (ValueError, KeyError, TypeError) as err:
        return Verdict(path, f"unverifiable (its checksum file {sums.name} is unreadable: {err})")
    found = dict(members(path.resolve()))
    for name, want in recorded.items():
        file = found.get(name)
        if file is None:
            return Verdict(path, f"incomplete ({name} is missing)")
        size = file.stat().st_size
        if size != want["size"]:
            return Verdict(path, f"truncated ({name + ': ' if name else ''}{size} of {want['size']} bytes)")
    if level == "sha256":
        for name, want in recorded.items():
            if sha256(found[name]) != want["sha256"]:
                what = f"{name} does not match its SHA-256" if name else "its SHA-256 does not match"
                return Verdict(path, f"corrupted ({what})")
    return Verdict(path)


@dataclass
class LastChoice:
    """What `ckpt_path="last"` resolves to, and why."""

    chosen: Verdict | None
    rejected: list[Verdict] = field(default_factory=list)
    candidates: list[Path] = field(default_factory=list)


def checkpoints_in(dirpath: Path, last_prefix: str = "last", extension: str = ".ckpt") -> list[Path]:
    """Checkpoints in a directory, `last*` entries first, then the others newest first."""
    if not dirpath.is_dir():
        return []
    entries = [p for p in dirpath.iterdir() if p.name.endswith(extension) and not p.name.startswith(".")]

    def mtime(p: Path) -> float:
        return p.stat().st_mtime if p.exists() else p.lstat().st_mtime

    last = sorted((p for p in entries if p.name.startswith(last_prefix)), key=mtime, reverse=True)
    rest = sorted((p for p in entries if not p.name.startswith(last_prefix)), key=mtime, reverse=True)
    return last + rest


def newest_intact(dirpath: str | Path, level: str = "sha256", last_prefix: str = "last") -> LastChoice:
    """The newest intact checkpoint in `dirpath`, `last*` first; a link's target is checked once."""
    candidates = checkpoints_in(Path(dirpath), last_prefix)
    choice, seen = LastChoice(None, candidates=candidates), set()
    for path in candidates:
        key = path.resolve() if path.exists() else path
        if key in seen:
            continue
        seen.add(key)
        verdict = verify(path, level)
        if verdict.intact:
            choice.chosen = verdict
            return choice
        choice.rejected.append(verdict)
    return choice
