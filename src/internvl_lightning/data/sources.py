"""Where shards come from: URL patterns, ``index.json``, opening a shard at a byte offset, reading samples.

A shard is a WebDataset tar: consecutive members ``<key>.<suffix>`` form one sample. Shards can be
local paths, ``file:`` URLs, ``http(s)://`` URLs (ranged GETs, so a shard can be entered at a byte
offset) or anything webdataset's ``gopen`` opens (``pipe:CMD``, ``gs://``, ...; those are read from
the start and skipped forward to an offset). Such URLs are accepted only from the caller (command
line, YAML, Python): paths read from an ``index.json`` are confined to its directory (:mod:`.verify`).
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import stat
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO
from urllib.parse import urlparse

from braceexpand import braceexpand
from webdataset.gopen import gopen

from .meta import repeat_time_problem
from .verify import ShardExpect, ShardMismatch, confined

log = logging.getLogger(__name__)

INDEX_NAME = "index.json"


@dataclass
class ShardInfo:
    """One shard: its URL and, when an index says so, its sample count, size, checksum and sample list.

    ``samples``: the URL of its ``.samples.json`` sidecar, or the lists themselves (index version 1).
    """

    url: str
    num_samples: int | None = None
    size: int | None = None
    sha256: str | None = None
    samples: str | dict | None = None
    min_tokens: int | None = None  # the smallest sample's tokens / tiles (index version 3)
    min_tiles: int | None = None

    def expect(self) -> ShardExpect | None:
        """What the index says this shard holds (reads its sidecar); None for shards given as URLs."""
        if self.samples is None or self.num_samples is None:
            return None
        lists = read_json(self.samples) if isinstance(self.samples, str) else self.samples
        if not isinstance(lists, dict) or not {"keys", "offsets"} <= lists.keys():
            raise ShardMismatch(f"{self.url}: its sample list {self.samples} has no keys/offsets")
        return ShardExpect.from_lists(self.url, self.num_samples, self.size, lists)

    def describe(self) -> list:
        """What identifies the shard's content (for the data fingerprint)."""
        return ["/".join(self.url.split("/")[-2:]), self.num_samples, self.size, self.sha256]


@dataclass
class DatasetSource:
    """One dataset of the mixture: its shards and the meta-file options that matter when streaming."""

    name: str
    shards: list[ShardInfo]
    repeat_time: float = 1.0
    weight: float | None = None  # explicit mixture weight; default: sample count after repeat_time
    data_augment: bool = False
    max_dynamic_patch: int | None = None
    skipped: list[str] = field(default_factory=list)  # shards left out at start-up, with the reason

    @property
    def num_samples(self) -> int | None:
        """Samples in the shards (before repeat_time), or None when a shard's count is unknown."""
        counts = [s.num_samples for s in self.shards]
        return None if any(c is None for c in counts) else sum(counts)  # type: ignore[misc]

    @property
    def length(self) -> int | None:
        """Samples per pass after repeat_time (the reference's ``len(dataset)``)."""
        n = self.num_samples
        if n is None:
            return None
        return int(n * self.repeat_time) if self.repeat_time < 1 else n * int(self.repeat_time)


def expand_urls(urls: str | Sequence[str]) -> list[str]:
    """Brace-expand (``shard-{000000..000127}.tar``) and split ``::``-joined lists, keeping order."""
    items = [urls] if isinstance(urls, str) else list(urls)
    out: list[str] = []
    for item in items:
        for part in item.split("::"):
            out.extend(braceexpand(part.strip()))
    return [u for u in out if u]


def _is_local(url: str) -> bool:
    scheme = urlparse(url).scheme
    return scheme == "" or scheme == "file" or (len(scheme) == 1 and os.name == "nt")


def _local_path(url: str) -> str:
    return urlparse(url).path if url.startswith("file:") else url


def join_url(root: str, path: str) -> str:
    """``path`` relative to ``root`` (a directory or URL prefix); absolute paths and URLs are kept."""
    if urlparse(path).scheme or os.path.isabs(path):
        return path
    if _is_local(root):
        return os.path.join(_local_path(root), path)
    return posixpath.join(root.rstrip("/"), path)


def _skip(f: BinaryIO, n: int) -> None:
    while n > 0:
        chunk = f.read(min(n, 1 << 20))
        if not chunk:
            raise EOFError(f"stream ended {n} bytes before the requested offset")
        n -= len(chunk)


def _http_size(resp: Any, offset: int) -> int | None:
    """The whole file's size as the server announces it (Content-Range / Content-Length), or None."""
    if resp.status == 206:
        total = (resp.headers.get("Content-Range") or "").rpartition("/")[2]
        if total.isdigit():
            return int(total)
    length = resp.headers.get("Content-Length") or ""
    if not length.isdigit():
        return None
    return int(length) + (offset if resp.status == 206 else 0)  # a 200 sends it all, then skipped


