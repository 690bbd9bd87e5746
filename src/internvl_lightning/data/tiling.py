"""Dynamic-resolution tiling, identical to InternVL's ``dynamic_preprocess`` (internvl_chat/internvl/train/dataset.py)."""

from __future__ import annotations

import random
from functools import lru_cache

import numpy as np
import torch
from PIL import Image

from internvl_lightning.data.image import jpeg_augment, normalize_tiles, to_rgb


@lru_cache(maxsize=64)
def candidate_grids(min_num: int, max_num: int) -> tuple[tuple[int, int], ...]:
    """Grids (cols, rows) with ``min_num <= cols*rows <= max_num`` in the reference's order.

    The reference fills a Python ``set`` from an (n, i, j) generator and sorts it by product; grids with
    equal products keep the set's iteration order. That order is deterministic for small int tuples
    but depends on how the set was built, so it is built here the same way.
    """
    grids = set(
        (i, j)
        for n in range(min_num, max_num + 1)
        for i in range(1, n + 1)
        for j in range(1, n + 1)
        if min_num <= i * j <= max_num
    )
    return tuple(sorted(grids, key=lambda g: g[0] * g[1]))


def tile_grid(
    width: int,
    height: int,
    min_num: int = 1,
    max_num: int = 12,
    image_size: int = 448,
    use_thumbnail: bool = True,
) -> tuple[int, int, int]:
    """(cols, rows, n_tiles) for a ``width`` x ``height`` image; n_tiles counts the thumbnail."""
    aspect = width / height
    area = width * height
    best, best_diff = (1, 1), float("inf")
    for i, j in candidate_grids(min_num, max_num):
        diff = abs(aspect - i / j)
        if diff < best_diff:
            best, best_diff = (i, j), diff
        elif diff == best_diff and area > 0.5 * image_size * image_size * i * j:
            best = (i, j)  # exact tie: the larger grid wins if the image has over half its pixels
    cols, rows = best
    n = cols * rows
    return cols, rows, n + 1 if use_thumbnail and n != 1 else n


def _resized(image: Image.Image, cols: int, rows: int, image_size: int) -> Image.Image:
    # Pillow's default filter, as the reference (bicubic for RGB).
    return image.resize((image_size * cols, image_size * rows))


def dynamic_preprocess(
    image: Image.Image,
    min_num: int = 1,
    max_num: int = 12,
    image_size: int = 448,
    use_thumbnail: bool = False,
) -> list[Image.Image]:
    """Split ``image`` into tiles row-major, with the whole-image thumbnail last when asked."""
    cols, rows, _ = tile_grid(*image.size, min_num, max_num, image_size, use_thumbnail)
    canvas = _resized(image, cols, rows, image_size)
    s = image_size
    tiles = [canvas.crop((c * s, r * s, (c + 1) * s, (r + 1) * s)) for r in range(rows) for c in range(cols)]
    if use_thumbnail and len(tiles) != 1:
        tiles.append(image.resize((s, s)))
    return tiles


def tile_array(
    image: Image.Image,
    min_num: int = 1,
    max_num: int = 12,
    image_size: int = 448,
    use_thumbnail: bool = True,
    augment_rng: random.Random | None = None,
) -> np.ndarray:
    """Tiles of ``image`` as uint8 RGB (T, S, S, 3), row-major with the thumbnail last.

    The data pipeline keeps tiles in this form (a quarter of float32's bytes) until the collator
    normalises a whole batch into its output tensor, so pixels become float exactly once.
    With ``augment_rng`` each tile is JPEG re-encoded first (the reference's ``data_augment``: the
    random quality is drawn per tile, tiles in order, thumbnail last).
    """
    image = to_rgb(image)
    if augment_rng is not None:
        tiles = dynamic_preprocess(image, min_num, max_num, image_size, use_thumbnail)
        return np.stack([np.asarray(to_rgb(jpeg_augment(t, augment_rng))) for t in tiles])
    cols, rows, n_tiles = tile_grid(*image.size, min_num, max_num, image_size, use_thumbnail)
    s = image_size
    out = np.empty((n_tiles, s, s, 3), np.uint8)
    grid = np.asarray(_resized(image, cols, rows, s)).reshape(rows, s, cols, s, 3)
    out[: rows * cols] = grid.transpose(0, 2, 1, 3, 4).reshape(rows * cols, s, s, 3)
    if n_tiles > rows * cols:
        out[-1] = np.asarray(image.resize((s, s)))
    return out


def pixel_values(
    image: Image.Image,
    min_num: int = 1,
    max_num: int = 12,
    image_size: int = 448,
    use_thumbnail: bool = True,
    normalization: str = "imagenet",
    augment_rng: random.Random | None = None,
) -> torch.Tensor:
    """Tiles of ``image`` as a normalised float32 tensor (T, 3, S, S) (see :func:`tile_array`)."""
    tiles = tile_array(image, min_num, max_num, image_size, use_thumbnail, augment_rng)
    return torch.from_numpy(normalize_tiles(tiles, normalization))
