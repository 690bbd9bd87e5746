"""The sample encoder: tiles, image token runs, labels, video frames, exact counts, determinism."""

from __future__ import annotations

import json
import random
from dataclasses import replace

import pytest
import torch

from internvl_lightning.constants import IGNORE_INDEX, IMG_CONTEXT_TOKEN, IMG_END_TOKEN, IMG_START_TOKEN
from internvl_lightning.data.encode import EncodeConfig, count_sample, encode_sample, image_size_of
from internvl_lightning.data.image import load_image, normalize_tiles
from internvl_lightning.data.schema import SampleTooLong
from internvl_lightning.data.tiling import pixel_values, tile_grid
from internvl_lightning.model.components import build_tokenizer
from internvl_lightning.tokenizer import add_vlm_tokens
from tests.helpers.datagen import write_dataset

S, TPT = 64, 16
CFG = EncodeConfig(image_size=S, tokens_per_tile=TPT, min_num_frames=2, max_num_frames=4, max_length=2048)


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    t = build_tokenizer(tmp_path_factory.mktemp("tok"), "qwen2")
    add_vlm_tokens(t)
    return t


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("ds"))


def load(data, dataset: str, line: int) -> tuple[dict, dict[str, bytes]]:
    """A record and its media, keyed as the shard members are (``img0``, ``video``)."""
    record = json.loads((data.root / f"{dataset}.jsonl").read_text().splitlines()[line - 1])
    images = record.get("image") or []
    images = [images] if isinstance(images, str) else images
    media = {f"img{i}": (data.root / dataset / p).read_bytes() for i, p in enumerate(images)}
    if record.get("video"):
        media["video.mp4"] = (data.root / dataset / record["video"]).read_bytes()
    return record, media


def runs(ids: torch.Tensor, tok) -> list[int]:
    """Lengths of the <IMG_CONTEXT> runs, each checked to sit between <img> and </img>."""
    ctx, start, end = tok.convert_tokens_to_ids([IMG_CONTEXT_TOKEN, IMG_START_TOKEN, IMG_END_TOKEN])
    ids = ids.tolist()
    out, i = [], 0
    while i < len(ids):
        if ids[i] == ctx:
            j = i
            while j < len(ids) and ids[j] == ctx:
                j += 1
            assert ids[i - 1] == start and ids[j] == end
            out.append(j - i)
            i = j
        else:
            i += 1
    assert ids.count(start) == ids.count(end) == len(out)
    return out


def check_common(s, n_tiles: int) -> None:
    assert s.pixel_values.shape == (n_tiles, S, S, 3) and s.pixel_values.dtype == torch.uint8
    assert s.image_flags.tolist() == [1] * n_tiles
    assert s.input_ids.shape == s.labels.shape
    trained = s.labels != IGNORE_INDEX
    assert trained.any() and torch.equal(s.labels[trained], s.input_ids[trained])


@pytest.mark.parametrize("line", range(1, 7))
def test_single_image_tiles_and_tokens(data, tok, line):
    record, media = load(data, "single", line)
    s = encode_sample(record, media, CFG, tok, random.Random(0), "single")
    w, h = image_size_of(media["img0"])
    n = tile_grid(w, h, 1, CFG.max_dynamic_patch, S, True)[2]
    check_common(s, n)
    assert runs(s.input_ids, tok) == [TPT * n]  # also when the record had no <image> (auto-inserted)
    # The uint8 tiles, once normalised, are exactly the public tiling's float tiles.
    want = pixel_values(load_image(media["img0"]), 1, CFG.max_dynamic_patch, S, True, CFG.normalization)
    assert torch.equal(torch.from_numpy(normalize_tiles(s.pixel_values.numpy(), s.normalization)), want)
    assert s.id == record["id"] and s.dataset == "single"
    assert (s.labels[s.input_ids == tok.convert_tokens_to_ids(IMG_CONTEXT_TOKEN)] == IGNORE_INDEX).all()


