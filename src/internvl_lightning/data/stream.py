"""Streaming reader with exact resume: shards -> mixture -> shuffle buffer -> encode -> packer -> batches.

Each *global worker* ``g = rank * num_workers + worker`` (of ``G = world_size * num_workers``) runs the
whole pipeline on its own share of every dataset and yields ready batches. Per epoch, a dataset's
shard list (repeated or cut by ``repeat_time``) is permuted with a seed shared by all workers and
dealt round-robin: worker ``g`` reads ``units[g::G]``; with fewer units than workers, the workers that
share a shard take its samples by index modulo their count.

Resume: right after producing a batch a worker snapshots its state (epoch, per-dataset cursor =
pass/shard/sample index/byte offset, rng states, and the *references* of the samples sitting in the
shuffle buffer and in the packer: dataset, shard URL, byte offset, tar key). The snapshot travels
with the batch; :class:`ResumableLoader` keeps the last one per worker as batches are consumed. On
load, cursors reopen their shard at the byte offset and buffered samples are fetched back by
seeking to their offsets and encoded again with the same seed, so nothing consumed is re-read.
A sample fetched back is checked as on its first read (:mod:`.verify`); one that fails (changed
in place, its shard replaced or gone) is skipped and counted, and the stream goes on without it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .encode import EncodeConfig, encode_sample
from .fingerprint import DataChanged, changed_parts, fingerprint, settings_of
from .memory import reuse_freed_memory
from .meta import mixture_weights
from .packing import Packer, sample_key
from .skips import (
    LOG_FIRST,
    MAX_SKIPS_WITHOUT_BATCH,
    NoBatches,
    packer_reason,
    refetch_reason,
    skip_reason,
    worth_logging,
)
from .sources import DatasetSource, RawSample, ShardInfo, TarSamples, fetch_sample, open_checked
from .verify import CorruptSample, ShardExpect, ShardMismatch

log = logging.getLogger(__name__)

STATE_VERSION = 1
STATE_KEY = "_data_state"  # batch entry carrying the worker snapshot (removed before the model)
MAX_LOGGED_ERRORS = 20


# A reference to a read sample: [dataset, shard url, byte offset, tar key, epoch, pass, copy].
Ref = list


def stable_seed(*parts: Any) -> int:
    """A 64-bit seed from ``parts`` that is the same in every process (unlike ``hash``)."""
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "little")


def _rng(*parts: Any) -> np.random.Generator:
    return np.random.default_rng(stable_seed(*parts))


def encode_rng(seed: int, ref: Ref) -> random.Random:
    """The per-sample rng: a function of (seed, epoch, pass, copy, dataset, key) only."""
    dataset, _, _, key, epoch, pass_, copy_ = ref
    return random.Random(stable_seed("encode", seed, epoch, pass_, copy_, dataset, key))


def sample_id(ref: Ref) -> str:
    """Packer id of a sample: its tar key, tagged when it is a repeat (unique among buffered ones)."""
    _, _, _, key, _, pass_, copy_ = ref
    return key if pass_ == copy_ == 0 else f"{key}#{pass_}.{copy_}"


def plan_units(
    src: DatasetSource, seed: int, epoch: int, pass_: int, worker: int, num_workers: int, shuffle: bool
) -> list[tuple[int, int, int | None, int, int]]:
    """This worker's reading plan for one pass: ``(copy, shard index, stop, stride, phase)`` per unit.

    A unit is one shard read from sample 0 up to ``stop`` (None: to its end), taking the samples
    ``i`` with ``i % stride == phase``.
    """
    if src.repeat_time < 1:
        if src.num_samples is None:
            raise ValueError(f"dataset {src.name!r}: repeat_time < 1 needs per-shard sample counts")
        left = int(src.num_samples * src.repeat_time)  # the first int(n * r) samples, in order
        units = []
        for i, shard in enumerate(src.shards):
            if left <= 0:
                break
            units.append((0, i, min(shard.num_samples, left)))  # type: ignore[type-var]
            left -= units[-1][2]
    else:
        units = [(c, i, s.num_samples) for c in range(int(src.repeat_time)) for i, s in enumerate(src.shards)]
    if shuffle and units:
        units = [units[j] for j in _rng("shards", seed, epoch, pass_, src.name).permutation(len(units))]
    if not units:
        return []
    if len(units) >= num_workers:
        return [(c, i, stop, 1, 0) for c, i, stop in units[worker::num_workers]]
    n = len(units)  # more workers than units: share a shard, split its samples by index
    c, i, stop = units[worker % n]
    return [(c, i, stop, len(range(worker % n, num_workers, n)), worker // n)]


class _Cursor:
    """Reads one dataset's share for one worker; its position is (pass, unit, sample index, byte offset)."""

    def __init__(self, w: _Worker, src: DatasetSource, state: dict | None = None) -> None:
        self.w, self.src = w, src
        state = state or {"pass": 0, "unit": 0, "pos": 0, "offset": 0}
        self.pass_, self.unit, self.pos, self.offset = (state[k] for k in ("pass", "unit", "pos", "offset"))
        self._reader: TarSamples | None = None
        self._expect: ShardExpect | None = None
        self._plan()

    def _plan(self) -> None:
        ds = self.w.ds
        self.units = plan_units(
            self.src, ds.seed, self.w.epoch, self.pass_, self.w.g, self.w.G, ds.shuffle_shards
        )

    def state(self) -> dict:
        return {"pass": self.pass_, "unit": self.unit, "pos": self.pos, "offset": self.offset}

    def close(self) -> None:
        if self._reader is not None:
            reader, self._reader = self._reader, None
            try:
                reader.close()
            except Exception as e:  # a stream that already failed may fail again on close
                log.debug("closing %s: %s", reader.url, e)

    def restart(self) -> None:
        """Start the next pass (``replacement``): reshuffled units, from the beginning."""
        self._leave(None)
        self.pass_, self.unit, self.pos, self.offset = self.pass_ + 1, 0, 0, 0
        self._plan()

    def next(self) -> tuple[RawSample, Ref] | None:
        """The next sample of this worker's share, or None when the pass is done."""
        while self.unit < len(self.units):
            copy_, shard, stop, stride, phase = self.units[self.unit]
            info = self.src.shards[shard]
            if self.offset is not None and (stop is None or self.pos < stop):
                step = self._step(info, stride, phase, copy_)
                if step is True:
                    continue
                if step is not False:
                    return step
            self._leave(info)
            self.unit, self.pos, self.offset = self.unit + 1, 0, 0
        return None

    def _open(self, info: ShardInfo) -> None:
        self._expect = info.expect() if self.w.ds.verify else None
        self._reader = open_checked(info.url, self.offset, self._expect)

    def _step(self, info: ShardInfo, stride: int, phase: int, copy_: int) -> tuple[RawSample, Ref] | bool:
        """One sample of the current shard: the item to hand out, True to read on, False to leave it."""
        raw = None
        try:
            if self._reader is None:
                self._open(info)
            raw = next(self._reader, None)  # type: ignore[call-overload]
            if raw is None:
                self.offset = None  # the archive ended
                return False
            i, self.pos, self.offset = self.pos, self.pos + 1, self._reader.next_offset  # type: ignore[union-attr]
            if i % stride != phase:
                return True
            if self._expect is not None:
                self._expect.check_sample(raw.key, raw.offset, raw.members.items())
            return raw, [self.src.name, info.url, raw.offset, raw.key, self.w.epoch, self.pass_, copy_]
        except CorruptSample as e:  # this sample only: the archive itself reads on
            self.w.note_error("sample", self.src.name, info.url, raw.offset, raw.key, e)  # type: ignore[union-attr]
            return True
        except Exception as e:  # a broken, unreachable or mismatching shard: skip its rest, loudly
            self.w.note_error("shard", self.src.name, info.url, self.offset, None, e)
            self._expect = None
            return False

    def _leave(self, info: ShardInfo | None) -> None:
        """Close the shard; when its archive ended, its size (known only now for a stream whose length
        was not announced) and the samples read must be what its index says."""
        if self._expect is not None and self.offset is None and info is not None:
            try:
                self._expect.check_size(None if self._reader is None else self._reader.size)
                self._expect.check_end(self.pos)
            except ShardMismatch as e:
                self.w.note_error("shard", self.src.name, info.url, None, None, e)
        self._expect = None
        self.close()


