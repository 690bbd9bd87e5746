"""Shard sources and the streaming reader: URL forms, worker split, mixture, repeat, shuffle, errors.

Also holds the shard-writing helpers that test_resume.py and test_datamodule.py import.
"""

from __future__ import annotations

import collections
import http.server
import json
import logging
from pathlib import Path

import pytest

from internvl_lightning.data.sources import (
    DatasetSource,
    ShardInfo,
    TarSamples,
    expand_urls,
    fetch_sample,
    join_url,
    load_index,
    open_url,
    split_name,
)
from internvl_lightning.data.stream import PackedStream, plan_units
from tests.helpers.http_serve import serve
from tests.helpers.streams import (
    DATASETS,
    IMAGE_SIZE,
    fake_collate,
    fake_encode,
    fake_stream,
    ids_of,
    write_shards,
)

# -- sources ---------------------------------------------------------------------------------


def test_url_forms(tmp_path):
    assert expand_urls("a/shard-{000..002}.tar") == ["a/shard-000.tar", "a/shard-001.tar", "a/shard-002.tar"]
    assert expand_urls(["x-{0..1}.tar::y.tar"]) == ["x-0.tar", "x-1.tar", "y.tar"]
    assert join_url("http://h/data/", "img/shard.tar") == "http://h/data/img/shard.tar"
    assert join_url("/data", "s3://b/x.tar") == "s3://b/x.tar"
    assert split_name("dir/000000001.img0.jpg") == ("dir/000000001", "img0.jpg")
    assert split_name("000000001.json") == ("000000001", "json")


