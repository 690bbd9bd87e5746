"""Fault injection on the data side: each test breaks one thing and asserts the exact outcome.

Classes: index paths that would execute or escape (1), streams that cannot produce a batch (2),
corrupted / truncated / replaced shards (local or over http) and lying indexes (3), resume on
changed data, also a sample changed in place while it waited in a saved state (4),
oversized media (5), meta-file mistakes (6), skip counts and rate-limited warnings (7).
Tiny shards, fake encoder (sizes from each record's ``_meta``), CPU, seconds.
"""

from __future__ import annotations

import http.server
import json
import logging
import os
import re
import shutil
import threading
from dataclasses import asdict
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from internvl_lightning.data.datamodule import InternVLDataModule, PackingConfig
from internvl_lightning.data.encode import EncodeConfig
from internvl_lightning.data.image import MediaTooLarge, load_image
from internvl_lightning.data.meta import load_meta
from internvl_lightning.data.shard_check import IMAGE_TOO_LARGE, VIDEO_TOO_LARGE, Rejected, check_sample
from internvl_lightning.data.shard_write import TarShards
from internvl_lightning.data.sources import load_index
from internvl_lightning.data.stream import DataChanged, NoBatches, PackedStream, ResumableLoader
from internvl_lightning.data.verify import UnsafeIndexPath
from internvl_lightning.data.video import VideoLimits, read_video
from internvl_lightning.tokenizer import tokenizer_info
from internvl_lightning.training.data_report import DataReport
from tests.helpers.datagen import image_bytes, video_bytes
from tests.helpers.http_serve import serve
from tests.helpers.streams import (
    IMAGE_SIZE,
    TOKENS_PER_TILE,
    fake_collate,
    fake_encode,
    ids_of,
    take,
    write_shards,
)

PACKING = {"max_packed_tokens": 160, "num_images_expected": 8, "max_buffer_size": 3}


