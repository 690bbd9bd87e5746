"""Tiling must pick the same grid and produce the same tiles as InternVL's ``dynamic_preprocess``."""

import random
from functools import cache

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from internvl_lightning.data.image import jpeg_augment, to_tensor
from internvl_lightning.data.tiling import candidate_grids, dynamic_preprocess, pixel_values, tile_grid


# --- a plain re-statement of the reference rule (InternVL's dynamic_preprocess), written separately from the library ---
@cache
def _ordered_grids(lo: int, hi: int) -> list[tuple[int, int]]:
    pool = set()  # filled in the reference's (n, cols, rows) order: equal products keep set order
    for n in range(lo, hi + 1):
        for cols in range(1, n + 1):
            for rows in range(1, n + 1):
                if lo <= cols * rows <= hi:
                    pool.add((cols, rows))
    return sorted(pool, key=lambda g: g[0] * g[1])


def _expected_grid(w: int, h: int, lo: int = 1, hi: int = 12, size: int = 448) -> tuple[int, int]:
    chosen, gap = (1, 1), float("inf")
    for cols, rows in _ordered_grids(lo, hi):
        d = abs(w / h - cols / rows)
        if d < gap:
            chosen, gap = (cols, rows), d
        elif d == gap and w * h > 0.5 * size * size * cols * rows:
            chosen = (cols, rows)
    return chosen


def _expected_tiles(img: Image.Image, lo: int, hi: int, size: int, thumb: bool) -> list[Image.Image]:
    cols, rows = _expected_grid(*img.size, lo, hi, size)
    big = img.resize((cols * size, rows * size))
    out = []
    for k in range(cols * rows):
        x, y = (k % cols) * size, (k // cols) * size
        out.append(big.crop((x, y, x + size, y + size)))
    if thumb and len(out) > 1:
        out.append(img.resize((size, size)))
    return out


# --- grids ---
@pytest.mark.parametrize(
    "w,h,grid",
    [
        ((448), 448, (1, 1, 1)),
        (1000, 747, (4, 3, 13)),  # 1.339 is closest to 4:3
        (1920, 1080, (4, 2, 9)),  # 2:1 ties 4:2; 2.07 Mpx > half of 8 tiles, so 4x2
        (889, 500, (2, 1, 3)),  # same tie, 0.44 Mpx is not > half of 8 tiles: stays 2x1
        (1000, 1000, (3, 3, 10)),  # 1:1 ties 2:2 and 3:3; 1 Mpx > half of 9 tiles
        (600, 500, (4, 3, 13)),
        (1920, 1200, (3, 2, 7)),
        (1, 4000, (1, 12, 13)),
        (4000, 1, (12, 1, 13)),
    ],
)
def test_tile_grid_hand_checked(w, h, grid):
    assert tile_grid(w, h) == grid


def test_tile_grid_options():
    assert tile_grid(1920, 1080, use_thumbnail=False) == (4, 2, 8)
    assert tile_grid(448, 448, use_thumbnail=True) == (1, 1, 1)  # a single tile gets no thumbnail
    assert tile_grid(1920, 1080, max_num=1) == (1, 1, 1)
    assert tile_grid(448, 448, min_num=2, max_num=4) == (2, 2, 5)
    # min_num=max_num=2, aspect 1.25: 1x2 and 2x1 tie exactly; set order puts 1x2 first
    assert candidate_grids(2, 2) == ((1, 2), (2, 1))
    assert tile_grid(5, 4, 2, 2) == (1, 2, 3)
    assert tile_grid(5000, 4000, 2, 2) == (2, 1, 3)  # more than half of 2 tiles' pixels: later grid


def test_candidate_order_is_the_reference_set_order():
    assert candidate_grids(1, 12) == tuple(_ordered_grids(1, 12))
    # equal products are not in row-major order (e.g. 3x1 before 1x3): the set order matters
    assert candidate_grids(1, 4)[3:5] == ((3, 1), (1, 3))


side = st.integers(1, 5000)
sizes = st.one_of(
    st.tuples(side, side),
    st.tuples(st.just(1), side),  # extreme aspect ratios
    st.tuples(side, st.just(1)),
    st.builds(lambda k, a, b: (k * a, k * b), st.integers(1, 400), st.integers(1, 12), st.integers(1, 12)),
)


@settings(max_examples=400, deadline=None)
@given(wh=sizes, lo=st.integers(1, 8), hi=st.integers(1, 40), size=st.sampled_from([224, 448]))
def test_tile_grid_matches_reference_rule(wh, lo, hi, size):
    w, h = wh
    cols, rows, n = tile_grid(w, h, lo, hi, size, use_thumbnail=True)
    assert (cols, rows) == _expected_grid(w, h, lo, hi, size)
    assert n == cols * rows + (cols * rows != 1)
    if lo <= hi:
        assert lo <= cols * rows <= hi


@settings(max_examples=200, deadline=None)
@given(k=st.integers(1, 60), lo=st.integers(2, 6), extra=st.integers(0, 6))
def test_tile_grid_same_product_ties(k, lo, extra):
    # with min_num > 1 there is no 1x1 between i:j and j:i, so their midpoint (i²+j²):(2ij) ties them
    hi = lo + extra
    for cols, rows in _ordered_grids(lo, hi):
        w, h = (cols * cols + rows * rows) * k, 2 * cols * rows * k
        assert tile_grid(w, h, lo, hi)[:2] == _expected_grid(w, h, lo, hi)


def test_tie_order_differs_from_row_major():
    # 2.5:1 with exactly 4 tiles: 2x2 and 4x1 tie; the reference's set order tries 2x2 first, so the tie
    # rule moves to 4x1. transformers' GotOcr2 orders equal products row-major (1x4, 2x2, 4x1) and keeps
    # 2x2: it differs from the reference only in such min_num > 1 exact ties.
    assert _expected_grid(50, 20, 4, 4) == (4, 1) == tile_grid(50, 20, 4, 4)[:2]
    got_ocr2 = pytest.importorskip("transformers.models.got_ocr2.image_processing_pil_got_ocr2")
    assert got_ocr2.get_optimal_tiled_canvas((20, 50), (448, 448), 4, 4) == (2, 2)


# --- tiles ---
@pytest.fixture(scope="module")
def noise():
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (61, 97, 3), dtype=np.uint8))


