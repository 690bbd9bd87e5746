"""Packer: no loss/duplication, budgets, determinism, reference behaviour, resume, fill."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from internvl_lightning.data.length_mix import realistic_length_mix
from internvl_lightning.data.packing import EncodedSample, Pack, Packer, SampleSize

ALGOS = ["greedy", "reference"]


def sizes(pairs: list[tuple[int, int]]) -> list[SampleSize]:
    return [SampleSize(f"s{i}", n, t, dataset="d") for i, (n, t) in enumerate(pairs)]


def ids(packs: list[Pack]) -> list[list[str]]:
    return [[s.id for s in p] for p in packs]


configs = st.fixed_dictionaries(
    {
        "max_packed_tokens": st.integers(16, 400),
        "num_images_expected": st.integers(0, 12),
        "max_buffer_size": st.integers(1, 6),
        "algorithm": st.sampled_from(ALGOS),
        "strict_mode": st.booleans(),
    }
)
streams = st.lists(st.tuples(st.integers(0, 450), st.integers(0, 14)), max_size=60)


@settings(max_examples=150, deadline=None)
@given(cfg=configs, pairs=streams)
def test_every_sample_once_budgets_deterministic(cfg: dict, pairs: list[tuple[int, int]]) -> None:
    samples = sizes(pairs)
    packer = Packer(**cfg)
    packs = list(packer.pack(samples))
    # packed U rejected == input, each exactly once; samples are the same objects (never split)
    packed = [s for p in packs for s in p]
    rejected = [r["id"] for r in packer.stats["rejected"]]
    assert sorted([s.id for s in packed] + rejected) == sorted(s.id for s in samples)
    assert all(any(s is x for x in samples) for s in packed)
    for p in packs:
        assert len(p) > 0
        assert p.num_tokens <= cfg["max_packed_tokens"]
        assert p.num_tiles <= cfg["num_images_expected"]
        assert p.pad_tiles_to == (cfg["num_images_expected"] if cfg["strict_mode"] else 0)
    for s in samples:  # rejected exactly when a budget cannot hold it alone
        too_big = (
            not (1 <= s.num_tokens <= cfg["max_packed_tokens"]) or s.num_tiles > cfg["num_images_expected"]
        )
        assert too_big == (s.id in rejected)
    assert packer.stats["consumed"] == len(samples) and packer.stats["samples"] == len(packed)
    assert packer.buffered == 0
    assert ids(list(Packer(**cfg).pack(samples))) == ids(packs)  # deterministic


@settings(max_examples=60, deadline=None)
@given(pairs=streams, cap=st.integers(60, 400), k=st.integers(1, 6))
def test_reference_allow_overflow(pairs: list[tuple[int, int]], cap: int, k: int) -> None:
    samples = sizes(pairs)
    packer = Packer(cap, 8, k, algorithm="reference", allow_overflow=True)
    packs = list(packer.pack(samples))
    packed = [s.id for p in packs for s in p] + [r["id"] for r in packer.stats["rejected"]]
    assert sorted(packed) == sorted(s.id for s in samples)
    for p in packs:  # tiles are hard; tokens may overflow by less than one sample
        assert p.num_tiles <= 8
        assert p.num_tokens - max(s.num_tokens for s in p) < cap


@settings(max_examples=60, deadline=None)
@given(cfg=configs, pairs=streams, cut=st.integers(0, 30))
def test_resume_from_state_dict(cfg: dict, pairs: list[tuple[int, int]], cut: int) -> None:
    samples = sizes(pairs)
    full = ids(list(Packer(**cfg).pack(samples)))
    packer = Packer(**cfg)
    gen = packer.pack(samples)
    head = [next(gen) for _ in range(min(cut, len(full)))]
    state = json.loads(json.dumps(packer.state_dict()))  # must survive JSON
    consumed = state["stats"]["consumed"]
    by_key = {(s.dataset, s.id): s for s in samples}
    resumed = Packer(**cfg)
    resumed.load_state_dict(state, lookup=by_key.__getitem__)
    tail = list(resumed.pack(samples[consumed:]))
    assert ids(head) + ids(tail) == full
    assert all(s is by_key[("d", s.id)] for p in tail for s in p)  # lookup supplied the samples
    assert resumed.stats["consumed"] == len(samples)


def test_reference_hand_example() -> None:
    # N=100, T=4, K=2. a+b fill 4 tiles -> out; d opens before c (more tiles); e joins d;
    # f brings d+e to 4 tiles -> out; g joins c; the end flushes c+g.
    s = sizes([(40, 2), (30, 2), (90, 0), (20, 1), (50, 0), (10, 3), (5, 0)])
    a, b, c, d, e, f, g = s
    packs = list(Packer(100, 4, 2, algorithm="reference").pack(s))
    assert ids(packs) == [[a.id, b.id], [d.id, e.id, f.id], [c.id, g.id]]
    # more than K open packs: the head is emitted; a pack at exactly N tokens leaves at once
    s = sizes([(60, 0), (60, 0), (40, 0)])
    assert ids(list(Packer(100, 4, 1, algorithm="reference").pack(s))) == [["s0"], ["s1", "s2"]]


def test_rejects_are_recorded_and_stream_continues() -> None:
    s = sizes([(10, 0), (101, 0), (10, 5), (0, 0), (10, 1)])
    packer = Packer(100, 4, 2)
    assert ids(list(packer.pack(s))) == [["s0", "s4"]]
    reasons = {r["id"]: r["reason"] for r in packer.stats["rejected"]}
    assert set(reasons) == {"s1", "s2", "s3"} and "max_packed_tokens" in reasons["s1"]
    assert "num_images_expected" in reasons["s2"] and reasons["s3"] == "empty"


def test_encoded_sample_and_validation() -> None:
    s = EncodedSample(
        "x", "ds", torch.arange(7), torch.arange(7), torch.zeros(2, 3, 4, 4), torch.ones(2, dtype=torch.long)
    )
    assert (s.num_tokens, s.num_tiles) == (7, 2)
    assert ids(list(Packer(10, 2).pack([s]))) == [["x"]]
    with pytest.raises(ValueError):
        Packer(algorithm="greedy", allow_overflow=True)
    with pytest.raises(ValueError):
        Packer(algorithm="best")


def test_length_mix_deterministic_and_in_range() -> None:
    a = realistic_length_mix(3, 500)
    assert a == realistic_length_mix(3, 500) and a != realistic_length_mix(4, 500)
    assert all(1 <= n <= 16384 and 0 <= t <= 48 and n > 256 * t for n, t in a)
    assert 0.2 < sum(t == 0 for _, t in a) / len(a) < 0.4  # pure text share


def fill(algorithm: str, samples: list[SampleSize]) -> float:
    packer = Packer(16384, 48, 20, algorithm=algorithm)
    packs = list(packer.pack(samples))
    assert packer.stats["rejected"] == [] and sum(len(p) for p in packs) == len(samples)
    return sum(p.num_tokens for p in packs) / (len(packs) * 16384)


def test_greedy_fill_beats_reference_on_realistic_mix() -> None:
    samples = sizes(realistic_length_mix(0, 3000))
    greedy, reference = fill("greedy", samples), fill("reference", samples)
    assert greedy >= 0.97, greedy  # measured 0.997
    assert greedy >= reference, (greedy, reference)  # measured reference 0.887