def write_v3(root: Path, datasets: dict[str, tuple[int, int]] | None = None) -> Path:
    """Shards through the shard tool's writer (sizes, SHA-256, per-sample CRC32) + a version-3 index."""
    datasets = datasets or {"img": (12, 4), "text": (8, 4)}
    index: dict = {"version": 3, "template": "internvl2_5", "datasets": {}}
    for name, (n, per) in datasets.items():
        members_bytes = 512 * 2 + 512 * 3  # json + one small image per sample, in tar blocks
        writer = TarShards(root, name, per * members_bytes + 1024)
        for line in range(1, n + 1):
            record = {
                "id": f"{name}-{line}",
                "_meta": {"num_tokens": 20 + line, "num_tiles": 1, "line": line},
            }
            members = [("json", json.dumps(record).encode()), ("img0.jpg", bytes([line]) * 1000)]
            writer.add(f"{line:09d}", members, 20 + line, 1)
        shards = writer.close()
        assert [s["num_samples"] for s in shards] == [per] * (n // per)
        index["datasets"][name] = {"repeat_time": 1, "num_samples": n, "shards": shards}
    (root / "index.json").write_text(json.dumps(index))
    return root


def stream(root: Path, **kw) -> PackedStream:
    kw.setdefault("packing", PACKING)
    return PackedStream(load_index(str(root))[1], fake_encode, fake_collate, **kw)


def within(seconds: float, fn):
    """``fn()``'s result or exception, failing the test if it does not finish in ``seconds``."""
    box: dict = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"still running after {seconds} s (a hang)"
    return box


# -- 1. nothing in a shard directory executes or escapes -----------------------------------------


@pytest.mark.parametrize(
    "field, value, why",
    [
        ("path", "pipe:touch {payload}; cat img/shard-000000.tar", "URL scheme"),
        ("samples", "pipe:touch {payload}", "URL scheme"),
        ("path", "http://example.invalid/shard.tar", "URL scheme"),
        ("path", "{elsewhere}/shard-000000.tar", "absolute path"),
        ("path", "../elsewhere/shard-000000.tar", "climbs out"),
        ("path", "link/shard-000000.tar", "through a symlink"),
    ],
)
def test_index_paths_are_confined_to_their_directory(tmp_path, field, value, why):
    root = write_v3(tmp_path / "shards")
    payload, elsewhere = tmp_path / "pwned", tmp_path / "elsewhere"
    shutil.copytree(root / "img", elsewhere)
    os.symlink(elsewhere, root / "link")
    index = json.loads((root / "index.json").read_text())
    entry = value.format(payload=payload, elsewhere=elsewhere)
    index["datasets"]["img"]["shards"][0][field] = entry
    (root / "index.json").write_text(json.dumps(index))
    with pytest.raises(UnsafeIndexPath) as err:
        stream(root, stop_at_epoch_end=True)
    assert not payload.exists()
    assert str(err.value).startswith(f"{root / 'index.json'}: entry {entry!r} ") and why in str(err.value)
    assert "pipe:/http sources can only be given on the command line or in Python" in str(err.value)


def test_pipe_sources_given_directly_still_work(tmp_path):
    root = write_v3(tmp_path)
    shard = root / "img" / "shard-000000.tar"
    src = load_index(str(root))[1][0]
    src.shards = [type(src.shards[0])(f"pipe:cat {shard}")]  # the caller's own URL: allowed
    src.weight = 1.0
    got = ids_of(
        PackedStream([src], fake_encode, fake_collate, PACKING, stop_at_epoch_end=True).worker().run()
    )
    assert sorted(got) == [("img", f"{i:09d}") for i in range(1, 5)]


# -- 2. no hangs: one clear error, within seconds ------------------------------------------------


def test_every_shard_missing_after_start_up_stops_the_endless_stream(tmp_path):
    root = write_v3(tmp_path, {"img": (12, 4)})
    s = stream(root)
    for p in (root / "img").glob("*.tar"):
        p.unlink()
    box = within(10, lambda: take(s.worker().run(), 1))
    assert isinstance(box.get("error"), NoBatches)
    msg = str(box["error"])
    assert "cannot produce a batch (worker 0 of 1, data epoch 0): every shard failed (3 skipped)" in msg
    assert "this epoch read 0 samples" in msg and "No such file or directory" in msg


def test_every_shard_missing_at_start_up_is_an_error(tmp_path):
    root = write_v3(tmp_path, {"img": (12, 4)})
    for p in (root / "img").glob("*.tar"):
        p.unlink()
    with pytest.raises(FileNotFoundError, match=r"dataset 'img': none of its 3 shards can be read"):
        load_index(str(root))


def test_every_sample_failing_stops_through_a_worker_process(tmp_path):
    root = write_shards(tmp_path, {"img": (8, 4, True)}, bad=frozenset(("img", i) for i in range(1, 9)))
    loader = ResumableLoader(stream(root), num_workers=1)
    box = within(60, lambda: take(loader, 1))
    assert "every sample failed (8 skipped, 8 read)" in str(box.get("error"))
    assert "encode_error 8" in str(box["error"]) and "truncated image" in str(box["error"])


def test_every_sample_over_the_token_budget(tmp_path):
    root = write_v3(tmp_path, {"img": (8, 4)})
    tiny = {**PACKING, "max_packed_tokens": 10}  # every sample has 21..28 tokens
    box = within(10, lambda: take(stream(root, packing=tiny).worker().run(), 1))
    assert "every sample failed (8 skipped, 8 read)" in str(box.get("error"))
    assert "over_token_budget 8" in str(box["error"])


def test_replacement_with_every_sample_failing_is_bounded(tmp_path):
    root = write_shards(tmp_path, {"img": (4, 4, True)}, bad=frozenset(("img", i) for i in range(1, 5)))
    s = stream(root, replacement=True, max_skips_without_batch=50)
    box = within(20, lambda: take(s.worker().run(), 1))
    assert "50 samples in a row were skipped" in str(box.get("error"))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"template": "internvl9"}, "--data.template: unknown chat template 'internvl9'"),
        ({"packing": PackingConfig(max_packed_tokens=0)}, "--data.packing: max_packed_tokens"),
        (
            {"packing": PackingConfig(max_packed_tokens=100)},
            "dataset 'img': every sample is over the token budget",
        ),
        (
            {"packing": PackingConfig(num_images_expected=0)},
            "dataset 'img': every sample is over the tile budget",
        ),
    ],
)
def test_settings_that_fail_every_sample_are_refused_at_setup(tmp_path, vlm_tokenizer, kwargs, message):
    root = write_v3(tmp_path, {"img": (4, 4)})
    index = json.loads((root / "index.json").read_text())
    for shard in index["datasets"]["img"]["shards"]:  # as the shard tool counts them
        shard["min_tokens"], shard["min_tiles"] = 300, 1
    index["tokenizer"] = tokenizer_info(vlm_tokenizer)  # counted as this run counts
    index["encode"] = asdict(EncodeConfig(tokens_per_tile=16))
    (root / "index.json").write_text(json.dumps(index))
    dm = InternVLDataModule(
        shards=str(root), tokenizer=vlm_tokenizer, num_workers=0, tokens_per_tile=16, **kwargs
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        dm.setup()


def test_budget_check_needs_counts_made_like_this_runs(tmp_path, vlm_tokenizer):
    root = write_v3(tmp_path, {"img": (4, 4)})
    index = json.loads((root / "index.json").read_text())
    for shard in index["datasets"]["img"]["shards"]:
        shard["min_tokens"], shard["min_tiles"] = 300, 1
    index["tokenizer"] = tokenizer_info(vlm_tokenizer)
    index["encode"] = asdict(EncodeConfig(tokens_per_tile=64))  # counted with 64 tokens per tile
    (root / "index.json").write_text(json.dumps(index))
    packing = PackingConfig(max_packed_tokens=100)
    dm = InternVLDataModule(shards=str(root), tokenizer=vlm_tokenizer, tokens_per_tile=16, packing=packing)
    dm.setup()  # no verdict from counts made otherwise: the stream itself would say so
    assert dm._train_sources is not None


def test_empty_mixture_is_refused_at_setup(tmp_path, vlm_tokenizer):
    (tmp_path / "index.json").write_text(
        json.dumps({"version": 3, "datasets": {"a": {"num_samples": 0, "shards": []}}})
    )
    dm = InternVLDataModule(shards=str(tmp_path), tokenizer=vlm_tokenizer, num_workers=0)
    with pytest.raises(ValueError, match=r"empty mixture: datasets \['a'\] hold no samples"):
        dm.setup()


# -- 3. shard integrity ----------------------------------------------------------------------------


def _corrupt(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def test_member_corrupted_in_place_skips_that_sample_only(tmp_path):
    root = write_v3(tmp_path, {"img": (8, 4)})
    offset = json.loads((root / "img" / "shard-000000.samples.json").read_text())["offsets"][2]
    _corrupt(root / "img" / "shard-000000.tar", offset + 512 * 3 + 10)  # sample 3's image bytes
    w = stream(root, stop_at_epoch_end=True).worker()
    got = sorted(ids_of(w.run()))
    assert got == [("img", f"{i:09d}") for i in range(1, 9) if i != 3]
    assert w.stats["skipped"] == {"checksum": 1} and w.stats["shard_errors"] == 0
    err = w.stats["last_errors"][-1]
    assert (
        err["key"] == "000000003" and err["reason"] == "checksum" and err["url"].endswith("shard-000000.tar")
    )
    assert f"sample '000000003' (byte {offset}) fails its checksum" in err["error"]


def test_verification_can_be_turned_off(tmp_path):
    root = write_v3(tmp_path, {"img": (8, 4)})
    sidecar = json.loads((root / "img" / "shard-000000.samples.json").read_text())
    _corrupt(root / "img" / "shard-000000.tar", sidecar["offsets"][2] + 512 * 3 + 10)
    w = stream(root, stop_at_epoch_end=True, verify=False).worker()
    assert len(ids_of(w.run())) == 8 and w.stats["errors"] == 0


def _cut_after(path: Path, samples: int, offsets: list[int]) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: offsets[samples]] + b"\0" * 1024)  # a valid tar end at a sample boundary


