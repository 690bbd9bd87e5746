"""What a person checks in one encoded sample: its tile layout per image and pictures of its tiles.

:class:`LayoutRecorder` wraps the stream's encoder and notes, for every sample it encodes, the tile
grid of each image (``tile_grid`` on the stored image's size, with the dataset's tile budget) or
the frame count of its video. :func:`image_views` turns the sample's uint8 tiles back into the
resized picture the vision encoder sees, with the tile grid drawn on it, plus the thumbnail; videos
become one strip of frames.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image, ImageDraw

from .encode import image_size_of, max_tiles_per_image, media_member, sample_where
from .packing import EncodedSample
from .schema import validate_sample
from .sources import DatasetSource, RawSample
from .stream import ShardEncoder
from .tiling import tile_grid

GRID_COLOR = (255, 0, 170)  # tile boundaries drawn on a picture
TILE_SIDE = 192  # side of one tile on the page, in pixels (whatever the tile size) ...
MAX_SIDE = 768  # ... unless the picture's longest side would exceed this
FRAME_SIDE = 112  # side of one video frame in the strip
FRAMES_PER_ROW = 8
GAP = 4  # pixels between frames in the strip


@dataclass(frozen=True)
class Grid:
    """Tiles of one image: ``cols`` x ``rows`` crops of the resized picture, plus the thumbnail."""

    cols: int
    rows: int
    tiles: int  # cols * rows, + 1 with the thumbnail

    @property
    def thumbnail(self) -> bool:
        return self.tiles > self.cols * self.rows


@dataclass(frozen=True)
class Layout:
    """How one sample's tiles are laid out: one grid per image, or a video's frame count."""

    kind: str  # "image", "video" or "text"
    record_id: str
    where: str  # dataset:LINE of the JSONL line the sample came from
    grids: tuple[Grid, ...] = ()
    frames: int = 0


@dataclass
class LayoutRecorder:
    """Encodes as ``encoder`` does and keeps each sample's :class:`Layout`, by (dataset, tar key)."""

    encoder: ShardEncoder
    layouts: dict[tuple[str, str], Layout] = field(default_factory=dict)

    def __call__(self, raw: RawSample, source: DatasetSource, rng: random.Random) -> EncodedSample:
        sample = self.encoder(raw, source, rng)
        self.layouts[(source.name, raw.key)] = layout_of(raw, source, self.encoder, sample.num_tiles)
        return sample

    def layout(self, sample: EncodedSample) -> Layout:
        """The layout of a sample the stream handed out (its id is the tar key, maybe tagged ``#p.c``)."""
        return self.layouts[(sample.dataset, sample.id.partition("#")[0])]


def layout_of(raw: RawSample, source: DatasetSource, encoder: ShardEncoder, num_tiles: int) -> Layout:
    """The tile layout ``encoder`` gave ``raw``; ``ValueError`` if it does not add up to ``num_tiles``."""
    record = json.loads(raw.members["json"])
    where = sample_where(record, source.name)
    sample = validate_sample(record, where)
    if sample.kind == "video":
        return Layout("video", sample.id, where, frames=num_tiles)
    mdp = source.max_dynamic_patch if source.max_dynamic_patch is not None else encoder.cfg.max_dynamic_patch
    cfg = replace(encoder.cfg, max_dynamic_patch=mdp)
    media = {k: v for k, v in raw.members.items() if k != "json"}
    grids = []
    for i, path in enumerate(sample.images):
        w, h = image_size_of(media_member(media, f"img{i}", path, where))
        max_num = max_tiles_per_image(sample, cfg)
        grids.append(
            Grid(*tile_grid(w, h, cfg.min_dynamic_patch, max_num, cfg.image_size, cfg.use_thumbnail))
        )
    if sum(g.tiles for g in grids) != num_tiles:
        raise ValueError(
            f"{where}: encoded {num_tiles} tiles, its images' grids say {[g.tiles for g in grids]}"
        )
    return Layout(sample.kind, sample.id, where, tuple(grids))


def tile_side(grid: Grid) -> int:
    """Side in page pixels of one tile of ``grid`` (the same for every image, unless it is very wide)."""
    return min(TILE_SIDE, MAX_SIDE // max(grid.cols, grid.rows))


def grid_picture(tiles: np.ndarray, grid: Grid) -> Image.Image:
    """The picture the ``cols x rows`` tiles were cut from, scaled for the page, with tile boundaries drawn.

    Boundaries are 3-pixel lines centred on ``x = c * tile_side(grid)`` (and ``y = r * ...``).
    """
    s, side = tiles.shape[1], tile_side(grid)
    canvas = tiles[: grid.cols * grid.rows].reshape(grid.rows, grid.cols, s, s, 3)
    canvas = canvas.transpose(0, 2, 1, 3, 4).reshape(grid.rows * s, grid.cols * s, 3)
    size = (grid.cols * side, grid.rows * side)
    img = Image.fromarray(canvas).resize(size, Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(img)
    for c in range(1, grid.cols):
        draw.line([(c * side, 0), (c * side, size[1] - 1)], GRID_COLOR, width=3)
    for r in range(1, grid.rows):
        draw.line([(0, r * side), (size[0] - 1, r * side)], GRID_COLOR, width=3)
    draw.rectangle([0, 0, size[0] - 1, size[1] - 1], outline=GRID_COLOR, width=2)
    return img


def thumbnail_picture(tile: np.ndarray, side: int) -> Image.Image:
    """The thumbnail tile at ``side`` pixels."""
    return Image.fromarray(tile).resize((side, side), Image.Resampling.BILINEAR)


def frame_strip(frames: np.ndarray) -> Image.Image:
    """Video frames (T, S, S, 3) side by side, ``FRAMES_PER_ROW`` to a row, in order."""
    n = frames.shape[0]
    cols, rows = min(n, FRAMES_PER_ROW), -(-n // FRAMES_PER_ROW)
    step = FRAME_SIDE + GAP
    strip = Image.new("RGB", (cols * step - GAP, rows * step - GAP), (255, 255, 255))
    for i, frame in enumerate(frames):
        tile = Image.fromarray(frame).resize((FRAME_SIDE, FRAME_SIDE), Image.Resampling.BILINEAR)
        strip.paste(tile, ((i % FRAMES_PER_ROW) * step, (i // FRAMES_PER_ROW) * step))
    return strip


@dataclass(frozen=True)
class ImageView:
    """One image of a sample as shown: the gridded picture and, when used, its thumbnail tile."""

    grid: Grid
    picture: Image.Image
    thumbnail: Image.Image | None


def image_views(sample: EncodedSample, layout: Layout) -> list[ImageView]:
    """One view per image of ``sample`` (its tiles in order, as ``layout`` splits them)."""
    tiles = sample.pixel_values.numpy()
    if tiles.dtype != np.uint8 or tiles.ndim != 4 or tiles.shape[-1] != 3:
        raise ValueError(
            f"{layout.where}: expected uint8 (T, S, S, 3) tiles, got {tiles.dtype} {tiles.shape}"
        )
    views, start = [], 0
    for grid in layout.grids:
        own = tiles[start : start + grid.tiles]
        thumb = thumbnail_picture(own[-1], tile_side(grid)) if grid.thumbnail else None
        views.append(ImageView(grid, grid_picture(own, grid), thumb))
        start += grid.tiles
    return views
