"""Image loading, colour conversion, normalisation and JPEG augmentation."""

import io
import random
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from internvl_lightning.constants import IMAGENET_MEAN, IMAGENET_STD, NORMALIZATION
from internvl_lightning.data.image import (
    JPEG_QUALITIES,
    check_image,
    jpeg_augment,
    load_image,
    to_rgb,
    to_tensor,
)
from internvl_lightning.data.tiling import pixel_values
from tests.helpers import IMAGES

PHOTOS = sorted(IMAGES.glob("*.jpg"))


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _rgb(img: Image.Image) -> np.ndarray:
    assert img.mode == "RGB"
    return np.asarray(img)


# --- colour modes ---
def test_rgb_is_passed_through():
    img = Image.new("RGB", (5, 4), (1, 2, 3))
    assert to_rgb(img) is img


def test_grey_and_bilevel():
    assert (_rgb(load_image(_encode(Image.new("L", (5, 4), 77), "PNG"))) == 77).all()
    bw = Image.new("1", (5, 4), 1)
    assert (_rgb(to_rgb(bw)) == 255).all()


def test_cmyk_jpeg():
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red in naive CMYK
    got = _rgb(load_image(_encode(cmyk, "JPEG", quality=100)))
    assert np.abs(got.astype(int) - [255, 0, 0]).max() <= 3


def test_alpha_is_dropped_like_the_reference():
    rgba = Image.new("RGBA", (4, 4), (10, 20, 30, 0))  # fully transparent, colour kept underneath
    assert (_rgb(load_image(_encode(rgba, "PNG"))) == [10, 20, 30]).all()
    la = Image.new("LA", (4, 4), (90, 0))
    assert (_rgb(load_image(_encode(la, "PNG"))) == 90).all()


def test_palette_with_transparency_gives_palette_colours_without_warning():
    p = Image.new("P", (4, 1))
    p.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255])
    p.putdata([0, 1, 2, 1])
    data = _encode(p, "PNG", transparency=bytes([0, 128, 255]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = _rgb(load_image(data))
    assert got[0].tolist() == [[255, 0, 0], [0, 255, 0], [0, 0, 255], [0, 255, 0]]


def test_16_bit_grey_is_scaled_not_clipped():
    arr = np.array([[0, 256, 32768, 65535]], dtype=np.uint16)
    got = _rgb(load_image(_encode(Image.fromarray(arr), "PNG")))
    assert got[0, :, 0].tolist() == [0, 1, 128, 255]
    assert (got[..., 0] == got[..., 2]).all()
    small = Image.fromarray(np.array([[0, 200]], dtype=np.int32), "I")  # 8-bit range stays as is
    assert _rgb(to_rgb(small))[0, :, 0].tolist() == [0, 200]


def test_load_from_path_and_bytes_agree():
    assert np.array_equal(_rgb(load_image(PHOTOS[0])), _rgb(load_image(PHOTOS[0].read_bytes())))


# --- errors ---
@pytest.mark.parametrize(
    "data",
    [b"", b"\x00" * 100, b"not an image at all", b"\xff\xd8\xff\xe0" + b"\x00" * 50],
    ids=["empty", "zeros", "text", "jpeg-header-only"],
)
def test_corrupt_bytes_name_the_source(data):
    with pytest.raises(ValueError, match="shard-7/sample-42"):
        load_image(data, where="shard-7/sample-42")


def test_truncated_jpeg_names_the_file(tmp_path):
    bad = tmp_path / "cut.jpg"
    bad.write_bytes(PHOTOS[0].read_bytes()[:5000])
    with pytest.raises(ValueError, match="cut.jpg"):
        load_image(bad)
    with pytest.raises(ValueError, match="missing.png"):
        load_image(tmp_path / "missing.png")


def test_check_image_limits():
    img = Image.new("RGB", (800, 4))
    assert check_image(img, "x") is img
    with pytest.raises(ValueError, match="a.jpg.*aspect"):
        check_image(Image.new("RGB", (2010, 10)), "a.jpg")
    with pytest.raises(ValueError, match="b.jpg.*small"):
        check_image(Image.new("RGB", (3, 300)), "b.jpg")
    check_image(Image.new("RGB", (2010, 10)), "a.jpg", max_aspect=500)


# --- tensors ---
@pytest.mark.parametrize("norm", sorted(NORMALIZATION))
def test_to_tensor_values(norm):
    mean, std = NORMALIZATION[norm]
    t = to_tensor(Image.new("RGB", (8, 8), (255, 0, 128)), 8, norm)
    assert t.shape == (3, 8, 8) and t.dtype == torch.float32
    want = [(v / 255 - m) / s for v, m, s in zip((255, 0, 128), mean, std)]
    assert torch.allclose(t[:, 0, 0], torch.tensor(want), atol=1e-6)


@pytest.mark.parametrize("norm", sorted(NORMALIZATION))
def test_to_tensor_is_torchvision_arithmetic_bit_for_bit(norm):
    # ToTensor: uint8 -> float32 / 255; Normalize: sub_(mean).div_(std), all in float32
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8))
    mean, std = (torch.tensor(v, dtype=torch.float32)[:, None, None] for v in NORMALIZATION[norm])
    want = torch.from_numpy(np.array(img)).permute(2, 0, 1).contiguous().float().div(255)
    assert torch.equal(to_tensor(img, 40, norm), want.sub_(mean).div_(std))


def test_to_tensor_resizes_bicubic():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 50, 3), dtype=np.uint8))
    assert torch.equal(to_tensor(img, 16), to_tensor(img.resize((16, 16), Image.Resampling.BICUBIC), 16))
    with pytest.raises(ValueError, match="normalization"):
        to_tensor(img, 16, "nope")


# --- JPEG augmentation ---
def test_jpeg_augment_quality_draw_and_determinism():
    assert JPEG_QUALITIES == tuple(range(75, 101))
    img = load_image(PHOTOS[2]).resize((64, 48))
    a, b = jpeg_augment(img, random.Random(5)), jpeg_augment(img, random.Random(5))
    assert a.mode == "RGB" and a.size == img.size
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(img))
    q = random.Random(5).choice(range(75, 101))
    assert np.array_equal(np.asarray(a), np.asarray(load_image(_encode(img, "JPEG", quality=q))))
    draws = {jpeg_augment(img, random.Random(s)).tobytes() for s in range(6)}
    assert len(draws) > 1  # different seeds pick different qualities


# --- parity with transformers' GotOcr2 image processor (HF-native InternVL checkpoints) ---
@pytest.mark.parametrize("max_num", [12, 6])
def test_pixel_values_match_got_ocr2_on_photos(max_num):
    # GotOcr2 orders equal-product grids row-major, the reference uses set order; they pick different
    # grids only on exact ties with min_num > 1 (see test_tiling), never for these photos.
    mod = pytest.importorskip("transformers.models.got_ocr2.image_processing_pil_got_ocr2")
    proc = mod.GotOcr2ImageProcessorPil(
        size={"height": 448, "width": 448},
        crop_to_patches=True,
        min_patches=1,
        max_patches=max_num,
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
    )
    for path in PHOTOS:
        img = load_image(path)
        ours = pixel_values(img, 1, max_num, 448, True, "imagenet")
        theirs = proc(img, return_tensors="pt")["pixel_values"]
        assert ours.shape == theirs.shape, path.name
        assert (ours - theirs).abs().max().item() <= 1e-6, path.name  # measured: exactly 0