@pytest.mark.parametrize("max_patch", [12, 4])
def test_multi_image_splits_the_tile_budget(data, tok, max_patch):
    cfg = replace(CFG, max_dynamic_patch=max_patch)
    for line in data.good_lines("multi"):
        record, media = load(data, "multi", line)
        s = encode_sample(record, media, cfg, tok, random.Random(0), "multi")
        per_image = max(1, max_patch // len(record["image"]))
        tiles = [
            tile_grid(*image_size_of(media[f"img{i}"]), 1, per_image, S, True)[2] for i in range(len(media))
        ]
        check_common(s, sum(tiles))
        assert runs(s.input_ids, tok) == [TPT * t for t in tiles]


def test_video_one_tile_per_frame_and_frame_prompt(data, tok):
    record, media = load(data, "video", 1)
    s = encode_sample(record, media, CFG, tok, random.Random(3), "video")
    n = s.num_tiles
    assert CFG.min_num_frames <= n <= CFG.max_num_frames
    check_common(s, n)
    assert runs(s.input_ids, tok) == [TPT] * n
    text = tok.decode(s.input_ids, skip_special_tokens=False)
    assert "<video>" not in text
    prompt = "".join(f"Frame-{i}: {IMG_START_TOKEN}" for i in range(1, n + 1))
    assert prompt in text.replace(IMG_CONTEXT_TOKEN, "").replace(f"{IMG_END_TOKEN}\n", "")
    assert "What moves?" in text
    record2, media2 = load(data, "video", 2)  # no <video> in the record: inserted first
    text2 = tok.decode(encode_sample(record2, media2, CFG, tok, random.Random(3), "video").input_ids)
    assert text2.index("Frame-1:") < text2.index("Describe the video.")


def test_pure_text_has_no_tiles(data, tok):
    for line in data.good_lines("text"):
        record, _ = load(data, "text", line)
        s = encode_sample(record, {}, CFG, tok, random.Random(0), "text")
        check_common(s, 0)
        assert runs(s.input_ids, tok) == []


def test_count_sample_matches_encoding(data, tok):
    cfg = replace(CFG, max_dynamic_patch=6)
    for dataset in ("single", "multi", "text", "video"):
        for line in data.good_lines(dataset):
            record, media = load(data, dataset, line)
            s = encode_sample(record, media, cfg, tok, random.Random(line), dataset)
            sizes = [
                image_size_of(media[f"img{i}"]) for i in range(len([k for k in media if k.startswith("img")]))
            ]
            frames = s.num_tiles if dataset == "video" else None
            assert count_sample(record, sizes, cfg, tok, num_frames=frames) == (s.num_tokens, s.num_tiles)
    record, media = load(data, "video", 1)  # without a frame count: the upper bound (max frames)
    s = encode_sample(record, media, replace(cfg, min_num_frames=4), tok, random.Random(0), "video")
    assert count_sample(record, None, cfg, tok) == (s.num_tokens, cfg.max_num_frames)
    record, _ = load(data, "single", 1)  # width/height hints in the record stand in for header sizes
    assert count_sample(record, None, cfg, tok)[1] == tile_grid(64, 48, 1, 6, S, True)[2]


@pytest.mark.parametrize(("dataset", "line"), [("single", 1), ("multi", 2), ("video", 1)])
def test_same_seed_same_sample(data, tok, dataset, line):
    cfg = replace(CFG, data_augment=True)
    record, media = load(data, dataset, line)
    a = encode_sample(record, media, cfg, tok, random.Random(1234), dataset)
    b = encode_sample(record, media, cfg, tok, random.Random(1234), dataset)
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.labels, b.labels)
    assert torch.equal(a.pixel_values, b.pixel_values)
    others = [encode_sample(record, media, cfg, tok, random.Random(k), dataset) for k in range(4)]
    assert any(o.pixel_values.shape != a.pixel_values.shape or not torch.equal(o.pixel_values, a.pixel_values)
               for o in others)  # fmt: skip


def test_augment_changes_pixels_only_when_asked(data, tok):
    record, media = load(data, "single", 1)
    plain = encode_sample(record, media, CFG, tok, random.Random(0), "single")
    again = encode_sample(record, media, CFG, tok, random.Random(99), "single")
    assert torch.equal(plain.pixel_values, again.pixel_values)
    aug = encode_sample(record, media, replace(CFG, data_augment=True), tok, random.Random(0), "single")
    assert aug.pixel_values.shape == plain.pixel_values.shape
    assert not torch.equal(aug.pixel_values, plain.pixel_values)


def test_media_by_record_path_and_shard_record(data, tok):
    record, media = load(data, "single", 1)
    by_path = {record["image"]: media["img0"]}
    shard_record = {
        **record,
        "_meta": {"num_tokens": 0, "num_tiles": 0, "line": 1, "media": ["000000001.img0.jpg"]},
    }
    a = encode_sample(record, by_path, CFG, tok, random.Random(0), "single")
    b = encode_sample(
        shard_record, {"img0.jpg": media["img0"], "json": b"{}"}, CFG, tok, random.Random(0), "single"
    )
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.pixel_values, b.pixel_values)
    with pytest.raises(ValueError, match="single:1"):
        encode_sample(shard_record, {}, CFG, tok, random.Random(0), "single")


def test_too_long_raises(data, tok):
    record, media = load(data, "single", 1)
    with pytest.raises(SampleTooLong):
        encode_sample(record, media, replace(CFG, max_length=100), tok, random.Random(0), "single")
