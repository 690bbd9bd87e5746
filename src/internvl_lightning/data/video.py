"""Video frame sampling and decoding (as InternVL's internvl_chat/internvl/train/dataset.py).

Randomness comes from one ``random.Random`` (``rng``) for everything: the frame count, the ``rand``
choice per interval and its fallback. The reference mixes Python's and numpy's global generators; the
distributions are the same, and a single seeded generator makes resumed data pipelines reproducible.
``rng=None`` uses a fresh unseeded generator.

Untrusted sizes: the frame count and frame size a container declares are checked before decoding
(:data:`MAX_VIDEO_FRAMES`: one hour at 30 fps; :data:`MAX_FRAME_PIXELS`: 4K UHD, the largest common
video size); over-limit videos raise :class:`MediaTooLarge`.
"""

from __future__ import annotations

import io
import os
import random
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image

from internvl_lightning.constants import IMAGE_PLACEHOLDER
from internvl_lightning.data.image import MediaTooLarge, check_pixels, load_image, to_rgb

FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
MAX_VIDEO_FRAMES = 108_000  # one hour at 30 fps
MAX_FRAME_PIXELS = 3840 * 2160  # 4K UHD
VideoSource = bytes | bytearray | memoryview | str | os.PathLike


def frame_indices(
    num_frames: int,
    vlen: int,
    sample: str = "rand",
    input_fps: float | None = None,
    max_num_frames: int = -1,
    fix_start: int | None = None,
    rng: random.Random | None = None,
) -> list[int]:
    """Indices of the frames to take from a ``vlen``-frame video, as the reference's ``get_frame_indices``.

    ``rand``/``middle``: one frame per equal interval (``fix_start`` offsets from each interval start
    when not ``rand``), padded with the last index up to ``num_frames``. ``fpsX``: X frames per second
    of video at ``input_fps`` (1 when None, the reference's default), at most ``max_num_frames`` if > 0.
    """
    rng = rng if rng is not None else random.Random()
    if sample in ("rand", "middle"):
        acc = min(num_frames, vlen)
        edges = np.linspace(0, vlen, acc + 1).astype(int).tolist()
        ranges = [(a, b - 1) for a, b in zip(edges[:-1], edges[1:])]
        if sample == "rand":
            try:
                idx = [rng.choice(range(a, b)) for a, b in ranges]  # b itself is never picked
            except IndexError:  # an interval too short: a sorted random subset instead
                idx = sorted(rng.sample(range(vlen), acc))
        elif fix_start is not None:
            idx = [a + fix_start for a, _ in ranges]
        else:
            idx = [(a + b) // 2 for a, b in ranges]
        if idx and len(idx) < num_frames:
            idx += [idx[-1]] * (num_frames - len(idx))
        return idx
    if sample.startswith("fps"):
        fps = 1.0 if input_fps is None else float(input_fps)
        delta = 1.0 / float(sample[3:])
        seconds = np.arange(delta / 2, vlen / fps + delta / 2, delta)
        idx = [int(i) for i in np.around(seconds * fps).astype(int) if i < vlen]
        return idx[:max_num_frames] if max_num_frames > 0 else idx
    raise ValueError(f"unknown frame sampling {sample!r} (use 'rand', 'middle' or 'fpsX')")


def frame_prompt(n: int) -> str:
    """The text that replaces ``<video>\\n``: ``Frame-1: <image>\\n`` ... ``Frame-n: <image>\\n``."""
    return "".join(f"Frame-{i}: {IMAGE_PLACEHOLDER}\n" for i in range(1, n + 1))


def _frame_number(name: str) -> tuple[int, str]:
    digits = re.findall(r"\d+", os.path.splitext(name)[0])
    return (int(digits[-1]) if digits else -1, name)


@dataclass(frozen=True)
class VideoLimits:
    """Largest frame count and frame size (width x height) a video may declare; None: no limit."""

    max_frames: int | None = MAX_VIDEO_FRAMES
    max_pixels: int | None = MAX_FRAME_PIXELS

    def check(self, frames: int | None, width: int, height: int, where: str) -> None:
        """:class:`MediaTooLarge` when the declared size is over a limit."""
        if self.max_frames is not None and frames is not None and frames > self.max_frames:
            raise MediaTooLarge(
                f"{where}: video declares {frames} frames, above the limit of {self.max_frames}"
            )
        check_pixels(width, height, self.max_pixels, where, "video frame")


def _read_folder(
    path: str, t: int, sample: str, rng: random.Random, limits: VideoLimits
) -> list[Image.Image]:
    names = sorted((n for n in os.listdir(path) if n.lower().endswith(FRAME_EXTENSIONS)), key=_frame_number)
    limits.check(len(names), 0, 0, path)
    if len(names) > t:  # the reference samples only when there are more frames than wanted
        names = [names[i] for i in frame_indices(t, len(names), sample, rng=rng)]
    return [load_image(os.path.join(path, n), max_pixels=limits.max_pixels) for n in names]


def _read_gif(
    src: io.BytesIO | VideoSource, t: int, sample: str, rng: random.Random, limits: VideoLimits, where: str
) -> list[Image.Image]:
    with Image.open(src) as gif:
        limits.check(getattr(gif, "n_frames", 1), *gif.size, where)
        wanted = frame_indices(t, getattr(gif, "n_frames", 1), sample, rng=rng)
        frames = []
        for i in sorted(set(wanted)):  # the reference keeps each chosen frame once
            gif.seek(i)
            frames.append(to_rgb(gif.copy()))
        return frames


def _read_av(
    src: io.BytesIO | str,
    t: int,
    sample: str,
    clip: tuple[float, float] | None,
    rng: random.Random,
    limits: VideoLimits,
    where: str,
) -> list[Image.Image]:
    import av

    with av.open(src) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 1)
        ctx = stream.codec_context
        limits.check(stream.frames or None, ctx.width, ctx.height, where)
        total = stream.frames or sum(1 for p in container.demux(stream) if p.size)
        limits.check(total, ctx.width, ctx.height, where)
    start, vlen = 0, total
    if clip:
        start = int(clip[0] * fps)
        vlen = min(int((clip[1] - clip[0]) * fps), total - start)
    if vlen <= 0:
        raise ValueError(f"no frames to sample (length {total}, clip {clip})")
    wanted = [start + i for i in frame_indices(t, vlen, sample, input_fps=fps, rng=rng)]
    if not wanted:
        raise ValueError(f"sampling {sample!r} chose no frame of {vlen}")
    stop = max(wanted)
    if hasattr(src, "seek"):
        src.seek(0)
    got, last, need = {}, None, set(wanted)
    with av.open(src) as container:
        for k, frame in enumerate(container.decode(video=0)):
            last = (k, frame)
            if k in need:
                got[k] = frame.to_image()
            if k >= stop:
                break
    if last is None:
        raise ValueError("no frame could be decoded")
    if last[0] not in got:  # header promised more frames than decoded: use the last real one
        got[last[0]] = last[1].to_image()
    return [got.get(k, got[last[0]]) for k in wanted]


