"""Validate one InternVL JSONL sample and normalise it into a :class:`Sample`.

Every check names the sample and where it came from (``file.jsonl:LINE``), so a bad line in a
50M-line annotation can be found and fixed without a debugger. The rules follow the reference
(InternVL's JSONL annotations, read by internvl_chat/internvl/train/dataset.py), made explicit instead of failing later as an assert deep in a worker.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..constants import (
    IMAGE_PLACEHOLDER,
    IMG_CONTEXT_TOKEN,
    IMG_END_TOKEN,
    IMG_START_TOKEN,
    VIDEO_PLACEHOLDER,
)

ROLES = ("system", "human", "gpt")


class SampleError(ValueError):
    """A sample that cannot be used; ``reason`` says why, ``sample_id``/``where`` say which one."""

    def __init__(self, reason: str, sample_id: str | None = None, where: str | None = None):
        self.reason = reason
        self.sample_id = sample_id
        self.where = where
        head = ": ".join(p for p in (where, None if sample_id is None else f"sample {sample_id!r}") if p)
        super().__init__(f"{head}: {reason}" if head else reason)

    def __reduce__(self):  # picklable with its fields (worker processes send errors back)
        return (type(self), (self.reason, self.sample_id, self.where))


class MalformedSample(SampleError):
    """The line is not valid JSON (or not UTF-8)."""


class InvalidSample(SampleError):
    """Valid JSON that breaks the sample schema."""


class SampleTooLong(SampleError):
    """More tokens than ``max_length``; raised instead of truncating (which could cut an image)."""


class MediaError(SampleError):
    """An image or video that is missing or cannot be decoded."""


@dataclass
class Sample:
    """A validated sample.

    - ``id``: the record's ``id`` as a string (``where`` when the record has none).
    - ``conversations``: a copy of the turns with placeholders normalised (``<image>\\n`` /
      ``<video>\\n`` prepended to the first human turn where the reference does so).
    - ``images``: image paths as written in the record (relative to the dataset root; empty for
      video and pure text). ``multi_image`` is True when ``image`` was a list (even of one path):
      then the reference never auto-inserts a placeholder and divides the tile budget by the count.
    - ``video``: the video path (file, frame folder ending in ``/``, or gif), else None.
    - ``clip``: (start_s, end_s) for videos, else None.
    - ``image_sizes``: (width, height) hints per image, or None when the record has none.
    - ``where``: ``file.jsonl:LINE``; ``raw``: the record itself (untouched).
    """

    id: str
    conversations: list[dict[str, str]]
    images: list[str] = field(default_factory=list)
    video: str | None = None
    clip: tuple[float, float] | None = None
    image_sizes: list[tuple[int, int]] | None = None
    multi_image: bool = False
    where: str = ""
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def kind(self) -> str:
        """``"text"``, ``"image"`` (one or more images) or ``"video"``."""
        return "video" if self.video else "image" if self.images else "text"


def conversation_problem(conversations: Any, final_answer: bool = True) -> str | None:
    """Why ``conversations`` breaks the turn structure, or None when it is fine.

    Structure: an optional leading ``system`` turn, then ``human``/``gpt`` alternating, starting
    with ``human`` and (when ``final_answer``) ending with ``gpt``; every value a string.
    """
    if not conversations:
        return "'conversations' is missing or empty"
    if not isinstance(conversations, list):
        return f"'conversations' is a {type(conversations).__name__}, not a list"
    for i, turn in enumerate(conversations):
        if not isinstance(turn, dict):
            return f"turn {i} is a {type(turn).__name__}, not an object"
        role = turn.get("from")
        if role not in ROLES:
            return f"turn {i} has role {role!r}; expected one of {list(ROLES)}"
        if not isinstance(turn.get("value"), str):
            return f"turn {i} ({role}) value is {type(turn.get('value')).__name__}, not a string"
        if role == "system" and i != 0:
            return f"turn {i} is a system turn; a system turn may only come first"
    body = conversations[1:] if conversations[0]["from"] == "system" else conversations
    if not body:
        return "no human/gpt turns after the system turn"
    for i, turn in enumerate(body):
        expected = "human" if i % 2 == 0 else "gpt"
        if turn["from"] != expected:
            offset = len(conversations) - len(body)
            return f"turn {i + offset} is {turn['from']!r}, expected {expected!r} (human and gpt must alternate, starting with human)"
    if final_answer and body[-1]["from"] != "gpt":
        return "the last turn is 'human'; a training sample must end with a 'gpt' answer"
    return None


def _str_list(value: Any) -> list[str] | None:
    """``value`` as a list of non-empty strings, or None if it is not one."""
    if isinstance(value, str):
        return [value] if value else None
    if isinstance(value, list) and all(isinstance(v, str) and v for v in value):
        return list(value)
    return None


def _is_pos_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _image_sizes(record: dict, n: int, multi: bool) -> list[tuple[int, int]] | str | None:
    """Width/height hints (``width``/``height`` or ``width_list``/``height_list``); a str is a problem."""
    wk, hk = ("width_list", "height_list") if multi else ("width", "height")
    w, h = record.get(wk), record.get(hk)
    if w is None and h is None:
        return None
    if multi:
        if not (isinstance(w, list) and isinstance(h, list) and len(w) == len(h) == n):
            return f"'{wk}'/'{hk}' must be lists with one entry per image ({n})"
        pairs = list(zip(w, h))
    else:
        pairs = [(w, h)]
    if not all(_is_pos_int(a) and _is_pos_int(b) for a, b in pairs):
        return f"'{wk}'/'{hk}' must be positive integers, got {w!r}/{h!r}"
    return [(int(a), int(b)) for a, b in pairs]


def validate_sample(record: Any, where: str) -> Sample:
    """Check one JSONL record (see the module doc) and return its normalised :class:`Sample`.

    Raises :class:`InvalidSample` with a reason naming the sample id and ``where``.
    """
    if not isinstance(record, dict):
        raise InvalidSample(f"expected a JSON object, got {type(record).__name__}", None, where)
    rid = record.get("id", where)
    if not isinstance(rid, str | int) or isinstance(rid, bool):
        raise InvalidSample(f"'id' must be a string or integer, got {type(rid).__name__}", None, where)
    sid = str(rid)

    def bad(reason: str) -> InvalidSample:
        return InvalidSample(reason, sid, where)

    convs = record.get("conversations")
    problem = conversation_problem(convs)
    if problem:
        raise bad(problem)
    convs = [{"from": t["from"], "value": t["value"]} for t in convs]  # copy: never edit the raw record

    raw_image, raw_video = record.get("image"), record.get("video")
    images: list[str] = []
    if raw_image not in (None, "", []):  # the reference treats empty media as pure text
        images = _str_list(raw_image) or []
        if not images:
            raise bad(f"'image' must be a path or a list of paths, got {raw_image!r}")
    video = None
    if raw_video not in (None, ""):
        if not isinstance(raw_video, str):
            raise bad(f"'video' must be a path string, got {type(raw_video).__name__}")
        video = raw_video
    if images and video:
        raise bad("has both 'image' and 'video'; a sample holds one kind of media")

    clip = record.get("clip")
    if clip is not None:
        ok = isinstance(clip, list | tuple) and len(clip) == 2
        ok = ok and all(isinstance(c, int | float) and not isinstance(c, bool) for c in clip)
        if not ok or not 0 <= clip[0] < clip[1]:
            raise bad(f"'clip' must be [start_s, end_s] with 0 <= start < end, got {clip!r}")
        if not video:
            raise bad("'clip' is given but the sample has no 'video'")
        clip = (float(clip[0]), float(clip[1]))

    # Placeholders are only ever replaced in human turns: anywhere else they would stay text.
    # Literal image tokens in text would be read as special tokens and shift every image.
    for i, t in enumerate(convs):
        for tok in (IMG_START_TOKEN, IMG_END_TOKEN, IMG_CONTEXT_TOKEN):
            if tok in t["value"]:
                raise bad(
                    f"turn {i} ({t['from']}) contains the reserved token {tok!r}; use '<image>' placeholders"
                )
        if t["from"] != "human" and (IMAGE_PLACEHOLDER in t["value"] or VIDEO_PLACEHOLDER in t["value"]):
            raise bad(f"turn {i} ({t['from']}) contains a media placeholder; only human turns may")
    first_human = next(i for i, t in enumerate(convs) if t["from"] == "human")
    n_img = sum(t["value"].count(IMAGE_PLACEHOLDER) for t in convs)
    n_vid = sum(t["value"].count(VIDEO_PLACEHOLDER) for t in convs)
    multi = isinstance(raw_image, list) and bool(images)

    if video:
        if n_img:
            raise bad(f"video sample contains {n_img} '<image>' placeholder(s); use one '<video>'")
        if n_vid > 1:
            raise bad(f"video sample has {n_vid} '<video>' placeholders; expected exactly 1")
        if n_vid == 0:
            convs[first_human]["value"] = VIDEO_PLACEHOLDER + "\n" + convs[first_human]["value"]
    elif images:
        if n_vid:
            raise bad("image sample contains a '<video>' placeholder")
        if not multi:
            if n_img > 1:
                raise bad(f"single-image sample has {n_img} '<image>' placeholders; expected at most 1")
            if n_img == 0:
                convs[first_human]["value"] = IMAGE_PLACEHOLDER + "\n" + convs[first_human]["value"]
        elif n_img != len(images):
            raise bad(
                f"{len(images)} images but {n_img} '<image>' placeholders; they must match (no auto-insert for a list)"
            )
    elif n_img or n_vid:
        raise bad(
            f"pure-text sample contains {n_img} '<image>' and {n_vid} '<video>' placeholder(s) but no media"
        )

    sizes = _image_sizes(record, len(images), multi) if images else None
    if isinstance(sizes, str):
        raise bad(sizes)
    return Sample(sid, convs, images, video, clip, sizes, multi, where, record)


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict | SampleError]]:
    """Yield ``(line_no, record)`` for each non-blank line, streaming (never reads the whole file).

    A line that is not JSON yields a :class:`MalformedSample` ("file:line: malformed JSON: ...")
    instead of stopping the iteration, so a validator can report every bad line in one pass.
    """
    name = str(path)
    with open(path, "rb") as f:  # bytes, so one bad UTF-8 line is reported, not fatal
        for no, raw in enumerate(f, 1):
            where = f"{name}:{no}"
            try:
                text = raw.decode("utf-8-sig" if no == 1 else "utf-8")
            except UnicodeDecodeError as e:
                yield no, MalformedSample(f"not UTF-8: {e}", None, where)
                continue
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as e:
                yield no, MalformedSample(f"malformed JSON: {e}", None, where)
                continue
            if not isinstance(record, dict):
                yield no, InvalidSample(f"expected a JSON object, got {type(record).__name__}", None, where)
                continue
            yield no, record
