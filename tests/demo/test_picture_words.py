"""The demo LLM's picture words line up with the image tokens the VLM will put in their place."""

from __future__ import annotations

import random

import torch
from transformers import AutoTokenizer

from internvl_lightning.constants import IMG_END_TOKEN, IMG_START_TOKEN
from internvl_lightning.data.tiling import tile_grid
from internvl_lightning.demo.picture_words import CELL_EMPTY, PICTURE_TOKENS, cell_words, picture_text
from internvl_lightning.demo.scenes import Scene, draw_scene
from internvl_lightning.model.components import build_tokenizer
from internvl_lightning.model.pixel_shuffle import pixel_shuffle

SIZE, PATCH = 64, 8  # the demo's tiles: 8x8 patches -> 4x4 image tokens


def test_cells_are_the_patch_groups_pixel_shuffle_merges():
    """Token k of a tile holds patches {(2r+i, 2c+j)}: the cells are cut the same way."""
    grid = SIZE // PATCH
    ids = torch.arange(grid * grid, dtype=torch.float32).view(1, grid, grid, 1)  # patch index
    tokens = pixel_shuffle(ids, 0.5, "v2").view(-1, 4)  # (16, 4) patch indices per token
    for k, patches in enumerate(tokens.long().tolist()):
        r, c = divmod(k, grid // 2)
        assert sorted(patches) == sorted((2 * r + i) * grid + 2 * c + j for i in range(2) for j in range(2))


def test_cell_words_follow_the_shape():
    rng = random.Random(0)
    for position, side in (("left", 0), ("right", 3), ("top", 0), ("bottom", 3)):
        scene = Scene("blue", "square", position, 1)
        words = cell_words(draw_scene(scene, rng, SIZE, SIZE), scene, PATCH)
        assert len(words) == 16 and set(words) == {CELL_EMPTY, "<cell:blue-square>"}
        full = [k for k, w in enumerate(words) if w != CELL_EMPTY]
        along = [k % 4 if position in ("left", "right") else k // 4 for k in full]
        assert side in along and (3 - side) not in along, (position, words)


def test_picture_text_has_one_word_per_image_token():
    scene = Scene("red", "circle", "top", 2)
    rng = random.Random(1)
    for width in (SIZE, 2 * SIZE):
        image = draw_scene(scene, rng, width, SIZE)
        text = picture_text(image, scene, SIZE, PATCH, max_num=6)
        tiles = tile_grid(width, SIZE, 1, 6, SIZE, True)[2]
        assert text.startswith(IMG_START_TOKEN) and text.endswith(IMG_END_TOKEN)
        assert text.count("<cell:") == 16 * tiles


def test_picture_tokens_are_single_tokens(tmp_path):
    tok = build_tokenizer(tmp_path, corpus=["a red circle"], extra_tokens=PICTURE_TOKENS)
    again = AutoTokenizer.from_pretrained(str(tmp_path))
    scene = Scene("green", "triangle", "left", 3)
    text = picture_text(draw_scene(scene, random.Random(2), SIZE, SIZE), scene, SIZE, PATCH, 6)
    for t in (tok, again):
        ids = t.encode(text, add_special_tokens=False)
        assert len(ids) == 18  # <img> + 16 cells + </img>
        assert t.convert_ids_to_tokens(ids[:1]) == [IMG_START_TOKEN]
