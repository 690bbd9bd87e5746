"""Image loading, validation, tensor conversion and JPEG augmentation (as InternVL's internvl_chat/internvl/train/dataset.py).

Colour conversion follows the reference: a plain ``convert("RGB")``. Alpha (RGBA, LA, PA, palette
transparency) is dropped, not composited on white, so transparent pixels keep the colour stored under
them, exactly what InternVL saw in training. EXIF orientation is not applied (the reference does not).
The one deliberate difference: 16-bit and 32-bit greyscale (``I;16*``, ``I``, ``F``) is scaled to
8 bits instead of being clipped at 255 (Pillow's plain conversion turns such images almost white).

Untrusted sizes: an image is refused before its pixels are decoded when its header declares more
than ``max_pixels`` (default :data:`MAX_IMAGE_PIXELS`, 40 Mpixel). Training never uses more than
``max_dynamic_patch`` + 1 tiles of 448 x 448 (13 tiles: 2.6 Mpixel), so 40 Mpixel (8000 x 5000,
a full-page scan at 600 dpi) leaves room for every real photo or document while keeping one
decode under 120 MB of RGB; Pillow's own bomb guard (89 Mpixel warning, 179 Mpixel error) is
far above what a data loader worker should allocate for one sample.
"""

from __future__ import annotations

import io
import os
import random
from functools import lru_cache

import numpy as np
import torch
from PIL import Image

from internvl_lightning.constants import NORMALIZATION

JPEG_QUALITIES = tuple(range(75, 101))  # the reference's 26 re-encode choices
MAX_ASPECT = 200.0  # width:height (or height:width) beyond this is rejected by check_image
MIN_SIDE = 4  # pixels; smaller images carry nothing worth 256 tokens per tile
MAX_IMAGE_PIXELS = 40_000_000  # width x height refused beyond this (see the module doc)

ImageSource = bytes | bytearray | memoryview | str | os.PathLike


def _describe(data: ImageSource) -> str:
    return "<bytes>" if isinstance(data, bytes | bytearray | memoryview) else os.fspath(data)


def to_rgb(img: Image.Image) -> Image.Image:
    """Return ``img`` as an RGB image (no copy when it already is one)."""
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I") or img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        if img.mode.startswith("I;16") or (img.mode == "I" and arr.max(initial=0) > 255):
            arr = arr / 256.0  # 16-bit range to 8 bits
        return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # same RGB as a direct convert, without Pillow's warning
    return img.convert("RGB")


class MediaTooLarge(ValueError):
    """An image or video whose header declares more pixels or frames than the configured limit."""

    reason_code = "media_too_large"


def check_pixels(width: int, height: int, max_pixels: int | None, where: str, what: str = "image") -> None:
    """:class:`MediaTooLarge` when ``width x height`` is above ``max_pixels`` (None: no limit)."""
    if max_pixels is not None and width * height > max_pixels:
        raise MediaTooLarge(
            f"{where}: {what} is {width}x{height} = {width * height / 1e6:.3g} Mpixel, "
            f"above the limit of {max_pixels / 1e6:g} Mpixel"
        )


def load_image(data: ImageSource, where: str = "", max_pixels: int | None = MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode an image from bytes or a path into RGB; ``ValueError`` naming ``where`` if it fails.

    The header's size is checked against ``max_pixels`` before any pixel is decoded.
    """
    where = where or _describe(data)
    src = io.BytesIO(data) if isinstance(data, bytes | bytearray | memoryview) else data
    try:
        with Image.open(src) as im:
            check_pixels(*im.size, max_pixels, where)
            im.load()
            return to_rgb(im)
    except MediaTooLarge:
        raise
    except Image.DecompressionBombError as e:  # beyond Pillow's own hard limit
        raise MediaTooLarge(f"{where}: {e}") from e
    except Exception as e:  # Pillow raises many types on corrupt input
        raise ValueError(f"{where}: cannot decode image: {type(e).__name__}: {e}") from e


def check_image(
    img: Image.Image, where: str, max_aspect: float = MAX_ASPECT, min_side: int = MIN_SIDE
) -> Image.Image:
    """Reject images that are too small or too elongated to be useful; returns ``img``."""
    w, h = img.size
    if min(w, h) < min_side:
        raise ValueError(f"{where}: image too small ({w}x{h}, need at least {min_side} px per side)")
    if max(w, h) > max_aspect * min(w, h):
        raise ValueError(f"{where}: extreme aspect ratio {w}x{h} (limit {max_aspect:g}:1)")
    return img


@lru_cache(maxsize=8)
def _lut(normalization: str) -> np.ndarray:
    """(3, 256) float32 table: value v of channel c -> ((v / 255) - mean_c) / std_c.

    Built with the same float32 torch ops as torchvision's ToTensor + Normalize, so looking values
    up gives bit-identical results while touching each pixel once.
    """
    if normalization not in NORMALIZATION:
        raise ValueError(f"unknown normalization {normalization!r}; choose from {sorted(NORMALIZATION)}")
    mean, std = (torch.as_tensor(v, dtype=torch.float32)[:, None] for v in NORMALIZATION[normalization])
    levels = torch.arange(256).float().div(255).expand(3, 256).clone()
    return levels.sub_(mean).div_(std).numpy()


def normalize_into(out: np.ndarray, rgb: np.ndarray, normalization: str = "imagenet") -> np.ndarray:
    """Write the normalised (3, H, W) float32 form of an (H, W, 3) uint8 array into ``out``."""
    lut = _lut(normalization)
    for c in range(3):
        np.take(lut[c], rgb[..., c], out=out[c])
    return out


def normalize_tiles(
    tiles: np.ndarray, normalization: str = "imagenet", out: np.ndarray | None = None
) -> np.ndarray:
    """(T, S, S, 3) uint8 RGB tiles -> their normalised (T, 3, S, S) float32 form (into ``out``)."""
    if out is None:
        out = np.empty((tiles.shape[0], 3, *tiles.shape[1:3]), np.float32)
    for k in range(tiles.shape[0]):
        normalize_into(out[k], tiles[k], normalization)
    return out


def to_tensor(img: Image.Image, image_size: int = 448, normalization: str = "imagenet") -> torch.Tensor:
    """Bicubic-resize to (S, S) and return the normalised float32 tensor (3, S, S)."""
    img = to_rgb(img)
    if img.size != (image_size, image_size):
        img = img.resize((image_size, image_size), Image.Resampling.BICUBIC)
    out = np.empty((3, image_size, image_size), np.float32)
    return torch.from_numpy(normalize_into(out, np.asarray(img), normalization))


def jpeg_augment(img: Image.Image, rng: random.Random) -> Image.Image:
    """Re-encode as JPEG with a quality drawn uniformly from 75..100 (the reference's augmentation)."""
    quality = rng.choice(JPEG_QUALITIES)
    buf = io.BytesIO()
    to_rgb(img).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as im:
        im.load()
        return im