@pytest.mark.parametrize("when", ["before start-up", "after start-up"])
def test_shard_truncated_at_a_sample_boundary(tmp_path, when):
    root = write_v3(tmp_path, {"img": (8, 4)})
    shard = root / "img" / "shard-000001.tar"
    offsets = json.loads((root / "img" / "shard-000001.samples.json").read_text())["offsets"]
    if when == "before start-up":
        _cut_after(shard, 2, offsets)
        s = stream(root, stop_at_epoch_end=True)
        assert (
            s.sources[0].num_samples == 4 and "index.json says" in s.sources[0].skipped[0]
        )  # weight: 4 left
        assert sorted(ids_of(s.worker().run())) == [("img", f"{i:09d}") for i in range(1, 5)]
        return
    s = stream(root, stop_at_epoch_end=True, shuffle_shards=False)
    _cut_after(shard, 2, offsets)
    w = s.worker()
    assert sorted(ids_of(w.run())) == [("img", f"{i:09d}") for i in range(1, 5)]
    size = (root / "img" / "shard-000000.tar").stat().st_size
    assert w.stats[
        "shard_errors"
    ] == 1 and f"shard is {offsets[2] + 1024} bytes, index.json says {size}" in str(w.stats["last_errors"])


def test_shard_replaced_by_another_of_the_same_size(tmp_path):
    root = write_v3(tmp_path, {"img": (8, 4)})
    s = stream(root, stop_at_epoch_end=True, shuffle_shards=False)
    shutil.copy(root / "img" / "shard-000001.tar", root / "img" / "shard-000000.tar")
    w = s.worker()
    assert sorted(ids_of(w.run())) == [("img", f"{i:09d}") for i in range(5, 9)]
    assert w.stats["shard_errors"] == 1
    assert "shard-000000.tar: sample '000000005' at byte 0, index.json has sample '000000001' there" in str(
        w.stats["last_errors"]
    )


