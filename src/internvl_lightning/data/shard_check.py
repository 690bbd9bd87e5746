"""Checking side of the shard tool: per-sample validation, on one or several processes.

:func:`check_sample` reads a record's media from disk, checks that it decodes, counts the sample's
tokens and tiles, and returns the tar members to write, or raises :class:`Rejected` with a reason
code from :data:`REASONS`. :func:`checker` runs it over a stream of lines, in order, on workers.
"""

from __future__ import annotations

import io
import multiprocessing
import re
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from PIL import Image

from .encode import EncodeConfig, count_sample
from .image import MAX_ASPECT, MIN_SIDE, MediaTooLarge, check_pixels
from .meta import join_media
from .schema import SampleError, SampleTooLong, validate_sample
from .video import VideoLimits

INVALID_JSON = "invalid_json"
SCHEMA = "schema"
MISSING_MEDIA = "missing_media"
EMPTY_MEDIA = "empty_media"
BAD_IMAGE = "bad_image"
IMAGE_TOO_SMALL = "image_too_small"
EXTREME_ASPECT = "extreme_aspect"
BAD_VIDEO = "bad_video"
TOO_LONG = "too_long"
IMAGE_TOO_LARGE = "image_too_large"
VIDEO_TOO_LARGE = "video_too_large"
REASONS = (
    INVALID_JSON,
    SCHEMA,
    MISSING_MEDIA,
    EMPTY_MEDIA,
    BAD_IMAGE,
    IMAGE_TOO_SMALL,
    EXTREME_ASPECT,
    BAD_VIDEO,
    TOO_LONG,
    IMAGE_TOO_LARGE,
    VIDEO_TOO_LARGE,
)

# Image file formats (as Pillow names them) -> member extension; others use the lower-cased name.
_IMAGE_EXT = {
    "JPEG": "jpg",
    "MPO": "jpg",
    "PNG": "png",
    "WEBP": "webp",
    "GIF": "gif",
    "BMP": "bmp",
    "TIFF": "tif",
}


class Rejected(Exception):
    """A sample the shard tool leaves out: ``code`` (one of :data:`REASONS`) and a readable ``reason``."""

    def __init__(self, code: str, reason: str, sample_id: str | None = None):
        super().__init__(code, reason, sample_id)
        self.code, self.reason, self.sample_id = code, reason, sample_id


@dataclass
class Checked:
    """A kept sample: its tar members (name suffix, bytes) in write order, and its size (videos:
    at ``max_num_frames``; ``least``: the smallest size it can have, at ``min_num_frames``)."""

    members: list[tuple[str, bytes]]
    num_tokens: int
    num_tiles: int
    least: tuple[int, int] | None = None  # (tokens, tiles) when smaller than the size above


