"""Reading side of shard integrity: index paths confined to their directory, shard sizes, sample CRCs.

What the shard tool records (index version 3) and what the reader checks:

- per shard in ``index.json``: ``size`` (bytes) and ``sha256`` of the tar. The size is checked when
  a shard is opened (a stat, so also when resuming in the middle; over http the length the server
  announces, else the bytes read up to the end of the shard); the sha256 identifies the shard
  in the data fingerprint (a shard replaced by another of the same size still differs there) and
  is not recomputed on every read, which would cost a full extra pass over the data;
- per sample in the shard's ``.samples.json`` sidecar: key, byte offset and ``crc32`` of its
  members (:func:`sample_crc`). Every sample read is checked: its key must be the one recorded at
  its offset (else the shard and its index disagree: the rest of the shard is skipped) and its CRC
  must match (else that sample is skipped); at the end of the shard, the count read must equal the
  recorded count (a shard truncated at a sample boundary). Samples that a resumed stream reads
  back (those that were in its shuffle buffer or packer) get the same checks; one that fails is
  skipped and counted, the stream goes on.

Older indexes (versions 1-2) carry keys and offsets but no sizes or CRCs: they stay readable,
checked for keys, offsets and counts only, and the reader says so once.

Paths inside an index (shards, sidecars) are data, not commands: :func:`confined` accepts only
relative paths that stay inside the index's directory, so a file in a shard directory can never
name ``pipe:``, a URL, an absolute path or a path escaping through ``..`` or a symlink.
"""

from __future__ import annotations

import os
import posixpath
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# Characters a shard path from an index may not hold: URL schemes / drive letters, percent-escapes,
# query / fragment markers, backslashes and NUL (the shard tool writes [A-Za-z0-9._/-] only).
_FORBIDDEN = (":", "%", "?", "#", "\\", "\0")


class UnsafeIndexPath(ValueError):
    """A path inside an index that would leave its shard directory (or run / fetch something)."""


class ShardMismatch(ValueError):
    """A shard that disagrees with its index (size, key at an offset, sample count): skip its rest.

    A sample read back on resume from such a shard is skipped alone, counted as ``shard_changed``.
    """

    reason_code = "shard_changed"


class CorruptSample(ValueError):
    """A sample whose bytes differ from what the shard tool wrote (CRC mismatch): skip it."""

    reason_code = "checksum"


def confined(root: str, path: Any, where: str, local: bool) -> str:
    """``path`` (from the index file ``where``) if it is a relative path inside ``root``, else an error.

    ``local``: ``root`` is a directory on this machine; then symlinks are resolved as well.
    """

    def bad(why: str) -> UnsafeIndexPath:
        return UnsafeIndexPath(
            f"{where}: entry {path!r} {why}; paths in an index must be relative to its directory "
            "(pipe:/http sources can only be given on the command line or in Python)"
        )

    if not isinstance(path, str) or not path:
        raise bad("is not a non-empty string")
    if any(c in path for c in _FORBIDDEN):
        raise bad("holds a URL scheme or a forbidden character (: % ? # \\ NUL)")
    if path.startswith("/") or os.path.isabs(path):
        raise bad("is an absolute path")
    if ".." in path.split("/"):
        raise bad("climbs out with '..'")
    if local:
        base = os.path.realpath(root)
        real = os.path.realpath(os.path.join(root, path))
        if os.path.commonpath([base, real]) != base:
            raise bad(f"resolves outside {root} (through a symlink) to {real}")
    return posixpath.normpath(path)


def sample_crc(members: Iterable[tuple[str, bytes]]) -> int:
    """CRC32 of a sample's members in tar order: each suffix, a NUL, then its bytes."""
    crc = 0
    for suffix, data in members:
        crc = zlib.crc32(data, zlib.crc32(suffix.encode() + b"\0", crc))
    return crc


@dataclass
class ShardExpect:
    """What the index says a shard holds: its size and, per byte offset, the key and CRC found there."""

    where: str  # the shard, for messages
    num_samples: int
    size: int | None = None
    at: dict[int, tuple[str, int | None]] | None = None  # offset -> (key, crc32)

    @classmethod
    def from_lists(
        cls, where: str, num_samples: int, size: int | None, lists: Mapping[str, list]
    ) -> ShardExpect:
        """From the per-sample lists of a sidecar (``keys``, ``offsets``, optional ``crc32``)."""
        keys, offsets = list(lists["keys"]), list(lists["offsets"])
        crcs = list(lists.get("crc32") or [None] * len(keys))
        if not len(keys) == len(offsets) == len(crcs) == num_samples:
            raise ShardMismatch(
                f"{where}: index.json counts {num_samples} samples, its sample list has {len(keys)} keys, "
                f"{len(offsets)} offsets and {len(crcs)} checksums"
            )
        return cls(where, num_samples, size, {o: (k, c) for k, o, c in zip(keys, offsets, crcs)})

    def check_size(self, actual: int | None) -> None:
        """The shard file's size against the index (None: unknown, e.g. a remote stream)."""
        if self.size is not None and actual is not None and actual != self.size:
            raise ShardMismatch(
                f"{self.where}: shard is {actual} bytes, index.json says {self.size} "
                "(truncated, appended to or replaced since the shard tool wrote it)"
            )

    def check_start(self, offset: int) -> None:
        """A reader entering the shard at ``offset`` must land on a recorded sample start."""
        if offset and self.at is not None and offset not in self.at:
            raise ShardMismatch(f"{self.where}: byte offset {offset} is no sample start in the index")

    def check_sample(self, key: str, offset: int, members: Iterable[tuple[str, bytes]]) -> None:
        """Key at ``offset`` (else :class:`ShardMismatch`) and CRC (else :class:`CorruptSample`)."""
        if self.at is None:
            return
        want = self.at.get(offset)
        if want is None or want[0] != key:
            found = "no sample" if want is None else f"sample {want[0]!r}"
            raise ShardMismatch(
                f"{self.where}: sample {key!r} at byte {offset}, index.json has {found} there"
            )
        if want[1] is not None:
            crc = sample_crc(members)
            if crc != want[1]:
                raise CorruptSample(
                    f"{self.where}: sample {key!r} (byte {offset}) fails its checksum "
                    f"(crc32 {crc:08x}, index.json {want[1]:08x}): corrupted in place"
                )

    def check_end(self, read: int) -> None:
        """At the end of the archive: ``read`` samples (counted from the start) must be all of them."""
        if read != self.num_samples:
            raise ShardMismatch(
                f"{self.where}: shard ended after {read} samples, index.json counts {self.num_samples}"
            )