def read_video(
    data: VideoSource,
    num_frames_range: tuple[int, int] = (8, 32),
    sample: str = "rand",
    clip: tuple[float, float] | None = None,
    rng: random.Random | None = None,
    where: str = "",
    limits: VideoLimits = VideoLimits(),
) -> list[Image.Image]:
    """Decode sampled RGB frames from a video file/bytes (PyAV), a ``.gif`` or a folder of frames.

    The frame count is drawn uniformly from ``num_frames_range`` (inclusive). ``clip`` is
    ``(start_s, end_s)`` (video files only). Failures raise ``ValueError`` naming ``where``
    (:class:`MediaTooLarge` when the video declares more frames or pixels than ``limits``).
    """
    rng = rng if rng is not None else random.Random()
    is_bytes = isinstance(data, bytes | bytearray | memoryview)
    where = where or ("<bytes>" if is_bytes else os.fspath(data))
    t = rng.randint(*num_frames_range)
    try:
        if not is_bytes and os.path.isdir(data):
            frames = _read_folder(os.fspath(data), t, sample, rng, limits)
        elif (bytes(data[:4]) == b"GIF8") if is_bytes else os.fspath(data).lower().endswith(".gif"):
            frames = _read_gif(io.BytesIO(data) if is_bytes else data, t, sample, rng, limits, where)
        else:
            src = io.BytesIO(data) if is_bytes else os.fspath(data)
            frames = _read_av(src, t, sample, clip, rng, limits, where)
    except MediaTooLarge:
        raise
    except Exception as e:
        raise ValueError(f"{where}: cannot read video: {type(e).__name__}: {e}") from e
    if not frames:
        raise ValueError(f"{where}: no frame decoded")
    return frames