def _read(root: str, path: str, sid: str) -> bytes:
    full = join_media(root, path)
    try:
        with open(full, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise Rejected(MISSING_MEDIA, f"file not found: {path} (root {root})", sid) from None
    except OSError as e:
        raise Rejected(MISSING_MEDIA, f"cannot read {path}: {e}", sid) from None
    if not data:
        raise Rejected(EMPTY_MEDIA, f"empty file: {path}", sid)
    return data


def _check_image(data: bytes, path: str, sid: str, max_pixels: int | None) -> tuple[str, tuple[int, int]]:
    """(member extension, (width, height)); the whole file is decoded (JPEG at 1/8 scale), unless
    its header declares more than ``max_pixels``."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt, size = im.format or "", im.size
            check_pixels(*size, max_pixels, path)
            im.verify()  # structure and checksums (PNG)
        with Image.open(io.BytesIO(data)) as im:
            im.draft("RGB", (1, 1))  # JPEG: decode every block, at the smallest scale
            im.load()  # catches truncated files that verify() lets through
    except (MediaTooLarge, Image.DecompressionBombError) as e:
        raise Rejected(IMAGE_TOO_LARGE, str(e), sid) from None
    except Exception as e:  # Pillow raises many types on corrupt input
        raise Rejected(BAD_IMAGE, f"cannot decode image {path}: {type(e).__name__}: {e}", sid) from None
    w, h = size
    if min(w, h) < MIN_SIDE:
        raise Rejected(IMAGE_TOO_SMALL, f"image {path} is {w}x{h}; need at least {MIN_SIDE} px per side", sid)
    if max(w, h) > MAX_ASPECT * min(w, h):
        raise Rejected(EXTREME_ASPECT, f"image {path} is {w}x{h}: aspect ratio beyond {MAX_ASPECT:g}:1", sid)
    return _IMAGE_EXT.get(fmt, re.sub(r"[^a-z0-9]", "", fmt.lower()) or "img"), size


def _check_video(
    data: bytes, path: str, clip: tuple[float, float] | None, sid: str, limits: VideoLimits
) -> None:
    """At least one frame decodes (and the clip, if any, overlaps the video); sizes within ``limits``."""
    try:
        if data[:4] == b"GIF8":
            with Image.open(io.BytesIO(data)) as im:
                limits.check(getattr(im, "n_frames", 1), *im.size, path)
                im.load()
            return
        import av

        with av.open(io.BytesIO(data)) as container:
            if not container.streams.video:
                raise ValueError("no video stream")
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or 1)
            total = stream.frames
            limits.check(total or None, stream.codec_context.width, stream.codec_context.height, path)
            next(iter(container.decode(video=0)))
        if clip and total:
            start = int(clip[0] * fps)
            if min(int((clip[1] - clip[0]) * fps), total - start) <= 0:
                raise ValueError(f"clip {list(clip)} has no frames in a {total}-frame video at {fps:g} fps")
    except StopIteration:
        raise Rejected(BAD_VIDEO, f"no decodable frame in {path}", sid) from None
    except (MediaTooLarge, Image.DecompressionBombError) as e:
        raise Rejected(VIDEO_TOO_LARGE, str(e), sid) from None
    except Exception as e:
        raise Rejected(BAD_VIDEO, f"cannot decode video {path}: {type(e).__name__}: {e}", sid) from None


def _video_ext(path: str) -> str:
    return re.sub(r"[^a-z0-9]", "", Path(path).suffix.lower()) or "bin"


def check_sample(record: dict, root: str, cfg: EncodeConfig, tokenizer, where: str) -> Checked:
    """Validate one record and its media (under ``root``); raise :class:`Rejected` if unusable."""
    try:
        sample = validate_sample(record, where)
    except SampleError as e:
        raise Rejected(SCHEMA, e.reason, e.sample_id) from None
    sid = sample.id
    members: list[tuple[str, bytes]] = []
    sizes: list[tuple[int, int]] = []
    for i, path in enumerate(sample.images):
        data = _read(root, path, sid)
        ext, size = _check_image(data, path, sid, cfg.max_image_pixels)
        members.append((f"img{i}.{ext}", data))
        sizes.append(size)
    if sample.video:
        if sample.video.endswith("/"):
            raise Rejected(
                BAD_VIDEO, f"frame folders are not supported by the shard tool: {sample.video}", sid
            )
        data = _read(root, sample.video, sid)
        _check_video(data, sample.video, sample.clip, sid, cfg.video_limits)
        members.append((f"video.{_video_ext(sample.video)}", data))
    try:
        num_tokens, num_tiles = count_sample(record, sizes, cfg, tokenizer)
    except SampleTooLong as e:
        raise Rejected(TOO_LONG, e.reason, sid) from None
    except SampleError as e:
        raise Rejected(SCHEMA, e.reason, sid) from None
    if num_tokens > cfg.max_length:
        raise Rejected(TOO_LONG, f"{num_tokens} tokens > max_length {cfg.max_length}", sid)
    least = None
    if sample.video and cfg.min_num_frames < cfg.max_num_frames:
        least = count_sample(record, sizes, cfg, tokenizer, num_frames=cfg.min_num_frames)
    return Checked(members, num_tokens, num_tiles, least)


# Worker side: each process holds the tokenizer and per-dataset (root, cfg) once.
_CONTEXT: dict = {}


def init_worker(tokenizer, settings: dict[str, tuple[str, EncodeConfig]]) -> None:
    _CONTEXT.clear()
    _CONTEXT.update(tokenizer=tokenizer, settings=settings)


def check_task(task: tuple) -> tuple:
    """``(dataset, line, record | (code, reason))`` -> ``(line, Checked | code, record | reason, id)``."""
    name, line, item = task
    if isinstance(item, tuple):
        return line, item[0], item[1], None
    root, cfg = _CONTEXT["settings"][name]
    try:
        return line, check_sample(item, root, cfg, _CONTEXT["tokenizer"], f"{name}:{line}"), item, None
    except Rejected as r:  # object addresses in messages would make reports differ between runs
        return line, r.code, re.sub(r" at 0x[0-9a-fA-F]+", "", r.reason), r.sample_id


def _check_chunk(tasks: list[tuple]) -> list[tuple]:
    return [check_task(t) for t in tasks]


@contextmanager
def checker(tokenizer, settings: dict, workers: int = 1, chunk: int = 8) -> Iterator:
    """Yield ``run(tasks) -> results`` (in task order) that checks on ``workers`` processes.

    Like ``Pool.imap`` but with a bounded window of chunks in flight, so a 100M-line annotation is
    never queued whole in memory.
    """
    if workers <= 1:
        init_worker(tokenizer, settings)
        try:
            yield lambda tasks: map(check_task, tasks)
        finally:
            _CONTEXT.clear()
        return
    # Not "fork": a parent that has already run Rust tokenizers / torch / ffmpeg threads can leave a
    # forked child waiting forever on a lock (seen here). The fork server imports this module once.
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__, type(tokenizer).__module__])
    with ctx.Pool(workers, init_worker, (tokenizer, settings)) as pool:

        def run(tasks: Iterable[tuple]) -> Iterator[tuple]:
            pending: deque = deque()
            it = iter(tasks)
            while True:
                batch = list(islice(it, chunk))
                if batch:
                    pending.append(pool.apply_async(_check_chunk, (batch,)))
                if pending and (not batch or len(pending) >= 4 * workers):
                    yield from pending.popleft().get()
                elif not batch:
                    return

        yield run
