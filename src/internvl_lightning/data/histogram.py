"""Per-dataset histograms of tokens and tiles per sample, from the shard index, drawn as PNG with Pillow.

Counts come from each shard's ``.samples.json`` sidecar (``num_tokens`` / ``num_tiles`` per sample,
as the shard tool counted them: videos at ``max_num_frames``). Bars are drawn in :data:`BAR_COLOR`,
``round(count / max_count * PLOT_HEIGHT)`` pixels tall, one pixel apart when there is room.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .sources import DatasetSource, read_json

MAX_BINS = 40  # integer values spanning more than this are grouped into equal-width bins
WIDTH, HEIGHT = 640, 300
LEFT, RIGHT, TOP, BOTTOM = 56, 16, 34, 40  # margins around the plot area
PLOT_HEIGHT = HEIGHT - TOP - BOTTOM
BAR_COLOR = (66, 103, 178)
AXIS_COLOR = (40, 40, 40)


@dataclass(frozen=True)
class Histogram:
    """Counts of integer values in bins ``[edges[k], edges[k + 1])``."""

    title: str
    edges: tuple[int, ...]
    counts: tuple[int, ...]

    @property
    def total(self) -> int:
        return sum(self.counts)

    def bin_label(self, k: int) -> str:
        lo, hi = self.edges[k], self.edges[k + 1] - 1
        return str(lo) if lo == hi else f"{lo}-{hi}"


def histogram(values: list[int], title: str) -> Histogram:
    """One bar per value when they span at most :data:`MAX_BINS` integers, else equal-width bins."""
    if not values:
        return Histogram(title, (0, 1), (0,))
    lo, hi = min(values), max(values)
    width = -(-(hi - lo + 1) // MAX_BINS)
    edges = list(range(lo, hi + width + 1, width))
    counts, _ = np.histogram(np.asarray(values), bins=np.asarray(edges) - 0.5)
    return Histogram(title, tuple(edges), tuple(int(c) for c in counts))


def sample_counts(source: DatasetSource) -> tuple[list[int], list[int]]:
    """Tokens and tiles of every sample of ``source``'s shards, from their sidecars (or inline lists)."""
    tokens: list[int] = []
    tiles: list[int] = []
    for shard in source.shards:
        lists = read_json(shard.samples) if isinstance(shard.samples, str) else shard.samples
        if not isinstance(lists, dict) or not {"num_tokens", "num_tiles"} <= lists.keys():
            raise ValueError(f"{shard.url}: its sample list {shard.samples!r} has no num_tokens/num_tiles")
        tokens += [int(v) for v in lists["num_tokens"]]
        tiles += [int(v) for v in lists["num_tiles"]]
    return tokens, tiles


def draw(hist: Histogram) -> Image.Image:
    """The histogram as an RGB image of :data:`WIDTH` x :data:`HEIGHT` pixels."""
    img = Image.new("RGB", (WIDTH, HEIGHT), (255, 255, 255))
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default(13)
    base, plot_w = HEIGHT - BOTTOM, WIDTH - LEFT - RIGHT
    n, top = len(hist.counts), max(hist.counts) or 1
    step = plot_w / n
    gap = 1 if step >= 3 else 0
    for k, count in enumerate(hist.counts):
        h = round(count / top * PLOT_HEIGHT)
        if h:
            x0 = LEFT + round(k * step)
            x1 = LEFT + round((k + 1) * step) - 1 - gap
            d.rectangle([x0, base - h, max(x0, x1), base - 1], fill=BAR_COLOR)
    d.line([(LEFT - 1, TOP), (LEFT - 1, base)], AXIS_COLOR)
    d.line([(LEFT - 1, base), (WIDTH - RIGHT, base)], AXIS_COLOR)
    d.text((LEFT, 8), f"{hist.title}  ({hist.total} samples)", AXIS_COLOR, font)
    d.text((LEFT - 6, TOP), str(top), AXIS_COLOR, font, anchor="ra")
    d.text((LEFT - 6, base), "0", AXIS_COLOR, font, anchor="rb")
    for k in sorted({0, n // 2, n - 1}):
        label = hist.bin_label(k)
        half = d.textlength(label, font) / 2
        x = min(max(LEFT + (k + 0.5) * step, half + 2), WIDTH - half - 2)  # kept inside the image
        d.text((x, base + 6), label, AXIS_COLOR, font, anchor="ma")
    return img


def png_bytes(img: Image.Image) -> bytes:
    """``img`` encoded as PNG."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()
