"""Write a small synthetic dataset in InternVL's own format (meta.json + JSONL + media) for tests.

Four datasets: ``single`` (one image per sample; JPEG/PNG/palette/CMYK/grey/RGBA, several sizes),
``multi`` (2-3 images per sample), ``video`` (a short mp4 made with PyAV) and ``text`` (no media).
With ``bad=True`` each dataset also gets deliberately broken lines; ``SyntheticData.bad`` says where
they are and which rejection reason the shard tool should give.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
from PIL import Image

# Reason codes the shard tool reports (see internvl_lightning.data.shard.REASONS).
INVALID_JSON = "invalid_json"
SCHEMA = "schema"
MISSING_MEDIA = "missing_media"
BAD_IMAGE = "bad_image"
EMPTY_MEDIA = "empty_media"
EXTREME_ASPECT = "extreme_aspect"
TOO_SMALL = "image_too_small"
BAD_VIDEO = "bad_video"
TOO_LONG = "too_long"


@dataclass
class SyntheticData:
    """Where the dataset was written and what the tests should expect from it."""

    root: Path
    meta: Path
    lines: dict[str, int] = field(default_factory=dict)  # dataset -> number of JSONL lines
    bad: dict[tuple[str, int], str] = field(default_factory=dict)  # (dataset, line) -> reason code

    def good_lines(self, dataset: str) -> list[int]:
        """1-based line numbers of the samples that should be kept."""
        return [n for n in range(1, self.lines[dataset] + 1) if (dataset, n) not in self.bad]


def image_bytes(width: int, height: int, mode: str = "RGB", fmt: str = "JPEG", seed: int = 0) -> bytes:
    """A noisy image (so JPEG sizes are realistic) of the given size, mode and file format."""
    rng = np.random.default_rng(seed)
    rgb = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")
    if mode == "P":
        img = rgb.quantize(colors=16)
    elif mode == "RGBA":
        img = rgb.convert("RGBA")
        img.putalpha(128)
    else:
        img = rgb.convert(mode)
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def video_bytes(num_frames: int = 12, width: int = 64, height: int = 48, fps: int = 8) -> bytes:
    """A short mpeg4-in-mp4 clip whose frames differ (a bar grows, the red channel ramps)."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(num_frames):
            frame = np.zeros((height, width, 3), np.uint8)
            frame[..., 0] = (i * 255) // max(1, num_frames - 1)
            frame[:, : (i + 1) * width // num_frames, 1] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def _turns(*pairs: str, system: str | None = None) -> list[dict[str, str]]:
    out = [{"from": "system", "value": system}] if system else []
    for i, value in enumerate(pairs):
        out.append({"from": "human" if i % 2 == 0 else "gpt", "value": value})
    return out


def _single(bad: bool) -> tuple[dict[str, bytes], list[dict | str], dict[int, str]]:
    media = {
        "a.jpg": image_bytes(64, 48, "RGB", "JPEG", 1),
        "b.png": image_bytes(100, 40, "RGB", "PNG", 2),
        "c.png": image_bytes(30, 90, "P", "PNG", 3),
        "d.jpg": image_bytes(80, 80, "CMYK", "JPEG", 4),
        "e.jpeg": image_bytes(200, 30, "L", "JPEG", 5),
        "f.png": image_bytes(50, 70, "RGBA", "PNG", 6),
    }
    lines: list[dict | str] = [
        {
            "id": "s1",
            "image": "a.jpg",
            "width": 64,
            "height": 48,
            "conversations": _turns("<image>\nWhat colour is the circle?", "The circle is red."),
        },
        {"id": "s2", "image": "b.png", "conversations": _turns("Describe the picture.", "A blue square.")},
        {
            "id": "s3",
            "image": "c.png",
            "conversations": _turns("<image>\nHow many objects?", "Three.", "And the left one?", "A star."),
        },
        {
            "id": "s4",
            "image": "d.jpg",
            "conversations": _turns(
                "<image>\nWhat is shown?", "A cat.", system="You are a helpful assistant."
            ),
        },
        {
            "id": "s5",
            "image": "e.jpeg",
            "conversations": _turns("What is on the left?\n<image>", "A triangle."),
        },
        {"id": "s6", "image": "f.png", "conversations": _turns("<image>\nAnswer yes or no.", "yes")},
    ]
    errors: dict[int, str] = {}
    if bad:
        media["trunc.jpg"] = image_bytes(120, 90, "RGB", "JPEG", 7)[:700]
        media["empty.png"] = b""
        media["wide.png"] = image_bytes(1200, 4, "RGB", "PNG", 8)
        media["tiny.png"] = image_bytes(3, 3, "RGB", "PNG", 9)
        media["notimage.jpg"] = b"this is not an image at all, just text"
        extra: list[tuple[dict | str, str]] = [
            ('{"id": "broken", "image": "a.jpg", "conversations": [', INVALID_JSON),
            (
                {"id": "roles", "image": "a.jpg", "conversations": _turns("Fine.", "<image>\nHi")[::-1]},
                SCHEMA,
            ),
            (
                {"id": "missing", "image": "nope.jpg", "conversations": _turns("<image>\nHi", "Hello.")},
                MISSING_MEDIA,
            ),
            (
                {"id": "trunc", "image": "trunc.jpg", "conversations": _turns("<image>\nHi", "Hello.")},
                BAD_IMAGE,
            ),
            (
                {"id": "empty", "image": "empty.png", "conversations": _turns("<image>\nHi", "Hello.")},
                EMPTY_MEDIA,
            ),
            (
                {"id": "wide", "image": "wide.png", "conversations": _turns("<image>\nHi", "Hello.")},
                EXTREME_ASPECT,
            ),
            (
                {"id": "tiny", "image": "tiny.png", "conversations": _turns("<image>\nHi", "Hello.")},
                TOO_SMALL,
            ),
            (
                {"id": "garbage", "image": "notimage.jpg", "conversations": _turns("<image>\nHi", "Hello.")},
                BAD_IMAGE,
            ),
            (
                {
                    "id": "long",
                    "image": "a.jpg",
                    "conversations": _turns("<image>\n" + "red green blue " * 800, "ok"),
                },
                TOO_LONG,
            ),
        ]
        for k, (line, _) in enumerate(extra):
            lines.insert(1 + 2 * k, line)  # interleave with good samples
        errors = {next(i for i, ln in enumerate(lines) if ln is line) + 1: reason for line, reason in extra}
    return media, lines, errors


def _multi(bad: bool) -> tuple[dict[str, bytes], list[dict | str], dict[int, str]]:
    media = {
        "m1.jpg": image_bytes(96, 64, "RGB", "JPEG", 11),
        "m2.png": image_bytes(40, 40, "RGB", "PNG", 12),
        "m3.jpg": image_bytes(64, 128, "RGB", "JPEG", 13),
    }
    lines: list[dict | str] = [
        {
            "id": "m1",
            "image": ["m1.jpg", "m2.png"],
            "conversations": _turns("Image-1: <image>\nImage-2: <image>\nWhat changed?", "The colour."),
        },
        {
            "id": "m2",
            "image": ["m1.jpg", "m2.png", "m3.jpg"],
            "width_list": [96, 40, 64],
            "height_list": [64, 40, 128],
            "conversations": _turns("<image>\n<image>\n<image>\nCompare.", "They differ."),
        },
        {
            "id": "m3",
            "image": ["m3.jpg", "m1.jpg"],
            "conversations": _turns("<image>\nFirst.", "OK.", "<image>\nSecond?", "A cat."),
        },
    ]
    errors: dict[int, str] = {}
    if bad:
        lines.append(
            {
                "id": "count",
                "image": ["m1.jpg", "m2.png"],
                "conversations": _turns("<image>\nOnly one placeholder.", "Hm."),
            }
        )
        errors[len(lines)] = SCHEMA
        lines.append(
            {
                "id": "m4",
                "image": ["m2.png", "m1.jpg"],
                "conversations": _turns("<image><image>\nSame?", "No."),
            }
        )
    return media, lines, errors


def _video(bad: bool) -> tuple[dict[str, bytes], list[dict | str], dict[int, str]]:
    media = {"clip.mp4": video_bytes(12)}
    lines: list[dict | str] = [
        {"id": "v1", "video": "clip.mp4", "conversations": _turns("<video>\nWhat moves?", "The bar grows.")},
        {"id": "v2", "video": "clip.mp4", "conversations": _turns("Describe the video.", "A green bar.")},
        {
            "id": "v3",
            "video": "clip.mp4",
            "clip": [0.25, 1.0],
            "conversations": _turns("<video>\nAnd here?", "Red."),
        },
    ]
    errors: dict[int, str] = {}
    if bad:
        media["broken.mp4"] = b"\x00\x00\x00\x18ftypmp42" + b"\x00garbage" * 64
        lines.insert(
            1, {"id": "vbad", "video": "broken.mp4", "conversations": _turns("<video>\nHi", "Hello.")}
        )
        errors[2] = BAD_VIDEO
        lines.append(
            {
                "id": "vclip",
                "video": "clip.mp4",
                "clip": [10, 12],
                "conversations": _turns("<video>\nLate?", "Yes."),
            }
        )
        errors[len(lines)] = BAD_VIDEO  # the clip starts after the 1.5 s video ends
    return media, lines, errors


def _text(bad: bool) -> tuple[dict[str, bytes], list[dict | str], dict[int, str]]:
    lines: list[dict | str] = [
        {"id": "t1", "conversations": _turns("How many sides has a triangle?", "Three.")},
        {"id": "t2", "conversations": _turns("Count to five.", "one two three four five", "Again?", "Yes.")},
        {"id": "t3", "conversations": _turns("Say hi.", "hi", system="Answer briefly.")},
    ]
    errors: dict[int, str] = {}
    if bad:
        lines.append({"id": "t4", "conversations": [{"from": "human", "value": "No answer."}]})
        errors[len(lines)] = SCHEMA
    return {}, lines, errors


_KINDS = {"single": _single, "multi": _multi, "video": _video, "text": _text}


def write_dataset(
    root: str | Path, bad: bool = False, max_dynamic_patch: dict[str, int] | None = None
) -> SyntheticData:
    """Write ``root/meta.json``, one JSONL per dataset and its media under ``root/<dataset>/``."""
    root = Path(root)
    data = SyntheticData(root=root, meta=root / "meta.json")
    meta: dict[str, dict] = {}
    for name, make in _KINDS.items():
        media, lines, errors = make(bad)
        media_dir = root / name
        media_dir.mkdir(parents=True, exist_ok=True)
        for rel, payload in media.items():
            (media_dir / rel).write_bytes(payload)
        text = "".join(
            (ln if isinstance(ln, str) else json.dumps(ln, ensure_ascii=False)) + "\n" for ln in lines
        )
        (root / f"{name}.jsonl").write_text(text, encoding="utf-8")
        data.lines[name] = len(lines)
        data.bad.update({(name, n): r for n, r in errors.items()})
        meta[name] = {
            "root": name,  # relative paths: resolved against the meta file's folder
            "annotation": f"{name}.jsonl",
            "data_augment": name != "video",
            "repeat_time": 2 if name == "text" else 1,
            "length": len(lines),
        }
        if max_dynamic_patch and name in max_dynamic_patch:
            meta[name]["max_dynamic_patch"] = max_dynamic_patch[name]
    data.meta.write_text(json.dumps(meta, indent=2) + "\n")
    return data
