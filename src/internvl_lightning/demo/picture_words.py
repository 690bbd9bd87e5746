"""Pictures written as words: what the demo's LLM knows about images before it has eyes.

A real LLM arrives at stage 1 knowing a great deal about the world its images show; the MLP
projector only has to make image tokens mean what the LLM already reads. The demo's LLM gets
the same head start from text: each picture is written where its image tokens will go, as one
word per image token, ``<img>`` + a 4x4 grid of cell words per tile + ``</img>``.

Why one word per image token: the projector is applied to each image token on its own, so it
can only learn a target that depends on that token's own part of the picture. A cell word
(``<cell:blue-square>`` or ``<cell:empty>``) is exactly that: what covers the 2x2 ViT patches
the pixel shuffle merges into one token. Tiles follow the data pipeline's dynamic tiling
(row-major, thumbnail last), so a wide picture reads as 3 grids, as its 48 image tokens will.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..constants import IMG_END_TOKEN, IMG_START_TOKEN
from ..data.tiling import dynamic_preprocess
from .scenes import COLOURS, SHAPES, Scene

CELL_EMPTY = "<cell:empty>"
CELL_WORDS = (CELL_EMPTY, *(f"<cell:{c}-{s}>" for c in COLOURS for s in SHAPES))
# Added to the demo LLM's tokenizer as single tokens (the VLM stages keep <img>/</img>'s rows).
PICTURE_TOKENS = (IMG_START_TOKEN, IMG_END_TOKEN, *CELL_WORDS)

_PALETTE = torch.tensor(list(COLOURS.values()), dtype=torch.float32)  # (4, 3)


def foreground(img: Image.Image, patch: int) -> torch.Tensor:
    """(H/patch, W/patch) bool: patches more than half covered by a shape (any palette colour)."""
    px = torch.from_numpy(np.asarray(img, dtype=np.float32))  # (H, W, 3)
    near = (px[:, :, None, :] - _PALETTE).abs().sum(-1).min(-1).values < 60  # (H, W)
    return F.avg_pool2d(near[None, None].float(), patch)[0, 0] > 0.5


def cell_words(tile: Image.Image, scene: Scene, patch: int, merge: int = 2) -> list[str]:
    """One word per image token of a tile, row-major (pixel shuffle v2's token order).

    A token covers ``merge x merge`` patches; it is the scene's shape when any of them is."""
    fg = foreground(tile, patch)  # (P, P)
    cells = F.max_pool2d(fg[None, None].float(), merge)[0, 0].flatten() > 0  # (P/merge)^2
    word = f"<cell:{scene.colour}-{scene.shape}>"
    return [word if c else CELL_EMPTY for c in cells.tolist()]


def picture_text(
    image: Image.Image, scene: Scene, image_size: int, patch: int, max_num: int, merge: int = 2
) -> str:
    """``<img>`` + the cell words of every tile (thumbnail last) + ``</img>``."""
    tiles = dynamic_preprocess(image, 1, max_num, image_size, use_thumbnail=True)
    words = [w for t in tiles for w in cell_words(t, scene, patch, merge)]
    return IMG_START_TOKEN + "".join(words) + IMG_END_TOKEN