class _Worker:
    """The pipeline of one global worker, with a JSON-able snapshot after every batch."""

    def __init__(self, ds: PackedStream, g: int, G: int, epoch: int, state: dict | None) -> None:
        self.ds, self.g, self.G = ds, g, G
        self.epoch = epoch
        self.batches = 0
        self.stats: dict[str, Any] = {
            "read": {},
            "encoded": 0,
            "errors": 0,  # samples skipped, all reasons
            "shard_errors": 0,  # shards (or their rest) skipped
            "skipped": {},  # samples skipped by reason (see skip_reason)
            "last_errors": [],
        }
        # samples skipped since the last batch (see PackedStream.max_skips_without_batch)
        self._since_batch = 0
        self.packer = Packer(**ds.packing)
        self._refs: dict[tuple[str, str], Ref] = {}
        if state is not None and state["epoch"] < epoch:  # a finished epoch: keep only the counters
            self.stats, self.batches, state = state["stats"], state["batches"], None
        self.stats.setdefault("skipped", {})  # states saved before skip reasons were counted
        if state is None:
            self._new_epoch()
        else:
            self._load(state)
            self._epoch_start, self._epoch_batches = self._totals(), 1  # resumed after a batch

    # -- epoch / state ----------------------------------------------------------------------
    def _new_epoch(self) -> None:
        ds = self.ds
        self.cursors = [_Cursor(self, src) for src in ds.sources]
        self.active = [i for i, w in enumerate(ds.weights) if w > 0]
        self.mix_rng = _rng("mix", ds.seed, self.epoch, self.g)
        self.shuffle_rng = _rng("shuffle", ds.seed, self.epoch, self.g)
        self.buffer: list[tuple[RawSample, Ref]] = []
        self._epoch_start, self._epoch_batches = self._totals(), 0

    def state(self) -> dict:
        packer = self.packer.state_dict()
        keys = {(e["dataset"], e["id"]) for b in packer["open"] for e in b}
        keys |= {(e["dataset"], e["id"]) for e in packer["pool"]}
        keys |= {(e["dataset"], e["id"]) for p in packer["ready"] for e in p["samples"]}
        self._refs = {k: self._refs[k] for k in keys}  # forget samples that left the packer
        return {
            "version": STATE_VERSION,
            "worker": self.g,
            "num_workers": self.G,
            "epoch": self.epoch,
            "batches": self.batches,
            "active": [self.ds.sources[i].name for i in self.active],
            "cursors": {c.src.name: c.state() for c in self.cursors},
            "mix_rng": self.mix_rng.bit_generator.state,
            "shuffle_rng": self.shuffle_rng.bit_generator.state,
            "shuffle": [ref for _, ref in self.buffer],
            "packer": packer,
            "packer_refs": [ref for _, ref in sorted(self._refs.items())],
            "stats": self.stats,
        }

    def _load(self, st: dict) -> None:
        if st.get("version") != STATE_VERSION or (st["worker"], st["num_workers"]) != (self.g, self.G):
            raise ValueError(
                f"data state is for worker {st.get('worker')} of {st.get('num_workers')} (version "
                f"{st.get('version')}), this is worker {self.g} of {self.G}: resume with the same "
                "world size and num_workers"
            )
        names = [s.name for s in self.ds.sources]
        if sorted(st["cursors"]) != sorted(names):
            raise ValueError(
                f"data state has datasets {sorted(st['cursors'])}, the stream has {sorted(names)}"
            )
        self.epoch, self.batches, self.stats = st["epoch"], st["batches"], st["stats"]
        self.cursors = [_Cursor(self, src, st["cursors"][src.name]) for src in self.ds.sources]
        self.active = [names.index(n) for n in st["active"]]
        self.mix_rng, self.shuffle_rng = np.random.default_rng(), np.random.default_rng()
        self.mix_rng.bit_generator.state = st["mix_rng"]
        self.shuffle_rng.bit_generator.state = st["shuffle_rng"]
        # Buffered samples are fetched back by seeking to their byte offsets, checked as when first read.
        expects: dict[str, ShardExpect | None] = {}
        fetched = [(self._refetch(ref, expects), ref) for ref in st["shuffle"]]
        self.buffer = [(raw, ref) for raw, ref in fetched if raw is not None]
        refs = {(ref[0], sample_id(ref)): ref for ref in st["packer_refs"]}
        raws = {key: self._refetch(ref, expects) for key, ref in refs.items()}

        def lookup(key: tuple[str, str]) -> Any:
            ref = refs[key]
            sample = self._encode(raws[key], ref, strict=True)
            self._refs[key] = ref
            return sample

        gone = {key for key, raw in raws.items() if raw is None}
        self.packer.load_state_dict(_without(st["packer"], gone), lookup)

    def _refetch(self, ref: Ref, expects: dict[str, ShardExpect | None]) -> RawSample | None:
        """A sample of a saved state read back and checked like a first read; None (counted) if it fails.

        ``expects``: what the index says of each shard, read once per shard while loading a state.
        """
        dataset, url, offset, key = ref[:4]
        try:
            if url not in expects:
                expects[url] = self._expect_of(dataset, url)
            return fetch_sample(url, offset, key, expects[url])
        except Exception as e:  # the sample alone: the shard's other samples are checked as they come
            self.note_error("sample", dataset, url, offset, key, e, refetch_reason(e))
            return None

    def _expect_of(self, dataset: str, url: str) -> ShardExpect | None:
        if not self.ds.verify:
            return None
        shards = self.ds.sources[self.ds.names[dataset]].shards
        info = next((s for s in shards if s.url == url), None)
        return None if info is None else info.expect()

    # -- pipeline ---------------------------------------------------------------------------
    def _totals(self) -> dict[str, int]:
        """Running counts an epoch is judged by (see :meth:`_check_epoch`)."""
        st = self.stats
        return {"read": sum(st["read"].values()), "skipped": st["errors"], "shards": st["shard_errors"]}

    def note_error(
        self,
        kind: str,
        dataset: str,
        url: str | None,
        offset: int | None,
        key: str | None,
        e: Exception | str,
        reason: str | None = None,
    ) -> None:
        """Count, log (rate-limited) and remember (in the state) a sample or shard that had to be skipped."""
        st = self.stats
        if kind == "shard":
            st["shard_errors"] += 1
            n = st["shard_errors"]
        else:
            reason = reason or skip_reason(e)
            st["errors"] += 1
            n = st["skipped"][reason] = st["skipped"].get(reason, 0) + 1
            self._since_batch += 1
        text = e if isinstance(e, str) else f"{type(e).__name__}: {e}"
        entry = {"kind": kind, "dataset": dataset, "key": key, "url": url, "offset": offset, "error": str(e)}
        if reason is not None:
            entry["reason"] = reason
        st["last_errors"] = (st["last_errors"] + [entry])[-MAX_LOGGED_ERRORS:]
        if worth_logging(n):
            what = f"sample {dataset}:{key}" if key is not None else f"the rest of a shard of {dataset}"
            tag = "shards" if kind == "shard" else reason
            more = "" if n <= LOG_FIRST else f" [{n} {tag} so far; not every one is logged]"
            where = f" ({url} @ byte {offset})" if url is not None else ""  # the packer's refusals have none
            log.warning("skipping %s%s: %s%s", what, where, text, more)
        limit = self.ds.max_skips_without_batch
        if kind != "shard" and limit and self._since_batch >= limit:
            raise NoBatches(self._no_batch_message(f"{self._since_batch} samples in a row were skipped"))

    def _drain_rejected(self) -> None:
        """Samples the packer refused (over a budget) are skips too: count them, keep the state small."""
        rejected = self.packer.stats["rejected"]
        while rejected:
            r = rejected.pop(0)
            self.note_error(
                "sample", r["dataset"], None, None, r["id"], r["reason"], packer_reason(r["reason"])
            )

    def _no_batch_message(self, cause: str) -> str:
        start, now = self._epoch_start, self._totals()
        skipped = ", ".join(f"{k} {v}" for k, v in sorted(self.stats["skipped"].items())) or "none"
        last = self.stats["last_errors"][-1]["error"] if self.stats["last_errors"] else "none"
        return (
            f"the data stream cannot produce a batch (worker {self.g} of {self.G}, data epoch {self.epoch}): "
            f"{cause}; this epoch read {now['read'] - start['read']} samples, skipped "
            f"{now['skipped'] - start['skipped']} and {now['shards'] - start['shards']} shards "
            f"(skipped so far by reason: {skipped}); last error: {last}"
        )

    def _check_epoch(self) -> None:
        """An epoch that gave no batch would repeat forever: stop with the cause and the counts."""
        if self._epoch_batches:
            return
        start, now = self._epoch_start, self._totals()
        read, skipped, shards = (now[k] - start[k] for k in ("read", "skipped", "shards"))
        if not (read or skipped or shards):
            if self.ds.stop_at_epoch_end:
                return  # this worker's share is empty (fewer samples than workers): nothing failed
            total = sum(s.num_samples or 0 for s in self.ds.sources)
            cause = f"this worker has no samples to read ({total} samples for {self.G} workers)"
        elif not (read or skipped):
            cause = f"every shard failed ({shards} skipped)"
        elif skipped >= read:  # checksum failures are skipped before they count as read
            cause = f"every sample failed ({skipped} skipped, {read} read)"
        else:
            cause = f"{read - skipped} samples were left but made no pack"
        raise NoBatches(self._no_batch_message(cause))

    def _read_mixed(self) -> tuple[RawSample, Ref] | None:
        """Next sample from the mixture (reference rule: drop or restart exhausted datasets)."""
        weights = self.ds.weights
        while self.active:
            p = np.array([weights[i] for i in self.active])
            k = int(self.mix_rng.choice(len(self.active), p=p / p.sum()))
            cursor = self.cursors[self.active[k]]
            item = cursor.next()
            if item is None and self.ds.replacement:
                cursor.restart()
                item = cursor.next()
            if item is None:  # exhausted (or empty for this worker even after a restart)
                del self.active[k]
                continue
            read = self.stats["read"]
            read[cursor.src.name] = read.get(cursor.src.name, 0) + 1
            return item
        return None

    def _next_shuffled(self) -> tuple[RawSample, Ref] | None:
        """Fill the buffer from the mixture, then hand out a random one (drains at the end)."""
        while len(self.buffer) < max(1, self.ds.shuffle_buffer):
            item = self._read_mixed()
            if item is None:
                break
            self.buffer.append(item)
        if not self.buffer:
            return None
        k = int(self.shuffle_rng.integers(len(self.buffer)))
        self.buffer[k], self.buffer[-1] = self.buffer[-1], self.buffer[k]
        return self.buffer.pop()

    def _encode(self, raw: RawSample, ref: Ref, strict: bool = False) -> Any:
        src = self.ds.sources[self.ds.names[ref[0]]]
        try:
            sample = self.ds.encode(raw, src, encode_rng(self.ds.seed, ref))
        except Exception as e:
            if strict:
                raise
            self.note_error("sample", ref[0], ref[1], ref[2], ref[3], e)
            return None
        sample.id, sample.dataset = sample_id(ref), ref[0]
        return sample

    def _samples(self) -> Iterator[Any]:
        while (item := self._next_shuffled()) is not None:
            self._drain_rejected()
            raw, ref = item
            sample = self._encode(raw, ref)
            if sample is not None:
                self.stats["encoded"] += 1
                self._refs[sample_key(sample)] = ref
                yield sample
        self._drain_rejected()

    def _batch(self, packs: list) -> dict:
        self._drain_rejected()
        batch = self.ds.collate(packs)
        self.batches += 1
        self._epoch_batches += 1
        self._since_batch = 0
        local = self.g % (self.G // self.ds.world_size)
        batch.setdefault("stats", {}).update(epoch=self.epoch, worker=local)
        if self.ds.snapshots:
            # Snapshot right after producing the batch: resuming from it continues with the next one.
            batch[STATE_KEY] = {"worker": local, "epoch": self.epoch, "state": json.dumps(self.state())}
        return batch

    def run(self) -> Iterator[dict]:
        while True:
            packs: list = []
            for pack in self.packer.pack(self._samples()):
                packs.append(pack)
                if len(packs) == self.ds.batch_size:
                    yield self._batch(packs)
                    packs = []
            if packs:  # the end of the epoch may leave a short batch
                yield self._batch(packs)
            for c in self.cursors:
                c.close()
            self._check_epoch()
            if self.ds.stop_at_epoch_end:
                return
            self.epoch += 1
            self._new_epoch()


def _without(packer: dict, gone: set[tuple[str, str]]) -> dict:
    """A packer state less the samples ``gone`` (packs left empty dropped)."""

    def kept(entries: list[dict]) -> list[dict]:
        return [e for e in entries if (e["dataset"], e["id"]) not in gone]

    if not gone:
        return packer
    ready = [dict(p, samples=kept(p["samples"])) for p in packer["ready"]]
    return dict(
        packer,
        open=[b for b in map(kept, packer["open"]) if b],
        pool=kept(packer["pool"]),
        ready=[p for p in ready if p["samples"]],
    )


class PackedStream(IterableDataset):
    """Batches of packed samples streamed from shards; one pipeline per DataLoader worker.

    ``encode(raw, source, rng) -> sample`` turns a :class:`RawSample` into an ``EncodedSample``;
    ``collate(packs) -> dict`` makes the batch. ``packing``: keyword arguments of :class:`Packer`.
    ``weights``: explicit mixture weights per dataset name (default: sample counts after
    ``repeat_time``, square-rooted with ``sqrt_weights``). ``stop_at_epoch_end``: one epoch per
    iteration (the loader counts epochs) instead of an endless stream of reseeded epochs.
    ``snapshots=False``: batches carry no resume state (validation). ``reuse_freed_memory``: tune
    the data process's allocator so each batch reuses warm pages (see :mod:`.memory`).
    ``verify``: check shard sizes, keys at offsets, sample CRCs and counts against the index
    (:mod:`.verify`); failures skip the sample or shard and are counted. A worker that cannot
    produce a batch (an epoch without one, or ``max_skips_without_batch`` skipped samples in a
    row; 0: no bound) raises :class:`NoBatches` instead of looping. ``settings``: what else
    defines the samples (the encoder's config by default), part of :meth:`fingerprint`.
    """

    def __init__(
        self,
        sources: list[DatasetSource],
        encode: Callable[[RawSample, DatasetSource, random.Random], Any],
        collate: Callable[[list], dict],
        packing: dict[str, Any] | None = None,
        batch_size: int = 1,
        seed: int = 0,
        shuffle_buffer: int = 100,
        shuffle_shards: bool = True,
        sqrt_weights: bool = False,
        replacement: bool = False,
        stop_at_epoch_end: bool = False,
        rank: int = 0,
        world_size: int = 1,
        snapshots: bool = True,
        reuse_freed_memory: bool = True,
        verify: bool = True,
        max_skips_without_batch: int = MAX_SKIPS_WITHOUT_BATCH,
        settings: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not sources:
            raise ValueError("no datasets to stream")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.sources, self.encode, self.collate = sources, encode, collate
        self.names = {s.name: i for i, s in enumerate(sources)}
        if len(self.names) != len(sources):
            raise ValueError(f"duplicate dataset names: {[s.name for s in sources]}")
        self.packing = dict(packing or {})
        self.batch_size, self.seed, self.shuffle_buffer = batch_size, seed, shuffle_buffer
        self.shuffle_shards, self.replacement = shuffle_shards, replacement
        self.stop_at_epoch_end, self.rank, self.world_size = stop_at_epoch_end, rank, world_size
        self.snapshots, self.reuse_freed_memory = snapshots, reuse_freed_memory
        self.verify, self.max_skips_without_batch = verify, max_skips_without_batch
        self.settings = settings if settings is not None else settings_of(encode)
        self.weights = self._weights(sqrt_weights)
        self.resume: dict[str, Any] = {}  # set by ResumableLoader: epoch, order, worker states

    def _weights(self, sqrt: bool) -> list[float]:
        given = [s.weight for s in self.sources]
        if all(w is not None for w in given):
            total = float(sum(given))  # type: ignore[arg-type]
            if total <= 0:
                raise ValueError("mixture weights must not all be zero")
            return [w / total for w in given]  # type: ignore[operator]
        if any(w is not None for w in given):
            raise ValueError("give a weight for every dataset or for none")
        lengths = {s.name: s.length for s in self.sources}
        unknown = [n for n, v in lengths.items() if v is None]
        if unknown:
            raise ValueError(f"datasets {unknown} have no sample counts: give weights (or an index.json)")
        w = mixture_weights(lengths, sqrt=sqrt)  # type: ignore[arg-type]
        return [w[s.name] for s in self.sources]

    def fingerprint(self) -> dict[str, dict[str, str]]:
        """What defines this stream, per part (see :mod:`.fingerprint`)."""
        order = {"seed": self.seed, "shuffle_buffer": self.shuffle_buffer, "shards": self.shuffle_shards}
        packing = {**self.packing, "batch_size": self.batch_size}
        return fingerprint(self.sources, self.weights, self.replacement, packing, order, self.settings)

    def worker(self, worker: int = 0, num_workers: int = 1, state: dict | None = None) -> _Worker:
        """The pipeline of local worker ``worker`` (of ``num_workers``) on this rank."""
        g, G = self.rank * num_workers + worker, self.world_size * num_workers
        return _Worker(self, g, G, self.resume.get("epoch", 0), state)

    def __iter__(self) -> Iterator[dict]:
        if self.reuse_freed_memory:
            reuse_freed_memory()  # this process only: a DataLoader worker, or the caller's with 0 workers
        info = get_worker_info()
        p, W = (info.id, info.num_workers) if info is not None else (0, 1)
        logical = self.resume.get("order", list(range(W)))[p]  # see ResumableLoader
        state = self.resume.get("states", {}).get(logical)
        yield from self.worker(logical, W, None if state is None else json.loads(state)).run()

    def samples(self) -> Iterator[Any]:
        """Encoded samples of worker 0 in stream order, before packing (for previews)."""
        return self.worker()._samples()

    def packs(self) -> Iterator[Any]:
        """Packs of worker 0 before collation (for previews)."""
        w = self.worker()
        return w.packer.pack(w._samples())


class ResumableLoader:
    """A DataLoader over a :class:`PackedStream` that remembers, per worker, the state after the last
    batch consumed; ``state_dict``/``load_state_dict`` make a restart continue exactly.

    DataLoader workers yield in turn, starting at worker 0 and skipping finished ones. So on restart
    the assignment of logical workers to physical ones is rotated to start right after the worker
    of the last consumed batch: with all workers busy, after ``n`` batches physical worker ``p`` runs
    logical worker ``(p + n) % W``. ``record_on_yield=False`` leaves the
    snapshot in the batch; call :meth:`record` when the batch is really used (a Lightning hook),
    because the trainer fetches one batch ahead.

    The state carries the stream's :meth:`PackedStream.fingerprint`; loading a state saved for a
    different stream raises :class:`DataChanged` naming the parts that differ, unless
    ``allow_restart``: then the data order restarts (fresh workers at the saved epoch), and the
    log says so. Either way no saved byte offset is used on data it was not taken from.
    """

    def __init__(
        self,
        stream: PackedStream,
        num_workers: int = 0,
        record_on_yield: bool = True,
        allow_restart: bool = False,
        **loader_kwargs: Any,
    ) -> None:
        if loader_kwargs.get("persistent_workers"):
            raise ValueError("persistent_workers would keep stale resume states in the workers")
        self.stream, self.num_workers, self.record_on_yield = stream, num_workers, record_on_yield
        self.allow_restart = allow_restart
        self.loader_kwargs = loader_kwargs
        self._fingerprint = stream.fingerprint()
        self.W = max(1, num_workers)
        self._epoch, self._order, self._consumed = 0, list(range(self.W)), 0
        self._last: int | None = None  # logical worker of the last consumed batch
        self._states: dict[int, str] = {}
        self._late: dict[int, str] = {}  # states of batches used after their epoch ended (counters only)

    def __iter__(self) -> Iterator[dict]:
        if self._last is not None:
            k = self._order.index(self._last) + 1
            self._order = self._order[k:] + self._order[:k]
        self._last = None
        stream = copy.copy(self.stream)  # the plan travels to the workers with the dataset
        stream.resume = {"epoch": self._epoch, "order": list(self._order), "states": dict(self._states)}
        loader = DataLoader(stream, batch_size=None, num_workers=self.num_workers, **self.loader_kwargs)
        for batch in loader:
            yield self.record(batch) if self.record_on_yield else batch
        # Every worker finished its epoch; their last states now only carry counters forward.
        self._epoch, self._order, self._last = self._epoch + 1, list(range(self.W)), None

    def record(self, batch: dict) -> dict:
        """Take the worker snapshot out of ``batch`` and count the batch as consumed."""
        tag = batch.pop(STATE_KEY, None)
        # A batch used after its loader finished the epoch (the trainer fetches ahead) is old news.
        if tag is not None and tag["epoch"] >= self._epoch:
            self._last = int(tag["worker"])
            self._states[self._last] = tag["state"]
            self._consumed += 1
        elif tag is not None:  # not for resuming, but its counters are the epoch's final ones
            self._late[int(tag["worker"])] = tag["state"]
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "rank": self.stream.rank,
            "world_size": self.stream.world_size,
            "num_workers": self.W,
            "epoch": self._epoch,
            "order": list(self._order),
            "last": self._last,
            "consumed": self._consumed,  # batches consumed in all (for information)
            "fingerprint": self._fingerprint,
            "workers": {str(k): json.loads(v) for k, v in sorted(self._states.items())},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        mine = (self.stream.rank, self.stream.world_size, self.W)
        saved = (state["rank"], state["world_size"], state["num_workers"])
        if state.get("version") != STATE_VERSION or saved != mine:
            raise ValueError(
                f"data state is for rank/world_size/num_workers {saved}, this loader has {mine}: "
                "exact resume needs the same layout"
            )
        self._consumed, self._late = state["consumed"], {}
        if not self._same_stream(state.get("fingerprint"), state["epoch"]):
            self._epoch, self._order, self._last, self._states = state["epoch"], list(range(self.W)), None, {}
            return
        self._epoch, self._order, self._last = state["epoch"], list(state["order"]), state["last"]
        self._states = {int(k): json.dumps(v) for k, v in state["workers"].items()}

    def _same_stream(self, saved: dict | None, epoch: int) -> bool:
        """True when ``saved`` (a state's fingerprint) is this stream's; else an error or, if allowed, a restart."""
        if saved is None:
            log.warning("the data state has no fingerprint (an older version saved it): resuming unchecked")
            return True
        changed, what = changed_parts(saved, self._fingerprint)
        if not changed:
            return True
        if not self.allow_restart:
            raise DataChanged(
                f"the data state was saved for another data stream ({', '.join(changed)} changed: {what}); "
                "resume with the same data and settings, or accept a restart of the data order with "
                "allow_data_restart=True (--data.allow_data_restart=true)"
            )
        log.warning(
            "the data changed since the checkpoint (%s): allow_data_restart is set, so the data order "
            "restarts from the beginning of data epoch %s (samples may repeat or be left out); changes: %s",
            ", ".join(changed),
            epoch,
            what,
        )
        return False

    def worker_stats(self) -> dict[int, dict]:
        """Per worker: samples read per dataset, encoded, skipped (with the last errors), packer stats."""
        out = {}
        for k in sorted(set(self._states) | set(self._late)):
            found = [json.loads(s) for s in (self._states.get(k), self._late.get(k)) if s is not None]
            st = max(found, key=lambda st: st["batches"])  # the newest: counters only grow
            out[k] = dict(st["stats"], epoch=st["epoch"], batches=st["batches"], packer=st["packer"]["stats"])
        return out


@dataclass
class ShardEncoder:
    """``encode`` for :class:`PackedStream` over shards written by the shard tool."""

    cfg: EncodeConfig
    tokenizer: Any

    def __call__(self, raw: RawSample, source: DatasetSource, rng: random.Random) -> Any:
        if "json" not in raw.members:
            raise ValueError(f"sample {raw.key} has no .json member")
        record = json.loads(raw.members["json"])
        media = {k: v for k, v in raw.members.items() if k != "json"}
        mdp = source.max_dynamic_patch if source.max_dynamic_patch is not None else self.cfg.max_dynamic_patch
        cfg = replace(self.cfg, data_augment=source.data_augment, max_dynamic_patch=mdp)
        return encode_sample(record, media, cfg, self.tokenizer, rng, source.name)
