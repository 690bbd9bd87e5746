"""Packing collator: exact tensors on hand-built packs."""

from __future__ import annotations

import math

import pytest
import torch

from internvl_lightning.constants import IGNORE_INDEX as X
from internvl_lightning.data.collate import PackingCollator, len2weight
from internvl_lightning.data.packing import EncodedSample, Pack

S = 4  # tile size for tests


def sample(sid: str, ids: list[int], labels: list[int], tiles: int = 0) -> EncodedSample:
    pv = torch.arange(tiles * 3 * S * S, dtype=torch.float32).view(tiles, 3, S, S) + 1
    return EncodedSample(
        sid, "d", torch.tensor(ids), torch.tensor(labels), pv, torch.ones(tiles, dtype=torch.long)
    )


def three() -> list[EncodedSample]:
    a = sample("a", [10, 11, 12, 13], [10, 11, X, 13], tiles=2)  # trained after forcing: 11, 13
    b = sample("b", [20, 21], [20, 21])  # trained: 21
    c = sample("c", [30, 31, 32], [X, X, X], tiles=1)  # nothing trained
    return [a, b, c]


def test_three_sample_pack_exact() -> None:
    pack = three()
    out = PackingCollator(
        pad_token_id=7,
        loss_reduction="square",
        max_packed_tokens=12,
        num_images_expected=4,
        pad_to_budget=True,
    )([pack])
    t = torch.tensor
    assert out["input_ids"].tolist() == [[10, 11, 12, 13, 20, 21, 30, 31, 32, 7, 7, 7]]
    assert out["labels"].tolist() == [[X, 11, X, 13, X, 21, X, X, X, X, X, X]]
    assert out["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 0, 1, 2, 0, 1, 2]]
    assert out["sample_index"].tolist() == [[0, 0, 0, 0, 1, 1, 2, 2, 2, -1, -1, -1]]
    assert out["cu_seqlens"].dtype == torch.int32 and out["cu_seqlens"].tolist() == [0, 4, 6, 9, 12]
    assert out["max_seqlen"] == 4
    r = 1 / math.sqrt(2)
    assert out["loss_weight"].dtype == torch.float32
    torch.testing.assert_close(out["loss_weight"], t([[0, r, 0, r, 0, 1.0, 0, 0, 0, 0, 0, 0]]))
    assert out["pixel_values"].shape == (3, 3, S, S)
    assert torch.equal(out["pixel_values"], torch.cat([pack[0].pixel_values, pack[2].pixel_values]))
    assert out["image_flags"].tolist() == [1, 1, 1]
    assert out["stats"] == {
        "packs": 1,
        "samples": 3,
        "real_tokens": 9,
        "padding_tokens": 3,
        "trained_tokens": 3,
        "tiles": 3,
        "token_fill": 9 / 12,
        "tile_fill": 3 / 4,
    }
    assert pack[0].labels.tolist() == [10, 11, X, 13]  # caller's sample untouched


@pytest.mark.parametrize(
    ("reduction", "wa", "wb"), [("token", 1.0, 1.0), ("sample", 0.5, 1.0), ("square", 2**-0.5, 1.0)]
)
def test_loss_weights_by_hand(reduction: str, wa: float, wb: float) -> None:
    out = PackingCollator(loss_reduction=reduction)([three()])  # pad to longest: no padding
    expected = torch.tensor([[0, wa, 0, wa, 0, wb, 0, 0, 0]])
    torch.testing.assert_close(out["loss_weight"], expected)
    assert out["cu_seqlens"].tolist() == [0, 4, 6, 9] and out["stats"]["padding_tokens"] == 0
    assert len2weight(0, reduction) == 0.0


def test_text_only_pack_gets_one_dummy_tile() -> None:
    out = PackingCollator(image_size=S)([[sample("t", [1, 2, 3], [1, 2, 3])]])
    assert out["pixel_values"].shape == (1, 3, S, S) and not out["pixel_values"].any()
    assert out["image_flags"].tolist() == [0]
    assert out["stats"]["tiles"] == 0 and out["stats"]["tile_fill"] == 0.0


def test_two_packs_padded_to_longest() -> None:
    p0 = [sample("a", [1, 2, 3], [1, 2, 3], tiles=1), sample("b", [4, 5], [4, 5])]
    p1 = [sample("c", [6, 7, 8], [6, 7, 8], tiles=2)]
    out = PackingCollator(pad_token_id=0, loss_reduction="token", max_packed_tokens=8, num_images_expected=4)(
        [p0, p1]
    )
    assert out["input_ids"].tolist() == [[1, 2, 3, 4, 5], [6, 7, 8, 0, 0]]
    assert out["labels"].tolist() == [[X, 2, 3, X, 5], [X, 7, 8, X, X]]
    assert out["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 1, 2, 0, 1]]
    assert out["sample_index"].tolist() == [[0, 0, 0, 1, 1], [2, 2, 2, -1, -1]]
    assert out["cu_seqlens"].tolist() == [0, 3, 5, 8, 10] and out["max_seqlen"] == 3
    assert out["loss_weight"].tolist() == [[0, 1, 1, 0, 1], [0, 1, 1, 0, 0]]
    assert torch.equal(out["pixel_values"], torch.cat([p0[0].pixel_values, p1[0].pixel_values]))
    assert out["image_flags"].tolist() == [1, 1, 1]
    s = out["stats"]
    assert (s["packs"], s["samples"], s["real_tokens"], s["padding_tokens"], s["tiles"]) == (2, 3, 8, 2, 3)
    assert s["token_fill"] == 8 / 16 and s["tile_fill"] == 3 / 8


def test_strict_pack_tile_padding_and_errors() -> None:
    pack = Pack([sample("a", [1, 2], [1, 2], tiles=1), sample("b", [3], [3])], pad_tiles_to=3)
    out = PackingCollator()([pack])
    assert out["image_flags"].tolist() == [1, 0, 0] and out["pixel_values"].shape == (3, 3, S, S)
    assert not out["pixel_values"][1:].any()
    assert out["stats"]["tiles"] == 1
    assert PackingCollator()(pack)["input_ids"].tolist() == [[1, 2, 3]]  # a bare pack is accepted
    with pytest.raises(ValueError):
        PackingCollator(max_packed_tokens=2, pad_to_budget=True)([pack])
    with pytest.raises(ValueError):
        PackingCollator(loss_reduction="mean")  # type: ignore[arg-type]


@pytest.mark.parametrize("norm", ["imagenet", "clip"])
def test_uint8_tiles_are_normalised_into_the_batch(norm) -> None:
    """Encoder-style uint8 (T, S, S, 3) tiles come out as the float tiles `pixel_values` gives,
    beside already-normalised float tiles and zero padding tiles, in pack order."""
    from PIL import Image

    from internvl_lightning.data.tiling import pixel_values, tile_array

    g = torch.Generator().manual_seed(0)
    img = Image.fromarray(torch.randint(0, 256, (S, 2 * S, 3), generator=g, dtype=torch.uint8).numpy())
    raw = torch.from_numpy(tile_array(img, 1, 4, S, True))  # 2 tiles + thumbnail
    assert raw.dtype == torch.uint8 and raw.shape == (3, S, S, 3)
    a = EncodedSample(
        "a", "d", torch.tensor([1, 2]), torch.tensor([1, 2]), raw, torch.ones(3, dtype=torch.long), norm
    )
    b = sample("b", [3, 4], [3, 4], tiles=1)  # float tiles are copied as they are
    pack = Pack([a, b])
    pack.pad_tiles_to = 6
    out = PackingCollator(max_packed_tokens=8, num_images_expected=6)([pack])
    want = torch.cat([pixel_values(img, 1, 4, S, True, norm), b.pixel_values, torch.zeros(2, 3, S, S)])
    assert out["pixel_values"].dtype == torch.float32 and torch.equal(out["pixel_values"], want)
    assert out["image_flags"].tolist() == [1, 1, 1, 1, 0, 0]


def test_each_packed_sample_names_its_dataset():
    def sample(sid, dataset, n):
        return EncodedSample(sid, dataset, torch.arange(n), torch.arange(n), torch.zeros(0, 4, 4, 3, dtype=torch.uint8),
                             torch.zeros(0, dtype=torch.long))  # fmt: skip

    batch = PackingCollator(pad_token_id=0, max_packed_tokens=16, num_images_expected=0)(
        [[sample("a", "coco", 3), sample("b", "ocr", 4)], [sample("c", "coco", 5)]]
    )
    assert batch["datasets"] == ["coco", "ocr", "coco"]
    idx = batch["sample_index"]
    assert [int((idx == k).sum()) for k in range(3)] == [3, 4, 5]
