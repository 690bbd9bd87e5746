"""Exact resume (torchtitan style): N batches, save, rebuild, load, next M batches are identical.

Covers 0, 1 and 2 DataLoader workers, rank 0 and 1 of 2, a second resume from a resumed run, and
proves that a restart reads neither consumed shards nor anything before the saved byte offsets.
"""

from __future__ import annotations

import copy
import json

import pytest

from internvl_lightning.data import sources, stream
from internvl_lightning.data.stream import ResumableLoader, plan_units
from tests.helpers.streams import assert_same, fake_stream, real_stream, take, write_shards


@pytest.mark.parametrize("num_workers,rank", [(0, 0), (0, 1), (1, 1), (2, 0), (2, 1)])
def test_resume_is_exact(shard_dir, vlm_tokenizer, num_workers, rank):  # noqa: F811
    def loader():
        s = real_stream(shard_dir, vlm_tokenizer, 1024, 1, rank=rank, world_size=2, seed=7, shuffle_buffer=4)
        return ResumableLoader(s, num_workers=num_workers)

    N, M = 3, 9
    ref = loader()
    it = iter(ref)
    head = [next(it) for _ in range(N)]
    state = copy.deepcopy(ref.state_dict())
    tail = [next(it) for _ in range(M)]
    del it
    assert all("_data_state" not in b for b in head + tail)
    # the saved state holds samples in the shuffle buffer and in the packer, and the tail
    # crosses into the next epoch (new seeds, new shard order)
    assert any(w["shuffle"] and w["packer_refs"] for w in state["workers"].values())
    assert {b["stats"]["epoch"] for b in tail} == {0, 1}

    resumed = loader()
    resumed.load_state_dict(json.loads(json.dumps(state)))  # the state is plain JSON
    it = iter(resumed)
    got = [next(it) for _ in range(2)]
    state2 = copy.deepcopy(resumed.state_dict())  # resume a resumed run, at an odd offset
    got += [next(it) for _ in range(M - 2)]
    del it
    assert_same(got, tail)

    again = loader()
    again.load_state_dict(state2)
    assert_same(take(again, M - 2), tail[2:])


def test_restart_reads_no_consumed_shard(shard_dir, monkeypatch):  # noqa: F811
    ref = ResumableLoader(fake_stream(shard_dir, seed=1, shuffle_buffer=5, shuffle_shards=False))
    it = iter(ref)
    for _ in range(4):
        next(it)
    state = copy.deepcopy(ref.state_dict())
    want = [next(it) for _ in range(3)]
    del it
    w = state["workers"]["0"]
    assert w["epoch"] == 0 and w["shuffle"] and w["packer_refs"]

    opens, fetches = [], []
    real_open, real_fetch = sources._open_sized, stream.fetch_sample

    def counting_open(url, offset):
        opens.append((url, offset))
        return real_open(url, offset)

    def counting_fetch(url, offset, key=None, expect=None):
        fetches.append((url, offset))
        return real_fetch(url, offset, key, expect)

    monkeypatch.setattr(sources, "_open_sized", counting_open)
    monkeypatch.setattr(stream, "fetch_sample", counting_fetch)
    resumed = ResumableLoader(fake_stream(shard_dir, seed=1, shuffle_buffer=5, shuffle_shards=False))
    resumed.load_state_dict(state)
    assert take(resumed, 3) == want

    # Buffered samples are fetched one by one at their own offsets...
    refs = w["shuffle"] + w["packer_refs"]
    assert sorted(fetches) == sorted((r[1], r[2]) for r in refs)
    # ...and the readers continue exactly where they stopped: no consumed shard, no earlier offset.
    srcs = {s.name: s for s in resumed.stream.sources}
    reads = list(opens)
    for url, offset in fetches:
        reads.remove((url, offset))
    mid_shard = 0
    for name, cur in w["cursors"].items():
        units = plan_units(srcs[name], 1, 0, cur["pass"], 0, 1, False)
        done = {srcs[name].shards[u[1]].url for u in units[: cur["unit"]]}
        assert not done & {url for url, _ in reads}, f"{name}: a consumed shard was read again"
        if cur["unit"] < len(units) and cur["offset"]:
            url = srcs[name].shards[units[cur["unit"]][1]].url
            entered = [off for u, off in reads if u == url]
            assert entered in ([], [cur["offset"]])  # entered once, at the cursor (if read at all)
            mid_shard += bool(entered)
    assert mid_shard, "expected at least one reader resumed in the middle of a shard"


def test_layout_change_is_refused(shard_dir):  # noqa: F811
    a = ResumableLoader(fake_stream(shard_dir))
    take(a, 1)
    b = ResumableLoader(fake_stream(shard_dir, rank=1, world_size=2))
    with pytest.raises(ValueError, match="same layout"):
        b.load_state_dict(a.state_dict())


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_resume_in_the_epoch_tail_with_finished_workers(tmp_path):
    # One epoch per iteration; shards of 16, 16 and 4 samples, one per worker: worker 2 finishes
    # first, then workers 0 and 1 alternate (the DataLoader skips finished workers).
    root = write_shards(tmp_path, {"a": (36, 16, False)})

    def loader():
        s = fake_stream(root, seed=2, stop_at_epoch_end=True, shuffle_shards=False)
        return ResumableLoader(s, num_workers=3)

    ref, states = loader(), []
    full = []
    for b in ref:
        full.append(b)
        states.append(copy.deepcopy(ref.state_dict()))
    workers = [b["stats"]["worker"] for b in full]
    done = max(i for i, w in enumerate(workers) if w == 2)
    assert workers[done + 1 :] == [0, 1] * 3  # plain 3-way round-robin would be wrong here
    for n in range(done, len(full)):
        resumed = loader()
        resumed.load_state_dict(states[n - 1])
        assert list(resumed) == full[n:], n
    nxt = list(ref)  # the next iteration is the next epoch
    assert nxt and {b["stats"]["epoch"] for b in nxt} == {1}