class _QuietFiles(http.server.SimpleHTTPRequestHandler):
    """Serves a directory with a Content-Length per file; logs nothing."""

    def log_message(self, *args) -> None:
        pass


class _NoLength(_QuietFiles):
    """Serves files without announcing their length: the body ends when the connection closes."""

    def do_GET(self) -> None:
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        self.send_response(200)
        self.end_headers()
        self.wfile.write(path.read_bytes())


@pytest.mark.parametrize("handler", [_QuietFiles, _NoLength], ids=["length announced", "no length"])
def test_remote_shard_of_another_size_is_skipped_and_named(tmp_path, handler):
    root = write_v3(tmp_path, {"img": (8, 4)})
    shard = root / "img" / "shard-000001.tar"
    data = shard.read_bytes()
    cut = -(-len(data.rstrip(b"\0")) // 512) * 512 + 1024  # every sample and the tar end stay; padding goes
    shard.write_bytes(data[:cut])
    with serve(root, handler) as url:
        w = stream(url, stop_at_epoch_end=True, shuffle_shards=False).worker()
        got = sorted(ids_of(w.run()))
    # An announced length is checked on opening; otherwise the bytes read tell at the shard's end.
    last = 4 if handler is _QuietFiles else 8
    assert got == [("img", f"{i:09d}") for i in range(1, last + 1)]
    assert w.stats["shard_errors"] == 1 and w.stats["errors"] == 0
    err = w.stats["last_errors"][-1]
    assert err["kind"] == "shard" and err["url"] == f"{url}/img/shard-000001.tar"
    assert f"{url}/img/shard-000001.tar: shard is {cut} bytes, index.json says {len(data)}" in err["error"]


def test_index_count_disagreeing_with_its_shard(tmp_path):
    root = write_v3(tmp_path, {"img": (8, 4)})
    index = json.loads((root / "index.json").read_text())
    index["datasets"]["img"]["shards"][1]["num_samples"] = 6  # inflates the dataset's mixture weight
    (root / "index.json").write_text(json.dumps(index))
    w = stream(root, stop_at_epoch_end=True).worker()
    assert sorted(ids_of(w.run())) == [("img", f"{i:09d}") for i in range(1, 5)]
    assert w.stats["shard_errors"] == 1
    assert "index.json counts 6 samples, its sample list has 4 keys" in str(w.stats["last_errors"])


def test_old_index_is_read_with_a_note(tmp_path, caplog):
    root = write_shards(tmp_path, {"img": (8, 4, True)})  # index version 1: no sizes, no CRCs
    with caplog.at_level(logging.WARNING):
        w = stream(root, stop_at_epoch_end=True).worker()
        assert len(ids_of(w.run())) == 8
    assert "index version 1 carries no shard sizes or sample checksums" in caplog.text


def test_shards_of_another_tokenizer_get_a_warning(tmp_path, vlm_tokenizer, caplog):
    root = write_v3(tmp_path, {"img": (4, 4)})
    index = json.loads((root / "index.json").read_text())
    index["tokenizer"] = {"name": "other-llm", "vocab_size": 10, "sha256": "deadbeefdeadbeef"}
    (root / "index.json").write_text(json.dumps(index))
    with caplog.at_level(logging.WARNING, logger="internvl_lightning.data.datamodule"):
        InternVLDataModule(shards=str(root), tokenizer=vlm_tokenizer, num_workers=0).setup()
    assert (
        "shards were counted with tokenizer other-llm (vocabulary hash deadbeefdeadbeef), this run uses"
        in caplog.text
    )
    assert "samples are tokenized again at train time" in caplog.text


def test_shard_tool_records_sizes_and_checksums(tmp_path):
    root = write_v3(tmp_path, {"img": (4, 4)})
    entry = json.loads((root / "index.json").read_text())["datasets"]["img"]["shards"][0]
    assert entry["size"] == (root / "img" / "shard-000000.tar").stat().st_size and len(entry["sha256"]) == 64
    assert (entry["min_tokens"], entry["min_tiles"]) == (21, 1)
    sidecar = json.loads((root / "img" / "shard-000000.samples.json").read_text())
    assert len(sidecar["crc32"]) == 4 and len(set(sidecar["crc32"])) == 4


# -- 4. resume refuses what it cannot honour --------------------------------------------------------


def _saved(root: Path, n: int = 3) -> dict:
    loader = ResumableLoader(stream(root, seed=1))
    take(loader, n)
    return loader.state_dict()


@pytest.mark.parametrize(
    "change, part",
    [
        ({"packing": {**PACKING, "max_packed_tokens": 200}}, "packing"),
        ({"seed": 2}, "order"),
        ({"settings": {"template": "internlm2-chat"}}, "encoding"),
        ({"weights": True}, "mixture"),
        ({"reshard": True}, "shards"),
    ],
)
def test_resume_on_a_changed_stream_is_refused_unless_allowed(tmp_path, caplog, change, part):
    root = write_v3(tmp_path, {"img": (12, 4), "text": (8, 4)})
    state = _saved(root)
    if change.pop("reshard", False):
        shutil.rmtree(root / "img")
        write_v3(root, {"img": (12, 6), "text": (8, 4)})  # same samples, other shard boundaries
    kw = {"seed": 1, **change}
    if kw.pop("weights", False):
        srcs = load_index(str(root))[1]
        srcs[0].weight, srcs[1].weight = 1.0, 3.0
        new = PackedStream(srcs, fake_encode, fake_collate, PACKING, seed=1)
    else:
        new = stream(root, **kw)
    with pytest.raises(DataChanged, match=rf"\({part} changed: ") as err:
        ResumableLoader(new).load_state_dict(state)
    assert "allow_data_restart=True (--data.allow_data_restart=true)" in str(err.value)
    restarted = ResumableLoader(new, allow_restart=True)
    with caplog.at_level(logging.WARNING):
        restarted.load_state_dict(state)
    assert f"the data changed since the checkpoint ({part})" in caplog.text
    fresh = ResumableLoader(new)
    assert ids_of(take(restarted, 2)) == ids_of(take(fresh, 2))  # a restart, never a stale offset


def test_same_stream_resumes(tmp_path):
    root = write_v3(tmp_path)
    full = take(ResumableLoader(stream(root, seed=1)), 5)
    again = ResumableLoader(stream(root, seed=1))
    again.load_state_dict(_saved(root))
    assert ids_of(take(again, 2)) == ids_of(full[3:])


@pytest.mark.parametrize("held_in", ["shuffle", "packer_refs"])
def test_sample_changed_in_place_while_in_a_saved_state_is_skipped_on_resume(tmp_path, caplog, held_in):
    root = write_v3(tmp_path, {"img": (12, 4), "text": (8, 4)})

    def loader() -> ResumableLoader:
        return ResumableLoader(stream(root, seed=1, stop_at_epoch_end=True))

    epoch = list(loader())
    saved = loader()
    take(saved, 1)
    state = saved.state_dict()
    dataset, url, offset, key = state["workers"]["0"][held_in][0][:4]  # read, not yet in a batch
    rest = ids_of(epoch[1:])
    assert (dataset, key) in rest
    _corrupt(Path(url), offset + 512 * 3 + 10)  # its image bytes: same size, other content

    resumed = loader()
    resumed.load_state_dict(state)
    with caplog.at_level(logging.WARNING, logger="internvl_lightning.data.stream"):
        got = ids_of(resumed)
    assert sorted(got) == sorted(i for i in rest if i != (dataset, key))  # the stream goes on without it
    stats = resumed.worker_stats()[0]
    assert stats["skipped"] == {"checksum": 1} and stats["shard_errors"] == 0
    err = stats["last_errors"][-1]
    assert (err["reason"], err["url"], err["key"], err["offset"]) == ("checksum", url, key, offset)
    assert f"sample {key!r} (byte {offset}) fails its checksum" in err["error"]
    assert f"skipping sample {dataset}:{key} ({url} @ byte {offset}): CorruptSample: " in caplog.text


def test_datamodule_passes_the_restart_flag(tmp_path, vlm_tokenizer):
    root = write_v3(tmp_path, {"img": (4, 4)})
    dm = InternVLDataModule(shards=str(root), tokenizer=vlm_tokenizer, num_workers=0, allow_data_restart=True)
    dm.train_dataloader()
    assert dm._train is not None and dm._train.allow_restart is True


# -- 5. untrusted media ------------------------------------------------------------------------------


def test_image_over_the_pixel_limit_is_refused_before_decoding():
    truncated = image_bytes(200, 100, "RGB", "PNG", 1)[:200]  # the header survives, the pixels do not
    with pytest.raises(
        MediaTooLarge, match=r"x: image is 200x100 = 0\.02 Mpixel, above the limit of 0\.01 Mpixel"
    ):
        load_image(truncated, "x", max_pixels=10_000)
    with pytest.raises(ValueError, match="cannot decode image"):  # within the limit: decoding fails
        load_image(truncated, "x", max_pixels=30_000)


def test_media_limits_at_shard_time(tmp_path, vlm_tokenizer):
    (tmp_path / "big.png").write_bytes(image_bytes(200, 100, "RGB", "PNG", 1))
    (tmp_path / "clip.mp4").write_bytes(video_bytes(12))
    turns = [{"from": "human", "value": "<image>\nHi"}, {"from": "gpt", "value": "Hello."}]
    cfg = EncodeConfig(image_size=64, tokens_per_tile=16, max_image_pixels=10_000)
    with pytest.raises(Rejected) as err:
        check_sample(
            {"id": "b", "image": "big.png", "conversations": turns}, str(tmp_path), cfg, vlm_tokenizer, "d:1"
        )
    assert err.value.code == IMAGE_TOO_LARGE and "200x100" in err.value.reason
    vturns = [{"from": "human", "value": "<video>\nHi"}, {"from": "gpt", "value": "Hello."}]
    cfg = EncodeConfig(image_size=64, tokens_per_tile=16, max_video_frames=5)
    with pytest.raises(Rejected) as err:
        check_sample(
            {"id": "v", "video": "clip.mp4", "conversations": vturns},
            str(tmp_path),
            cfg,
            vlm_tokenizer,
            "d:2",
        )
    assert (
        err.value.code == VIDEO_TOO_LARGE and "declares 12 frames, above the limit of 5" in err.value.reason
    )


def test_video_limits_at_train_time():
    clip = video_bytes(12, 64, 48)
    with pytest.raises(MediaTooLarge, match="video declares 12 frames, above the limit of 5"):
        read_video(clip, (4, 4), where="v", limits=VideoLimits(max_frames=5))
    with pytest.raises(MediaTooLarge, match="video frame is 64x48"):
        read_video(clip, (4, 4), where="v", limits=VideoLimits(max_pixels=1000))
    assert len(read_video(clip, (4, 4), where="v", limits=VideoLimits())) == 4


# -- 6. meta files --------------------------------------------------------------------------------------


def test_same_annotation_under_two_names_is_warned(tmp_path, caplog):
    (tmp_path / "a.jsonl").write_text("")
    meta = {"one": {"root": "", "annotation": "a.jsonl"}, "two": {"root": "", "annotation": "./a.jsonl"}}
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    with caplog.at_level(logging.WARNING):
        load_meta(tmp_path / "meta.json")
    assert "datasets 'one' and 'two' have the same 'annotation'" in caplog.text


@pytest.mark.parametrize("value", [0, -1, "2"])
def test_index_repeat_time_edited_to_nonsense(tmp_path, value):
    root = write_v3(tmp_path, {"img": (4, 4)})
    index = json.loads((root / "index.json").read_text())
    index["datasets"]["img"]["repeat_time"] = value
    (root / "index.json").write_text(json.dumps(index))
    with pytest.raises(
        ValueError, match=rf"dataset 'img': field 'repeat_time': must be a number > 0, got {value!r}"
    ):
        load_index(str(root))


def test_shard_listed_twice_in_an_index(tmp_path):
    root = write_v3(tmp_path, {"img": (8, 4)})
    index = json.loads((root / "index.json").read_text())
    shards = index["datasets"]["img"]["shards"]
    shards[1] = shards[0]
    (root / "index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"dataset 'img': shard .*shard-000000\.tar is listed twice"):
        load_index(str(root))


# -- 7. counts and rate-limited warnings ------------------------------------------------------------


def test_skips_are_counted_by_reason_and_warnings_rate_limited(tmp_path, caplog):
    bad = frozenset(("img", i) for i in range(1, 41) if i % 4)  # 30 broken of 40
    root = write_shards(tmp_path, {"img": (40, 10, True)}, bad=bad)
    with caplog.at_level(logging.WARNING, logger="internvl_lightning.data.stream"):
        w = stream(root, stop_at_epoch_end=True).worker()
        assert len(ids_of(w.run())) == 10
    assert w.stats["skipped"] == {"encode_error": 30} and w.stats["errors"] == 30
    lines = [r for r in caplog.records if "skipping sample" in r.getMessage()]
    assert len(lines) == 3 + 3  # the first three, then the 4th, 8th and 16th
    assert "[16 encode_error so far; not every one is logged]" in lines[-1].getMessage()


class _Tiny(pl.LightningModule):
    """A model that ignores the batch contents: the run exists to drive the data callback."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx):
        return (self.w - 1).pow(2).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_data_report_logs_skips_and_prints_one_line_per_epoch_and_fit(tmp_path, vlm_tokenizer, capsys):
    root = write_shards(tmp_path, {"img": (12, 4, True)}, bad=frozenset({("img", 1), ("img", 2)}))
    dm = InternVLDataModule(
        shards=str(root), tokenizer=vlm_tokenizer, num_workers=0, epochs=1, shuffle_shards=False, shuffle_buffer=1,
        image_size=IMAGE_SIZE, tokens_per_tile=TOKENS_PER_TILE, max_dynamic_patch=4,
        packing=PackingConfig(max_packed_tokens=512, num_images_expected=8, max_buffer_size=1),
    )  # fmt: skip
    trainer = pl.Trainer(
        max_epochs=1, accelerator="cpu", logger=False, log_every_n_steps=1, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[DataReport()],
    )  # fmt: skip
    trainer.fit(_Tiny(), dm)
    assert trainer.logged_metrics["data/skipped/encode_error"] == 2
    assert (
        trainer.logged_metrics["data/skipped_samples"] == 2
        and trainer.logged_metrics["data/skipped_shards"] == 0
    )
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("WARNING: data, ")]
    tail = ": 12 samples read, 2 skipped (encode_error 2), 0 shards skipped while streaming"
    assert lines == [f"WARNING: data, epoch 0{tail}", f"WARNING: data, whole run{tail}"]