def test_tar_offsets_match_index_and_seek(shard_dir):
    header, srcs = load_index(str(shard_dir))
    assert header["image_size"] == IMAGE_SIZE and [s.name for s in srcs] == list(DATASETS)
    entry = json.loads((shard_dir / "index.json").read_text())["datasets"]["img"]["shards"][1]
    url = srcs[0].shards[1].url
    with TarSamples(url) as it:
        got = [(s.key, s.offset, sorted(s.members)) for s in it]
    assert [(k, o) for k, o, _ in got] == list(zip(entry["keys"], entry["offsets"]))
    assert all(m == ["img0.jpg", "json"] for _, _, m in got)
    third = fetch_sample(url, entry["offsets"][2], entry["keys"][2])
    assert json.loads(third.members["json"])["_meta"]["line"] == 8
    with pytest.raises(ValueError, match="shard changed"):
        fetch_sample(url, entry["offsets"][2], entry["keys"][3])
    # pipe: URLs (and other gopen schemes) are read from the start and skipped forward
    piped = fetch_sample(f"pipe:cat {url}", entry["offsets"][2])
    assert piped.members == third.members


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files with single ``bytes=N-`` ranges (what the reader asks for); quiet."""

    ranged = 0

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        path = Path(self.translate_path(self.path))
        rng = self.headers.get("Range")
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = int(rng.split("=")[1].rstrip("-")) if rng else 0
        type(self).ranged += bool(rng)
        self.send_response(206 if rng else 200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])


@pytest.fixture
def http_root(shard_dir):
    with serve(shard_dir, _RangeHandler) as url:
        yield url


def test_http_index_and_ranged_reads(http_root, shard_dir):
    _, remote = load_index(http_root)
    _, local = load_index(str(shard_dir))
    assert remote[1].shards[2].url == f"{http_root}/text/shard-000002.tar"
    before = _RangeHandler.ranged
    a = [(s.key, s.offset, s.members) for s in TarSamples(remote[0].shards[3].url, 0)]
    b = [(s.key, s.offset, s.members) for s in TarSamples(local[0].shards[3].url, 0)]
    assert a == b
    s = fetch_sample(remote[0].shards[3].url, b[3][1], b[3][0])
    assert s.members == b[3][2] and _RangeHandler.ranged == before + 1
    # a whole stream over http equals the local one
    la, lb = fake_stream(http_root, seed=3), fake_stream(shard_dir, seed=3)
    first = [next(iter(s)) for s in (la, lb)]
    assert first[0]["samples"] == first[1]["samples"]
    with open_url(f"{http_root}/index.json") as f:
        assert json.loads(f.read())["version"] == 1


# -- worker split / plan ---------------------------------------------------------------------


@pytest.mark.parametrize("num_shards,G,repeat", [(5, 3, 1.0), (2, 5, 1.0), (3, 4, 2.0), (4, 3, 0.45)])
def test_plan_covers_every_sample_once(num_shards, G, repeat):
    src = DatasetSource("d", [ShardInfo(f"s{i}", 5) for i in range(num_shards)], repeat_time=repeat)
    seen = collections.Counter()
    for g in range(G):
        for copy, shard, stop, stride, phase in plan_units(src, 0, 0, 0, g, G, True):
            seen.update((copy, shard, i) for i in range(stop) if i % stride == phase)
    if repeat < 1:  # the first int(n * r) samples, in shard order
        assert sorted(seen) == [(0, i // 5, i % 5) for i in range(int(5 * num_shards * repeat))]
    else:
        want = {(c, s, i) for c in range(int(repeat)) for s in range(num_shards) for i in range(5)}
        assert set(seen) == want
    assert set(seen.values()) == {1}


def test_epoch_covers_all_samples_across_ranks_and_workers(shard_dir):
    # 2 ranks x 2 workers = 4 global workers; "small" has 1 shard (more workers than shards).
    got = []
    for rank in range(2):
        stream = fake_stream(shard_dir, rank=rank, world_size=2, stop_at_epoch_end=True, shuffle_buffer=4)
        for w in range(2):
            got += ids_of(stream.worker(w, 2).run())
    want = [(n, f"{i:09d}") for n, (count, _, _) in DATASETS.items() for i in range(1, count + 1)]
    assert sorted(got) == sorted(want)


def test_seeded_and_reshuffled_every_epoch(shard_dir):
    def epochs(seed):
        w = fake_stream(shard_dir, seed=seed, shuffle_buffer=8).worker()
        out, it = collections.defaultdict(list), w.run()
        while len(out) < 3:
            b = next(it)
            out[b["stats"]["epoch"]].extend(ids_of([b]))
        return out

    a, b, c = epochs(1), epochs(1), epochs(2)
    assert a[0] == b[0] and a[1] == b[1]
    assert sorted(a[0]) == sorted(a[1]) and a[0] != a[1] and a[0] != c[0]


def test_mixture_weights(shard_dir):
    stream = fake_stream(shard_dir)
    assert stream.weights == pytest.approx([30 / 56, 20 / 56, 6 / 56])
    assert fake_stream(shard_dir, sqrt_weights=True).weights[2] == pytest.approx(
        6**0.5 / sum(n**0.5 for n in (30, 20, 6))
    )
    srcs = load_index(str(shard_dir))[1]
    for s, w in zip(srcs, (1.0, 0.0, 3.0)):
        s.weight = w
    worker = PackedStream(srcs, fake_encode, fake_collate, replacement=True, shuffle_buffer=1).worker()
    drawn = collections.Counter(worker._read_mixed()[1][0] for _ in range(200))
    assert drawn["text"] == 0 and 120 < drawn["small"] < 180


def test_repeat_time_and_replacement(shard_dir):
    srcs = load_index(str(shard_dir))[1]
    srcs[0].repeat_time, srcs[1].repeat_time = 0.5, 2.0
    s = PackedStream(
        srcs, fake_encode, fake_collate, stop_at_epoch_end=True, packing={"max_packed_tokens": 160}
    )
    counts = collections.Counter(ids_of(s.worker().run()))
    assert sorted(k for d, k in counts if d == "img") == [f"{i:09d}" for i in range(1, 16)]
    assert {n for (d, _), n in counts.items() if d == "text"} == {2} and len(counts) == 15 + 20 + 6
    # replacement: exhausted datasets restart (next pass), the stream keeps going
    w = fake_stream(shard_dir, replacement=True, shuffle_buffer=1).worker()
    for _ in range(120):
        w._read_mixed()
    assert w.epoch == 0 and min(c.pass_ for c in w.cursors) >= 1


def test_encode_errors_are_skipped_counted_and_logged(tmp_path, caplog):
    root = write_shards(tmp_path, {"img": (12, 4, True)}, bad=frozenset({("img", 3), ("img", 7)}))
    with caplog.at_level(logging.WARNING, logger="internvl_lightning.data.stream"):
        w = fake_stream(root, stop_at_epoch_end=True).worker()
        got = ids_of(w.run())
    assert sorted(got) == [("img", f"{i:09d}") for i in range(1, 13) if i not in (3, 7)]
    assert w.stats["errors"] == 2 and {e["key"] for e in w.stats["last_errors"]} == {"000000003", "000000007"}
    assert "img:000000003" in caplog.text and "truncated image" in caplog.text
    state = w.state()
    assert state["stats"]["errors"] == 2  # travels with the resume state


def test_missing_shard_is_skipped_loudly(tmp_path):
    root = write_shards(tmp_path, {"img": (12, 4, True)})
    stream = fake_stream(root, stop_at_epoch_end=True, shuffle_shards=False)
    (root / "img" / "shard-000001.tar").unlink()  # gone after start-up: skipped while streaming
    w = stream.worker()
    assert len(ids_of(w.run())) == 8 and w.stats["shard_errors"] == 1
    # gone before start-up: left out of the source (and of its mixture weight), with the reason
    src = load_index(str(root))[1][0]
    assert [s.url for s in src.shards] == [str(root / f"img/shard-00000{i}.tar") for i in (0, 2)]
    assert (
        src.num_samples == 8
        and len(src.skipped) == 1
        and "shard-000001.tar: cannot be read" in src.skipped[0]
    )
