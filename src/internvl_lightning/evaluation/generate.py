"""Batched greedy generation for evaluation: our template, our tiling, HF ``generate`` with a KV cache.

A prompt is tokenized exactly as training tokenizes a conversation (``data.templates.tokenize`` with
an empty answer, cut where the answer starts), so BOS rules and image-token runs match training.
Prompts are left-padded into one batch; the pixel values of all images of the batch are
concatenated in prompt order, which is the order of their ``<IMG_CONTEXT>`` runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from transformers import GenerationConfig

from ..constants import ENDOFTEXT, IGNORE_INDEX, IM_END, IMAGE_PLACEHOLDER
from ..data.image import load_image
from ..data.templates import get_template, tokenize
from ..data.tiling import pixel_values
from ..model.config import tokens_per_tile, vision_geometry
from ..model.record import read_training_record

EVAL_MAX_NUM = 6  # tiles per image in InternVL's own evaluation scripts


@dataclass
class EvalSettings:
    """Prompt and image settings; the template and normalisation must be the ones used in training."""

    template: str = "internvl2_5"
    normalization: str = "imagenet"
    max_num: int = EVAL_MAX_NUM
    min_num: int = 1
    use_thumbnail: bool = True
    image_size: int = 448
    tokens_per_tile: int = 256
    system_message: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_settings(
    source: Any, model, max_num: int | None = None, template: str | None = None
) -> EvalSettings:
    """Settings for ``model``: the training record of ``source`` (a dir, or the record itself as a
    dict), else defaults.

    HF-native exports and stage outputs carry ``internvl_lightning.json``; original-layout dirs
    carry ``template`` / ``max_dynamic_patch`` in ``config.json``. The tile budget is
    ``max_num`` if given, else 6 (InternVL's evaluation setting), never above what training used.
    """
    is_dir = isinstance(source, str | Path) and Path(source).is_dir()
    info = source if isinstance(source, dict) else read_training_record(source) if is_dir else {}
    vcfg = model.config.vision_config
    size = vision_geometry(vcfg)[0]
    trained_max = int(info.get("max_dynamic_patch") or EVAL_MAX_NUM)
    return EvalSettings(
        template=template or info.get("template") or "internvl2_5",
        normalization=info.get("normalization") or "imagenet",
        max_num=max_num if max_num is not None else min(EVAL_MAX_NUM, trained_max),
        min_num=int(info.get("min_dynamic_patch") or 1),
        image_size=int(size),
        tokens_per_tile=tokens_per_tile(vcfg, model.config.downsample_ratio),
    )


@dataclass
class Request:
    """One question: user text with ``<image>`` placeholders and the images they stand for.

    ``images`` holds decoded images or ``(bytes_or_path, where)`` pairs decoded on use, so a large
    benchmark never sits decoded in memory; ``where`` names the file and row in errors.
    """

    text: str
    images: list[Any] = field(default_factory=list)


def _decode(image: Any) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    source, where = image
    return load_image(source, where)


def _conversation(req: Request) -> tuple[list[dict], int]:
    text = req.text
    missing = len(req.images) - text.count(IMAGE_PLACEHOLDER)
    if missing < 0:
        raise ValueError(f"prompt has more {IMAGE_PLACEHOLDER} placeholders than images: {text[:80]!r}")
    # Images without a placeholder go first, one per line (InternVL's chat() does the same).
    text = (IMAGE_PLACEHOLDER + "\n") * missing + text
    return [{"from": "human", "value": text}, {"from": "gpt", "value": ""}], len(req.images)


def encode_request(
    req: Request, tokenizer, settings: EvalSettings
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Prompt ids (ending with the open assistant turn) and the request's tiles (or None)."""
    conv, n = _conversation(req)
    tiles = []
    # Several images share the tile budget (each gets at least one tile), as InternVL's multi-image evals do.
    per_image = max(1, settings.max_num // max(n, 1))
    for image in req.images:
        tiles.append(
            pixel_values(
                _decode(image),
                min(settings.min_num, per_image),
                per_image,
                settings.image_size,
                settings.use_thumbnail,
                settings.normalization,
            )
        )
    counts = [t.shape[0] * settings.tokens_per_tile for t in tiles]
    ids, labels = tokenize(conv, tokenizer, settings.template, counts, system_message=settings.system_message)
    # The (empty) answer's first trained token is the end token: everything before it is the prompt.
    start = int((labels != IGNORE_INDEX).nonzero()[0])
    return ids[:start], (torch.cat(tiles) if tiles else None)


def stop_ids(tokenizer, template: str) -> list[int]:
    """Token ids that end an answer: the template's end-of-turn token and the tokenizer's EOS."""
    ids = []
    for token in (get_template(template).end, IM_END, ENDOFTEXT, tokenizer.eos_token):
        if token is None:
            continue
        enc = tokenizer.encode(token, add_special_tokens=False)
        if len(enc) == 1 and enc[0] not in ids:
            ids.append(enc[0])
    return ids


@torch.inference_mode()
def generate_batch(
    model, tokenizer, requests: Sequence[Request], settings: EvalSettings, max_new_tokens: int = 64
) -> list[str]:
    """Greedy answers to ``requests`` in one left-padded batch (decoded new tokens, stripped)."""
    encoded = [encode_request(r, tokenizer, settings) for r in requests]
    stops = stop_ids(tokenizer, settings.template)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    width = max(len(ids) for ids, _ in encoded)
    input_ids = torch.full((len(encoded), width), pad, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for i, (ids, _) in enumerate(encoded):
        input_ids[i, width - len(ids) :] = ids
        mask[i, width - len(ids) :] = 1
    device = model.device
    kwargs: dict[str, Any] = {}
    tiles = [t for _, t in encoded if t is not None]
    if tiles:
        kwargs["pixel_values"] = torch.cat(tiles).to(device=device, dtype=model.dtype)
    config = GenerationConfig(
        do_sample=False,
        num_beams=1,
        max_new_tokens=max_new_tokens,
        eos_token_id=stops,
        pad_token_id=pad,
        use_cache=True,
    )
    out = model.generate(
        input_ids=input_ids.to(device),
        attention_mask=mask.to(device),
        generation_config=config,
        **kwargs,
    )
    new = out[:, width:].cpu()
    answers = []
    for row in new.tolist():
        # Cut at the first stop token ourselves: finished rows are padded, and decode would keep text after it.
        cut = next((k for k, t in enumerate(row) if t in stops), len(row))
        answers.append(tokenizer.decode(row[:cut], skip_special_tokens=True).strip())
    return answers
