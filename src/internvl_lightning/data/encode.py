"""Turn one InternVL record + its media bytes into an :class:`EncodedSample` (tiles, ids, labels).

Kinds (InternVL's JSONL schema):

- single image: dynamic tiling with ``max_dynamic_patch`` (thumbnail last when there are >1 tiles);
- multi-image (``image`` is a list): each image tiled with ``max(1, max_dynamic_patch // n_images)``;
- video: frames from :func:`read_video`, one S×S tile per frame (no tiling, no thumbnail); the
  ``<video>`` placeholder becomes ``Frame-1: <image>\\n...Frame-n: <image>\\n``;
- pure text: no tiles (T = 0; the collator adds the dummy tile a text-only pack needs).

Each image costs ``tokens_per_tile x tiles`` ``<IMG_CONTEXT>`` tokens. All randomness (JPEG
augmentation, video frame count and positions) comes from the ``rng`` argument, so the same seed
gives the same sample, bit for bit. :func:`count_sample` gives the exact token/tile count without
decoding pixels (image sizes come from the file headers).
"""

from __future__ import annotations

import io
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ..constants import VIDEO_PLACEHOLDER
from .image import MAX_IMAGE_PIXELS, load_image
from .packing import EncodedSample
from .schema import MediaError, Sample, validate_sample
from .templates import tokenize
from .tiling import tile_array, tile_grid
from .video import MAX_FRAME_PIXELS, MAX_VIDEO_FRAMES, VideoLimits, frame_prompt, read_video


@dataclass(frozen=True)
class EncodeConfig:
    """How samples become tiles and tokens; per-dataset overrides are applied with ``dataclasses.replace``."""

    template: str = "internvl2_5"
    """Chat template (``templates.py``) the conversations are rendered with."""
    image_size: int = 448
    """Tile side in pixels (the vision encoder's input size)."""
    tokens_per_tile: int = 256
    """``<IMG_CONTEXT>`` tokens one tile becomes (256 for InternViT at 448 px after pixel shuffle)."""
    min_dynamic_patch: int = 1
    """Fewest tiles per image."""
    max_dynamic_patch: int = 12
    """Most tiles per image (a meta file's dataset may set its own)."""
    use_thumbnail: bool = True
    """Add a whole-image thumbnail tile to multi-tile images."""
    normalization: str = "imagenet"
    """Pixel mean/std: ``imagenet``, ``clip`` or ``siglip``."""
    data_augment: bool = False
    """JPEG-quality augmentation of training images (set per dataset by the meta file)."""
    min_num_frames: int = 8
    """Fewest frames sampled from a video."""
    max_num_frames: int = 32
    """Most frames sampled from a video (the shard tool counts videos at this many)."""
    video_sampling: str = "rand"
    """Frame sampling: ``rand``, ``middle`` or ``fpsX``."""
    max_length: int = 16384
    """Longest sample in tokens; longer ones are rejected."""
    max_image_pixels: int | None = MAX_IMAGE_PIXELS
    """Images whose header declares more pixels are refused before decoding (None: no limit)."""
    max_video_frames: int | None = MAX_VIDEO_FRAMES
    """Videos declaring more frames are refused before decoding (None: no limit)."""
    max_frame_pixels: int | None = MAX_FRAME_PIXELS
    """Videos whose frames are larger (width x height) are refused before decoding (None: no limit)."""

    @property
    def video_limits(self) -> VideoLimits:
        """The video size limits of this config."""
        return VideoLimits(self.max_video_frames, self.max_frame_pixels)


def sample_where(record: Mapping, dataset: str) -> str:
    """``dataset:LINE`` for a record read from a shard (its ``_meta.line``), else ``dataset``."""
    meta = record.get("_meta")
    line = meta.get("line") if isinstance(meta, Mapping) else None
    return f"{dataset}:{line}" if line is not None else dataset