def _open_http(url: str, offset: int, retries: int = 3) -> Any:
    # A ranged GET enters the shard at `offset`; a server that ignores Range answers 200 with the
    # whole body, which is then skipped forward.
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    for attempt in range(retries):
        try:
            resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=60)
            break
        except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
            client_error = isinstance(e, urllib.error.HTTPError) and e.code < 500  # 404 will stay 404
            if client_error or attempt == retries - 1:
                raise
            time.sleep(0.5 * 2**attempt)
    if offset and resp.status != 206:
        _skip(resp, offset)
    return resp


def _open_sized(url: str, offset: int) -> tuple[BinaryIO, int | None]:
    """``url`` positioned at byte ``offset``, and the whole file's size when known before reading."""
    if _is_local(url):
        f = open(_local_path(url), "rb")  # noqa: SIM115 - the caller closes it
        if offset:
            f.seek(offset)
        return f, _file_size(f)
    if urlparse(url).scheme in ("http", "https"):
        resp = _open_http(url, offset)
        return resp, _http_size(resp, offset)
    f = gopen(url, "rb")
    _skip(f, offset)
    return f, None


def open_url(url: str, offset: int = 0) -> BinaryIO:
    """A readable binary stream of ``url`` positioned at byte ``offset``."""
    return _open_sized(url, offset)[0]


def _file_size(f: BinaryIO) -> int | None:
    try:
        st = os.fstat(f.fileno())
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


class _Counted:
    """A stream that counts the bytes read from it: the size of a shard whose length was not announced."""

    def __init__(self, f: BinaryIO) -> None:
        self._f, self.count = f, 0

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self.count += len(data)
        return data

    def drain(self) -> int:
        """Read on to the end of the stream; the bytes read in all."""
        while self.read(1 << 20):
            pass
        return self.count

    def close(self) -> None:
        self._f.close()


def read_json(url: str) -> Any:
    """Parse a JSON file from any URL ``open_url`` understands."""
    with open_url(url) as f:
        return json.loads(f.read().decode("utf-8"))


def _shard_entry(root: str, where: str, entry: Any, local: bool) -> ShardInfo:
    """One shard of an index, its paths confined to ``root``."""
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: shard entry {entry!r} is not an object")
    path = confined(root, entry.get("path"), where, local)
    n = entry.get("num_samples")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"{where}: shard {path!r}: 'num_samples' must be a non-negative integer, got {n!r}")
    if "samples" in entry:
        samples: str | dict = join_url(root, confined(root, entry["samples"], where, local))
    else:  # index version 1 kept the lists inline
        samples = {k: entry[k] for k in ("keys", "offsets", "num_tokens", "num_tiles") if k in entry}
    size = entry.get("size")
    return ShardInfo(
        join_url(root, path),
        n,
        None if size is None else int(size),
        entry.get("sha256"),
        samples,
        entry.get("min_tokens"),
        entry.get("min_tiles"),
    )


def _present(shard: ShardInfo) -> str | None:
    """Why a local shard cannot be read as the index describes it (None: it can, or it is remote)."""
    if not _is_local(shard.url):
        return None
    try:
        size = os.stat(_local_path(shard.url)).st_size
    except OSError as e:
        return f"{shard.url}: cannot be read: {e.strerror or e}"
    if shard.size is not None and size != shard.size:
        return f"{shard.url}: {size} bytes, index.json says {shard.size}"
    return None


def load_index(root: str, verify: bool = True) -> tuple[dict[str, Any], list[DatasetSource]]:
    """Read ``<root>/index.json`` (written by the shard tool): its header and one source per dataset.

    Every path in it must stay inside ``root`` (:func:`.verify.confined`). With ``verify``, local
    shards that are missing or whose size differs from the index are left out (listed in the
    source's ``skipped``, logged), so mixture weights count only shards that can be read; a
    dataset left with no shard at all is an error.
    """
    where = join_url(root, INDEX_NAME)
    index = read_json(where)
    if not isinstance(index, dict) or not isinstance(index.get("datasets"), dict):
        raise ValueError(f"{where}: not a shard index (no 'datasets' object)")
    local = _is_local(root)
    if verify and int(index.get("version", 1)) < 3:
        log.warning(
            "%s: index version %s carries no shard sizes or sample checksums: keys, offsets and counts "
            "are checked, bytes are not (re-run the shard tool to add them)",
            where,
            index.get("version", 1),
        )
    sources, seen = [], set()
    for name, ds in index["datasets"].items():
        if not isinstance(ds, dict) or not isinstance(ds.get("shards"), list):
            raise ValueError(f"{where}: dataset {name!r} has no 'shards' list")
        repeat = ds.get("repeat_time", 1.0)
        problem = repeat_time_problem(repeat)
        if problem:
            raise ValueError(f"{where}: dataset {name!r}: field 'repeat_time': {problem}")
        shards = [_shard_entry(root, where, s, local) for s in ds["shards"]]
        for s in shards:
            if s.url in seen:
                raise ValueError(f"{where}: dataset {name!r}: shard {s.url} is listed twice")
            seen.add(s.url)
        src = DatasetSource(
            name,
            shards,
            repeat_time=float(repeat),
            data_augment=bool(ds.get("data_augment", False)),
            max_dynamic_patch=ds.get("max_dynamic_patch"),
        )
        if verify:
            problems = {id(s): _present(s) for s in shards}
            src.skipped = [p for p in problems.values() if p]
            src.shards = [s for s in shards if not problems[id(s)]]
            for p in src.skipped:
                log.warning("skipping shard %s", p)
            if shards and not src.shards:
                raise FileNotFoundError(
                    f"{where}: dataset {name!r}: none of its {len(shards)} shards can be read "
                    f"(first: {src.skipped[0]})"
                )
        sources.append(src)
    header = {k: v for k, v in index.items() if k != "datasets"}
    return header, sources


