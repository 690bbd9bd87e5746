"""Chat templates (InternVL's MPT-style ones) and tokenization with exact label masks.

Rendering (InternVL's internvl_chat/internvl/conversation.py): ``system_prefix + system_message + sep``, then for every turn
``role + value + sep``, where ``sep = end + suffix`` (``<|im_end|>`` + ``"\\n"`` for ``internvl2_5``).

Labels: only answers and the token that ends them (``end``) are trained; role strings, the
``suffix`` after ``end``, the system prompt, user turns, image tokens and the BOS are -100.

How ids are built (for every template, unlike the reference, which only does it for
``internvl2_5`` and otherwise re-splits the whole string and silently drops samples on a
"tokenization mismatch"): the conversation is cut into alternating untrained / trained text
chunks at answer boundaries and each chunk is encoded on its own, so label boundaries are exact
by construction. This is also how the model meets answers at inference time: the prompt is
encoded up to ``assistant\\n`` and the answer is generated after it, so nothing merges across that
boundary. Where the tokenizer merges nothing across boundaries, the ids equal encoding the whole
rendered string (tested). Chunks after the first are encoded behind the template's end token
(a special token, which splits the input) and that id is dropped, so tokenizers that add a
prefix space at the start of every encode call (SentencePiece style) see them as mid-text.

Image context runs are never run through BPE: each image is encoded as
``<img><IMG_CONTEXT></img>`` and its single context id is then repeated ``num_image_tokens[i]``
times (``tokens_per_tile x tiles``: 256 per tile for real models, fewer for tiny debug ones).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..constants import (
    IGNORE_INDEX,
    IM_END,
    IM_START,
    IMAGE_PLACEHOLDER,
    IMG_CONTEXT_TOKEN,
    IMG_END_TOKEN,
    IMG_START_TOKEN,
    VIDEO_PLACEHOLDER,
)
from ..tokenizer import check_chat_tokens
from .schema import InvalidSample, SampleTooLong, conversation_problem


@dataclass(frozen=True)
class ChatTemplate:
    """One MPT-style template: ``system_prefix + message + sep``, then ``role + value + sep`` per turn."""

    name: str
    system_prefix: str
    system_message: str
    user: str
    assistant: str
    end: str  # ends every turn; trained after an answer
    suffix: str = ""  # text after ``end`` in every turn; never trained
    strip_values: bool = False  # internlm2-chat strips every human/gpt value (as the reference does)
    markers: tuple[str, ...] = (IM_START, IM_END)  # must each be one token in the tokenizer

    @property
    def sep(self) -> str:
        return self.end + self.suffix


_INTERNVL_SYSTEM = "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"
_INTERNLM_SYSTEM = "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。"
_IM = dict(
    system_prefix=f"{IM_START}system\n",
    user=f"{IM_START}user\n",
    assistant=f"{IM_START}assistant\n",
    end=IM_END,
)

TEMPLATES: dict[str, ChatTemplate] = {
    t.name: t
    for t in (
        ChatTemplate("internvl2_5", system_message=_INTERNVL_SYSTEM, suffix="\n", **_IM),
        ChatTemplate("Hermes-2", system_message=_INTERNLM_SYSTEM, **_IM),
        ChatTemplate("internlm2-chat", system_message=_INTERNLM_SYSTEM, strip_values=True, **_IM),
        ChatTemplate(
            "phi3-chat",
            system_prefix="<|system|>\n",
            system_message=_INTERNLM_SYSTEM,
            user="<|user|>\n",
            assistant="<|assistant|>\n",
            end="<|end|>",
            markers=("<|system|>", "<|user|>", "<|assistant|>", "<|end|>"),
        ),
    )
}


def get_template(template: str | ChatTemplate) -> ChatTemplate:
    """Look a template up by name (a :class:`ChatTemplate` passes through)."""
    if isinstance(template, ChatTemplate):
        return template
    if template not in TEMPLATES:
        raise ValueError(f"unknown chat template {template!r}; known: {sorted(TEMPLATES)}")
    return TEMPLATES[template]


def image_string(n: int) -> str:
    """The text one image becomes: ``<img>`` + ``<IMG_CONTEXT>`` * n + ``</img>``."""
    return IMG_START_TOKEN + IMG_CONTEXT_TOKEN * n + IMG_END_TOKEN


def expand_video(conversations: list[dict], num_frames: int) -> list[dict]:
    """Replace the ``<video>`` placeholder by ``Frame-1: <image>\\nFrame-2: <image>\\n...`` (a copy).

    Training data uses ``Frame-{i}`` with a hyphen (InternVL's video prompts); each frame is one image of one tile.
    """
    frames = "\n".join(f"Frame-{i + 1}: {IMAGE_PLACEHOLDER}" for i in range(num_frames))
    out = []
    for turn in conversations:
        value = turn["value"]
        if turn["from"] == "human" and VIDEO_PLACEHOLDER in value:
            value = value.replace(VIDEO_PLACEHOLDER, frames, 1)
        out.append({"from": turn["from"], "value": value})
    return out


def _pieces(
    conversations: Sequence[dict],
    tpl: ChatTemplate,
    system_message: str | None,
    image_text: Callable[[int], str] | None,
    add_generation_prompt: bool = False,
) -> tuple[list[tuple[str, bool]], int]:
    """The rendered conversation as (text, trained) chunks and the image count.

    The first chunk is the system block alone (so ``tokenize`` can cache its ids); after it
    untrained and trained chunks alternate, each trained one being ``answer + end``.

    ``<image>`` in human turns becomes ``image_text(k)`` for the k-th image (kept when None).
    A leading system turn beats ``system_message``, which beats the template's default.
    """
    turns = list(conversations)
    if turns and turns[0]["from"] == "system":
        system_message = turns.pop(0)["value"]
    elif system_message is None:
        system_message = tpl.system_message
    chunks = [(tpl.system_prefix + system_message + tpl.sep, False)]
    pending: list[str] = []  # untrained text not yet flushed
    n_images = 0
    for turn in turns:
        value = turn["value"].strip() if tpl.strip_values else turn["value"]
        if turn["from"] == "human":
            if image_text is not None and IMAGE_PLACEHOLDER in value:
                parts = value.split(IMAGE_PLACEHOLDER)
                value = parts[0]
                for part in parts[1:]:
                    value += image_text(n_images) + part
                    n_images += 1
            else:
                n_images += value.count(IMAGE_PLACEHOLDER)
            pending += [tpl.user, value, tpl.sep]
        else:
            pending.append(tpl.assistant)
            chunks.append(("".join(pending), False))
            chunks.append((value + tpl.end, True))
            pending = [tpl.suffix]
    if add_generation_prompt and turns and turns[-1]["from"] == "human":
        pending.append(tpl.assistant)
    if "".join(pending):
        chunks.append(("".join(pending), False))
    return chunks, n_images


def _check_counts(num_image_tokens: Sequence[int] | None, n_images: int, sample_id: str | None) -> list[int]:
    counts = list(num_image_tokens or [])
    if len(counts) != n_images:
        raise InvalidSample(
            f"{n_images} '<image>' placeholder(s) in human turns but {len(counts)} entries in num_image_tokens",
            sample_id,
        )
    if any(not isinstance(n, int) or n < 1 for n in counts):
        raise InvalidSample(f"num_image_tokens must be positive integers, got {counts}", sample_id)
    return counts


def render(
    conversations: Sequence[dict],
    template: str | ChatTemplate = "internvl2_5",
    num_image_tokens: Sequence[int] | None = None,
    system_message: str | None = None,
    add_generation_prompt: bool = False,
) -> str:
    """The conversation as the model's text.

    With ``num_image_tokens`` every ``<image>`` in a human turn (in order) becomes
    ``<img>`` + ``<IMG_CONTEXT>`` * n + ``</img>`` (the list length must match); with None the
    placeholders are kept. A conversation ending with a human turn renders as a prompt; with
    ``add_generation_prompt`` the assistant role is appended (open turn, as at inference).
    """
    tpl = get_template(template)
    problem = conversation_problem(list(conversations), final_answer=False)
    if problem:
        raise InvalidSample(problem)
    counts = list(num_image_tokens) if num_image_tokens is not None else None
    image_text = None if counts is None else (lambda k: image_string(counts[k]) if k < len(counts) else "")
    chunks, n_images = _pieces(conversations, tpl, system_message, image_text, add_generation_prompt)
    if counts is not None:
        _check_counts(counts, n_images, None)
    return "".join(text for text, _ in chunks)


@dataclass
class _TokInfo:
    """What ``tokenize`` needs to know about a tokenizer, checked once per tokenizer and template."""

    vocab_size: int
    anchor: int  # id of the template's end token, encoded before every chunk but the first
    bos: int | None  # the BOS the tokenizer adds by itself (InternLM2 style), else None
    img_ids: tuple[int, int, int] | None  # <img>, <IMG_CONTEXT>, </img> when all are single tokens
    backend: object | None  # the Rust tokenizer: several times less overhead per call than __call__
    system_ids: dict[str, list[int]] = field(default_factory=dict)  # cache: system block -> ids


_INFO: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _vocab_size(tokenizer) -> int:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return backend.get_vocab_size(with_added_tokens=True) if backend is not None else len(tokenizer)


def _tok_info(tokenizer, tpl: ChatTemplate) -> _TokInfo:
    # Cached because these checks cost more than tokenizing a short sample; the vocab size is
    # part of the key so that adding tokens later (add_vlm_tokens) refreshes the entry.
    size = _vocab_size(tokenizer)
    per_tok = _INFO.get(tokenizer)
    if per_tok is None or per_tok[0] != size:
        per_tok = (size, {})
        _INFO[tokenizer] = per_tok
    if tpl.name in per_tok[1]:
        return per_tok[1][tpl.name]
    check_chat_tokens(tokenizer, f"chat template {tpl.name!r}", tpl.markers)
    backend = getattr(tokenizer, "backend_tokenizer", None)

    def encode(text: str) -> list[int]:
        return _encode(tokenizer, backend, text)

    anchor = encode(tpl.end)[0]
    probe = tokenizer.encode("a", add_special_tokens=True)  # tokenizer.add_bos_token is unreliable (v5)
    bos_id = tokenizer.bos_token_id
    bos = bos_id if bos_id is not None and probe and probe[0] == bos_id else None
    img = [encode(t) for t in (IMG_START_TOKEN, IMG_CONTEXT_TOKEN, IMG_END_TOKEN)]
    img_ids = tuple(i[0] for i in img) if all(len(i) == 1 for i in img) else None
    info = _TokInfo(size, anchor, bos, img_ids, backend)  # no reference to the tokenizer: weak cache
    per_tok[1][tpl.name] = info
    return info


def _encode(tokenizer, backend, text: str) -> list[int]:
    if backend is not None:
        return backend.encode(text, add_special_tokens=False).ids
    return tokenizer.encode(text, add_special_tokens=False)


def tokenize(
    conversations: Sequence[dict],
    tokenizer,
    template: str | ChatTemplate = "internvl2_5",
    num_image_tokens: Sequence[int] | None = None,
    max_length: int | None = None,
    *,
    system_message: str | None = None,
    sample_id: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and labels (1-D LongTensors) of one conversation; see the module doc.

    Raises :class:`SampleTooLong` past ``max_length`` (never truncates) and
    :class:`InvalidSample` for a broken conversation or a wrong number of image token counts.
    """
    tpl = get_template(template)
    problem = conversation_problem(list(conversations))
    if problem:
        raise InvalidSample(problem, sample_id)
    info = _tok_info(tokenizer, tpl)
    marker = image_string(1)  # widened to counts[k] context tokens after encoding
    chunks, n_images = _pieces(conversations, tpl, system_message, lambda k: marker)
    counts = _check_counts(num_image_tokens, n_images, sample_id)
    if n_images and info.img_ids is None:
        raise ValueError(
            "tokenizer lacks <img>/<IMG_CONTEXT>/</img> as single tokens; call add_vlm_tokens() first"
        )
    if max_length is not None and sum(counts) + 2 * len(counts) > max_length:  # fail before any BPE work
        raise SampleTooLong(f"image tokens alone ({sum(counts)}) exceed max_length {max_length}", sample_id)

    # One encode call per chunk (encode_batch's thread pool costs more than it saves here).
    system_text = chunks[0][0]
    system_ids = info.system_ids.get(system_text)
    if system_ids is None:
        if len(info.system_ids) >= 64:  # per-sample system prompts: keep the cache bounded
            info.system_ids.clear()
        system_ids = info.system_ids[system_text] = _encode(tokenizer, info.backend, system_text)
    ids: list[int] = ([] if info.bos is None else [info.bos]) + system_ids
    labels: list[int] = [IGNORE_INDEX] * len(ids)
    for text, trained in chunks[1:]:
        chunk_ids = _encode(tokenizer, info.backend, tpl.end + text)
        if not chunk_ids or chunk_ids[0] != info.anchor:
            raise RuntimeError(f"tokenizer did not keep {tpl.end!r} as one leading token")
        chunk_ids = chunk_ids[1:]  # drop the anchor
        ids += chunk_ids
        labels += chunk_ids if trained else [IGNORE_INDEX] * len(chunk_ids)
    # Each image is one <IMG_CONTEXT> id so far; widen it to its run with one np.repeat instead of
    # building and converting a Python list of up to 16k ids (numpy: torch's multi-threaded ops
    # stall for milliseconds on a busy machine).
    ids_np = np.array(ids, dtype=np.int64)
    labels_np = np.array(labels, dtype=np.int64)
    is_ctx = ids_np == info.img_ids[1] if info.img_ids is not None else np.zeros(len(ids), dtype=bool)
    found = int(is_ctx.sum())
    if found != len(counts) or (labels_np[is_ctx] != IGNORE_INDEX).any():
        raise InvalidSample(f"text contains the reserved token {IMG_CONTEXT_TOKEN}", sample_id)
    total = len(ids) - found + sum(counts)
    if max_length is not None and total > max_length:
        raise SampleTooLong(
            f"{total} tokens > max_length {max_length} ({sum(counts)} image tokens)", sample_id
        )
    if counts:
        reps = np.ones(len(ids), dtype=np.int64)
        reps[is_ctx] = counts
        ids_np, labels_np = np.repeat(ids_np, reps), np.repeat(labels_np, reps)
    return torch.from_numpy(ids_np), torch.from_numpy(labels_np)


@dataclass(frozen=True)
class LabelRun:
    """A run of tokens alike in being trained and in being ``<IMG_CONTEXT>``: decoded text, or an image run."""

    text: str  # decoded tokens (empty for an image run)
    trained: bool
    image_tokens: int = 0  # length of an ``<IMG_CONTEXT>`` run (0: a text run)


def label_runs(input_ids, labels, tokenizer, image_token: str = IMG_CONTEXT_TOKEN) -> list[LabelRun]:
    """Split a sample into maximal runs of trained / untrained text and ``<IMG_CONTEXT>`` runs.

    Each run is decoded separately, so a multi-byte character split across a run boundary shows
    as replacement characters.
    """
    ids = input_ids.tolist() if hasattr(input_ids, "tolist") else list(input_ids)
    labs = labels.tolist() if hasattr(labels, "tolist") else list(labels)
    ctx = tokenizer.convert_tokens_to_ids(image_token)
    out: list[LabelRun] = []
    i = 0
    while i < len(ids):
        key = (labs[i] != IGNORE_INDEX, ids[i] == ctx)
        j = i + 1
        while j < len(ids) and (labs[j] != IGNORE_INDEX, ids[j] == ctx) == key:
            j += 1
        if key[1]:
            out.append(LabelRun("", key[0], j - i))
        else:
            out.append(LabelRun(tokenizer.decode(ids[i:j], skip_special_tokens=False), key[0]))
        i = j
    return out


def render_with_labels(input_ids, labels, tokenizer, image_token: str = IMG_CONTEXT_TOKEN) -> str:
    """Decoded tokens with trained spans in ``[[...]]`` and ``<IMG_CONTEXT>`` runs as ``<IMG_CONTEXT>×N``.

    For previewing data (:func:`label_runs`).
    """
    out = []
    for run in label_runs(input_ids, labels, tokenizer, image_token):
        text = f"{image_token}×{run.image_tokens}" if run.image_tokens else run.text
        out.append(f"[[{text}]]" if run.trained else text)
    return "".join(out)