def max_tiles_per_image(sample: Sample, cfg: EncodeConfig) -> int:
    """Tile budget of each image: the dataset's ``max_dynamic_patch``, split across a list of images."""
    if sample.multi_image:
        return max(1, cfg.max_dynamic_patch // len(sample.images))
    return cfg.max_dynamic_patch


def image_tiles(width: int, height: int, max_num: int, cfg: EncodeConfig) -> int:
    """Number of tiles dynamic tiling gives a ``width`` x ``height`` image."""
    return tile_grid(width, height, cfg.min_dynamic_patch, max_num, cfg.image_size, cfg.use_thumbnail)[2]


def image_size_of(data: bytes) -> tuple[int, int]:
    """(width, height) from the image header only (no pixel decoding; no EXIF rotation, like loading)."""
    with Image.open(io.BytesIO(data)) as im:
        return im.size


def video_conversations(conversations: list[dict], num_frames: int) -> list[dict]:
    """Copy of the turns with ``<video>\\n`` (or a bare ``<video>``) replaced by the frame prompt."""
    out, done = [], False
    for turn in conversations:
        value = turn["value"]
        if not done and turn["from"] == "human" and VIDEO_PLACEHOLDER in value:
            prompt = frame_prompt(num_frames)
            if VIDEO_PLACEHOLDER + "\n" in value:
                value = value.replace(VIDEO_PLACEHOLDER + "\n", prompt, 1)
            else:
                value = value.replace(VIDEO_PLACEHOLDER, prompt, 1)
            done = True
        out.append({"from": turn["from"], "value": value})
    return out


def media_member(media: Mapping[str, bytes], name: str, path: str, where: str) -> bytes:
    """The bytes of one media item: the shard member ``name`` (``img0``, ``video``; any extension)
    or, failing that, the record's own ``path``."""
    for key, value in media.items():
        if key == name or key.startswith(name + "."):
            return value
    if path in media:
        return media[path]
    raise MediaError(f"media {name!r} ({path}) not given to the encoder", None, where)


def _tokens(
    sample: Sample, conversations: list[dict], tiles: Sequence[int], cfg: EncodeConfig, tokenizer, max_length
) -> tuple[torch.Tensor, torch.Tensor]:
    counts = [cfg.tokens_per_tile * t for t in tiles]
    return tokenize(conversations, tokenizer, cfg.template, counts, max_length, sample_id=sample.id)


def encode_sample(
    record: dict,
    media: Mapping[str, bytes],
    cfg: EncodeConfig,
    tokenizer,
    rng: random.Random,
    dataset: str,
) -> EncodedSample:
    """Encode one record (as in the JSONL, or as stored in a shard) with its media bytes.

    ``media`` maps shard member names (``img0.jpg``, ``img1.png``, ``video.mp4``; webdataset's
    sample dict works as is) or the record's own paths to bytes. Raises ``SampleError`` subclasses
    (``InvalidSample``, ``SampleTooLong``, ``MediaError``) or ``ValueError`` naming the sample.
    """
    where = sample_where(record, dataset)
    sample = validate_sample(record, where)
    S = cfg.image_size
    if sample.kind == "video":
        data = media_member(media, "video", sample.video or "", where)
        frames = read_video(
            data,
            (cfg.min_num_frames, cfg.max_num_frames),
            cfg.video_sampling,
            sample.clip,
            rng,
            where,
            cfg.video_limits,
        )
        augment = rng if cfg.data_augment else None
        tiles = [tile_array(f, 1, 1, S, False, augment) for f in frames]
        conversations = video_conversations(sample.conversations, len(frames))
        counts = [1] * len(frames)
    elif sample.kind == "image":
        max_num = max_tiles_per_image(sample, cfg)
        augment = rng if cfg.data_augment else None
        tiles = []
        for i, path in enumerate(sample.images):
            data = media_member(media, f"img{i}", path, where)
            img = load_image(data, f"{where}: {path}", cfg.max_image_pixels)
            tiles.append(tile_array(img, cfg.min_dynamic_patch, max_num, S, cfg.use_thumbnail, augment))
        conversations = sample.conversations
        counts = [t.shape[0] for t in tiles]
    else:
        tiles, conversations, counts = [], sample.conversations, []
    input_ids, labels = _tokens(sample, conversations, counts, cfg, tokenizer, cfg.max_length)
    # uint8 RGB tiles: the collator normalises them straight into the batch (float32 once).
    pixels = (
        torch.from_numpy(np.concatenate(tiles)) if tiles else torch.zeros((0, S, S, 3), dtype=torch.uint8)
    )
    flags = torch.ones(pixels.shape[0], dtype=torch.long)
    return EncodedSample(sample.id, dataset, input_ids, labels, pixels, flags, cfg.normalization)


def count_sample(
    record: dict,
    image_sizes: Sequence[tuple[int, int]] | None,
    cfg: EncodeConfig,
    tokenizer,
    num_frames: int | None = None,
) -> tuple[int, int]:
    """Exact ``(num_tokens, num_tiles)`` that :func:`encode_sample` gives, without decoding pixels.

    ``image_sizes``: (width, height) of each image as stored (header sizes, see :func:`image_size_of`);
    None falls back to the record's ``width``/``height`` hints. Videos draw their frame count at
    random, so they are counted at ``num_frames`` when given, else at ``cfg.max_num_frames``: an
    upper bound for the ``rand``/``middle`` samplers (which always return the drawn count, padding
    short videos); ``fpsX`` sampling is not bounded by it. Not checked against ``max_length``.
    """
    sample = validate_sample(record, sample_where(record, "record"))
    if sample.kind == "video":
        n = cfg.max_num_frames if num_frames is None else num_frames
        conversations, tiles = video_conversations(sample.conversations, n), [1] * n
    elif sample.kind == "image":
        sizes = image_sizes if image_sizes is not None else sample.image_sizes
        if sizes is None or len(sizes) != len(sample.images):
            raise ValueError(f"{sample.where}: need one (width, height) per image to count tiles")
        max_num = max_tiles_per_image(sample, cfg)
        conversations, tiles = sample.conversations, [image_tiles(w, h, max_num, cfg) for w, h in sizes]
    else:
        conversations, tiles = sample.conversations, []
    input_ids, _ = _tokens(sample, conversations, tiles, cfg, tokenizer, None)
    return int(input_ids.shape[0]), sum(tiles)