def read_shard_samples(root: str, shard: dict[str, Any]) -> dict[str, list]:
    """Per-sample ``keys``, ``offsets``, ``num_tokens``, ``num_tiles`` (and ``crc32``) of one shard entry."""
    if "samples" not in shard:  # index version 1 kept the lists inline
        return {k: shard[k] for k in ("keys", "offsets", "num_tokens", "num_tiles")}
    return read_json(
        join_url(root, confined(root, shard["samples"], join_url(root, INDEX_NAME), _is_local(root)))
    )


def split_name(name: str) -> tuple[str, str]:
    """WebDataset's rule: the key runs to the first dot of the file name, the rest is the suffix."""
    head, _, base = name.rpartition("/")
    stem, dot, suffix = base.partition(".")
    return (f"{head}/{stem}" if head else stem), (suffix if dot else "")


@dataclass
class RawSample:
    """The members of one sample as stored, and where it starts (to fetch it again after a restart)."""

    key: str
    url: str
    offset: int  # byte offset of the sample's first tar header
    members: dict[str, bytes] = field(default_factory=dict)  # suffix ("json", "img0.jpg") -> bytes


class TarSamples:
    """Samples of one shard, read forward from byte ``offset``; ``next_offset`` is where the next starts.

    Members are grouped by key; after a sample is returned, the header of the next member has been
    read already, so ``next_offset`` is exact (None at the end of the archive). ``size``: the file's
    size, from the start when it is a local file or a server announced its length; otherwise None
    until the end of the archive, then the bytes up to the end of the stream.
    """

    def __init__(self, url: str, offset: int = 0) -> None:
        self.url = url
        self.base = offset
        f, self.size = _open_sized(url, offset)
        self._f: Any = f if self.size is not None else _Counted(f)
        self._tar = tarfile.open(fileobj=self._f, mode="r|")  # noqa: SIM115
        self._next = self._tar.next()
        self.next_offset: int | None = self._offset(self._next)

    def _offset(self, m: tarfile.TarInfo | None) -> int | None:
        return None if m is None else self.base + m.offset

    def __iter__(self) -> Iterator[RawSample]:
        return self

    def __next__(self) -> RawSample:
        m = self._next
        while m is not None and not m.isfile():
            m = self._tar.next()
        if m is None:
            self._ended()
            raise StopIteration
        key = split_name(m.name)[0]
        sample = RawSample(key, self.url, self.base + m.offset)
        while m is not None:
            if m.isfile():
                k, suffix = split_name(m.name)
                if k != key:
                    break
                sample.members[suffix] = self._tar.extractfile(m).read()  # type: ignore[union-attr]
            m = self._tar.next()
        self._next = m
        self.next_offset = self._offset(m)
        if m is None:
            self._ended()
        return sample

    def _ended(self) -> None:
        """The archive ended: a stream of unannounced length is read to its end to learn its size."""
        self.next_offset = None
        if isinstance(self._f, _Counted) and self.size is None:
            self.size = self.base + self._f.drain()

    def close(self) -> None:
        self._tar.close()
        self._f.close()

    def __enter__(self) -> TarSamples:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_checked(url: str, offset: int = 0, expect: ShardExpect | None = None) -> TarSamples:
    """A reader of shard ``url`` from ``offset``, its size and start checked against ``expect``.

    Raises :class:`.verify.ShardMismatch` (the reader closed) when the index disagrees.
    """
    reader = TarSamples(url, offset)
    if expect is not None:
        try:
            expect.check_size(reader.size)
            expect.check_start(offset)
        except ShardMismatch:
            reader.close()
            raise
    return reader


def fetch_sample(
    url: str, offset: int, key: str | None = None, expect: ShardExpect | None = None
) -> RawSample:
    """Read the one sample that starts at ``offset``: its key checked when given, and with ``expect``
    the shard's size and the sample's key and checksum, as when it was first read
    (:class:`.verify.ShardMismatch`, :class:`.verify.CorruptSample`)."""
    with open_checked(url, offset, expect) as it:
        sample = next(it, None)
    if sample is None or (key is not None and sample.key != key):
        found = None if sample is None else sample.key
        raise ShardMismatch(f"{url}@{offset}: expected sample {key!r}, found {found!r} (shard changed?)")
    if expect is not None:
        expect.check_sample(sample.key, sample.offset, sample.members.items())
    return sample
