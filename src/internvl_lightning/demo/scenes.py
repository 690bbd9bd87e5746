"""Synthetic scenes for the demo: coloured shapes on a plain background, and short clips of a moving ball.

Everything is drawn with Pillow from a seeded `random.Random`, so the demo data is the same on
every machine. The scenes carry the facts the questions ask about (colour, shape, position,
count, motion), and the same generator feeds the ViT's pretraining labels.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (230, 200, 30)}
SHAPES = ("circle", "square", "triangle", "diamond")
POSITIONS = ("left", "right", "top", "bottom")
COUNT_WORDS = ("zero", "one", "two", "three", "four")
DIRECTIONS = ("left", "right", "up", "down")


@dataclass(frozen=True)
class Scene:
    """What a picture shows: `count` shapes of one colour and kind, grouped at `position`."""

    colour: str
    shape: str
    position: str
    count: int


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill) -> None:
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    else:  # diamond
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)


def _centre(position: str, size: int, rng: random.Random) -> tuple[float, float]:
    q, j = size / 4, size / 16
    x, y = {"left": (q, 2 * q), "right": (3 * q, 2 * q), "top": (2 * q, q), "bottom": (2 * q, 3 * q)}[
        position
    ]
    return x + rng.uniform(-j, j), y + rng.uniform(-j, j)


def random_scene(rng: random.Random, max_count: int = 3) -> Scene:
    return Scene(
        rng.choice(list(COLOURS)), rng.choice(SHAPES), rng.choice(POSITIONS), rng.randint(1, max_count)
    )


def draw_scene(scene: Scene, rng: random.Random, width: int = 64, height: int = 64) -> Image.Image:
    """Render `scene`: light random background, shapes of radius ~size/7 near the given side."""
    bg = tuple(rng.randint(200, 255) for _ in range(3))
    img = Image.new("RGB", (width, height), bg)
    draw = ImageDraw.Draw(img)
    size = min(width, height)
    r = size / 7 if scene.count == 1 else size / 11
    cx, cy = _centre(scene.position, size, rng)
    cx *= width / size
    cy *= height / size
    # Several shapes sit side by side around the group centre (along the free axis).
    offsets = [(i - (scene.count - 1) / 2) * 2.3 * r for i in range(scene.count)]
    vertical = scene.position in ("left", "right")
    for off in offsets:
        x, y = (cx, cy + off) if vertical else (cx + off, cy)
        _draw_shape(draw, scene.shape, x, y, r * rng.uniform(0.85, 1.0), COLOURS[scene.colour])
    return img


def jpeg_bytes(img: Image.Image, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def ball_clip(
    direction: str, colour: str, rng: random.Random, frames: int = 8, size: int = 64
) -> list[Image.Image]:
    """A ball crossing the frame in `direction`."""
    bg = tuple(rng.randint(200, 255) for _ in range(3))
    r = size / 8
    lo, hi = r + 2, size - r - 2
    out = []
    for i in range(frames):
        t = lo + (hi - lo) * i / (frames - 1)
        mid = size / 2 + rng.uniform(-2, 2)
        x, y = {"right": (t, mid), "left": (size - t, mid), "down": (mid, t), "up": (mid, size - t)}[
            direction
        ]
        img = Image.new("RGB", (size, size), bg)
        _draw_shape(ImageDraw.Draw(img), "circle", x, y, r, COLOURS[colour])
        out.append(img)
    return out


def mp4_bytes(frames: list[Image.Image], fps: int = 8) -> bytes:
    """Encode frames as an H.264 (or MPEG-4 Part 2) mp4 in memory with PyAV; the same frames give
    the same bytes in every process."""
    import av
    import numpy as np

    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = frames[0].size
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            # With x264's defaults, about one process in three encoded some of the same frames
            # differently (decoded pixels off by 2 levels), so the demo's stage 2 differed between
            # runs; without macroblock-tree rate control, on one thread, 14 of 14 processes agreed.
            stream.options = {"x264-params": "mbtree=0:threads=1"}
        for img in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.asarray(img), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()
