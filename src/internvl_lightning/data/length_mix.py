"""A synthetic but realistic (num_tokens, num_tiles) mix for packing tests and benchmarks.

Shapes follow InternVL-2.5-style SFT data at 448 px tiles with pixel shuffle 0.5, i.e. 256
`<IMG_CONTEXT>` tokens per tile plus `<img>`/`</img>` per image. Kinds (share of samples):

| kind         | share | tiles                                   | text tokens (log-normal median, clip) |
|--------------|-------|-----------------------------------------|---------------------------------------|
| caption      | 0.25  | 1-13 (dynamic-tiling grid + thumbnail)  | 60, 10-400                            |
| vqa          | 0.25  | 1-13                                    | 1-8 turns x 80, 20-2500               |
| ocr document | 0.08  | 5-13, mostly 13                         | 800, 100-4000                         |
| multi-image  | 0.06  | 2-5 images x 1-7 tiles                  | 250, 50-2000                          |
| video        | 0.08  | 8-32 frames, one tile each              | 120, 20-1000 (+6 per frame label)     |
| pure text    | 0.28  | 0                                       | 1100, 30-14000                        |

Every sample also carries a ~30-token system/template overhead. The mix averages about 6.1
tiles and ~2330 tokens per sample (~380 tokens per tile). Packing fill depends on that ratio:
with budgets 16384 tokens / 48 tiles a mix below 16384/48 ~ 341 tokens per tile is bound by
the tile budget and no packer can fill the token budget.
"""

from __future__ import annotations

import numpy as np

TOKENS_PER_TILE = 256
KINDS = ("caption", "vqa", "ocr", "multi_image", "video", "text")
SHARES = (0.25, 0.25, 0.08, 0.06, 0.08, 0.28)
# Tile counts that dynamic tiling (max 12 tiles + thumbnail) produces, with rough frequencies.
_IMAGE_TILES = np.array([1, 3, 4, 5, 7, 9, 10, 13])
_IMAGE_TILES_P = np.array([0.22, 0.12, 0.06, 0.18, 0.10, 0.12, 0.05, 0.15])
_DOC_TILES = np.array([5, 7, 9, 13])
_DOC_TILES_P = np.array([0.1, 0.2, 0.2, 0.5])
_OVERHEAD = 30


def _text(rng: np.random.Generator, median: float, lo: int, hi: int, sigma: float = 0.8) -> int:
    return int(np.clip(rng.lognormal(np.log(median), sigma), lo, hi))


def _image_tokens(tiles: int) -> int:
    return tiles * TOKENS_PER_TILE + 2  # <img> ... </img>


def sample_size(rng: np.random.Generator, kind: str) -> tuple[int, int]:
    """One (num_tokens, num_tiles) pair of the given kind."""
    if kind in ("caption", "vqa"):
        tiles = int(rng.choice(_IMAGE_TILES, p=_IMAGE_TILES_P))
        if kind == "caption":
            text = _text(rng, 60, 10, 400)
        else:
            turns = int(rng.integers(1, 9))
            text = min(2500, sum(_text(rng, 80, 20, 1500) for _ in range(turns)))
        return _image_tokens(tiles) + text + _OVERHEAD, tiles
    if kind == "ocr":
        tiles = int(rng.choice(_DOC_TILES, p=_DOC_TILES_P))
        return _image_tokens(tiles) + _text(rng, 800, 100, 4000, 0.7) + _OVERHEAD, tiles
    if kind == "multi_image":
        per_image = rng.choice([1, 3, 5, 7], size=int(rng.integers(2, 6)), p=[0.4, 0.3, 0.2, 0.1])
        tokens = sum(_image_tokens(int(t)) + 8 for t in per_image)  # "Image-k: " labels
        return tokens + _text(rng, 250, 50, 2000) + _OVERHEAD, int(per_image.sum())
    if kind == "video":
        frames = int(rng.integers(8, 33))
        tokens = frames * (_image_tokens(1) + 6)  # "Frame-k: " labels
        return tokens + _text(rng, 120, 20, 1000) + _OVERHEAD, frames
    if kind == "text":
        return _text(rng, 1100, 30, 14000, 0.9) + _OVERHEAD, 0
    raise ValueError(f"unknown kind {kind!r}")


def realistic_length_mix(rng: np.random.Generator | int, n: int) -> list[tuple[int, int]]:
    """`n` (num_tokens, num_tiles) pairs drawn from the mix above; deterministic for a seed."""
    rng = np.random.default_rng(rng)
    kinds = rng.choice(len(KINDS), size=n, p=SHARES)
    return [sample_size(rng, KINDS[k]) for k in kinds]