@pytest.mark.parametrize("max_num,thumb", [(6, True), (6, False), (1, True), (12, True)])
def test_dynamic_preprocess_matches_reference(noise, max_num, thumb):
    got = dynamic_preprocess(noise, 1, max_num, 32, thumb)
    want = _expected_tiles(noise, 1, max_num, 32, thumb)
    assert len(got) == len(want) == tile_grid(*noise.size, 1, max_num, 32, thumb)[2]
    for a, b in zip(got, want):
        assert a.size == (32, 32) and np.array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("norm", ["imagenet", "clip", "siglip"])
@pytest.mark.parametrize("shape", [(61, 97), (97, 61), (20, 20), (7, 300)])
def test_pixel_values_equals_per_tile_transform(norm, shape):
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (*shape, 3), dtype=np.uint8))
    pv = pixel_values(img, 1, 6, 32, True, norm)
    tiles = _expected_tiles(img, 1, 6, 32, True)
    want = torch.stack([to_tensor(t, 32, norm) for t in tiles])
    assert pv.dtype == torch.float32 and pv.shape == (len(tiles), 3, 32, 32)
    assert torch.equal(pv, want)


def test_pixel_values_converts_non_rgb(noise):
    grey = noise.convert("L")
    assert torch.equal(
        pixel_values(grey, max_num=4, image_size=32),
        pixel_values(grey.convert("RGB"), max_num=4, image_size=32),
    )


def test_pixel_values_jpeg_augment_per_tile(noise):
    a = pixel_values(noise, max_num=4, image_size=32, augment_rng=random.Random(3))
    b = pixel_values(noise, max_num=4, image_size=32, augment_rng=random.Random(3))
    plain = pixel_values(noise, max_num=4, image_size=32)
    assert torch.equal(a, b) and a.shape == plain.shape and not torch.equal(a, plain)
    rng = random.Random(3)
    want = [to_tensor(jpeg_augment(t, rng), 32) for t in dynamic_preprocess(noise, 1, 4, 32, True)]
    assert torch.equal(a, torch.stack(want))
