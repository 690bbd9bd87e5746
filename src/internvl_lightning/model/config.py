"""The composite model's config: the one place an ``InternVLConfig`` is put together.

Every way in (component dirs, presets, the original InternVL layout) ends here, so the settings
transformers' defaults would get wrong for InternVL are set in one function: the output layer is
tied only when the LLM says so, features come from ``select_layer`` with the CLS token dropped,
and one tile becomes ``tokens_per_tile`` image tokens.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transformers import InternVLConfig, PretrainedConfig


def _first(value: Any) -> int:
    return int(value[0] if isinstance(value, list | tuple) else value)


def vision_geometry(vision: Any) -> tuple[int, int]:
    """(image_size, patch_size) of a vision encoder described by a transformers config (sizes as
    pairs), an original InternViT config dict (plain ints), or a preset; InternViT's 448 / 14 when
    a dict leaves them out."""
    if isinstance(vision, Mapping):
        return _first(vision.get("image_size", 448)), _first(vision.get("patch_size", 14))
    return _first(vision.image_size), _first(vision.patch_size)


def tokens_per_tile(vision: Any, downsample_ratio: float = 0.5) -> int:
    """LLM tokens one tile becomes: (image_size / patch_size)^2 * downsample_ratio^2 (256 at 448/14)."""
    size, patch = vision_geometry(vision)
    return int((size // patch) ** 2 * downsample_ratio**2)


def internvl_config(
    vision_config: PretrainedConfig,
    text_config: PretrainedConfig,
    image_token_id: int,
    downsample_ratio: float = 0.5,
    select_layer: int = -1,
    tie_word_embeddings: bool | None = None,
) -> InternVLConfig:
    """The composite config. ``tie_word_embeddings`` defaults to the LLM config's own value and is
    written on both levels (transformers 5 defaults the top level to True and would tie otherwise)."""
    tie = bool(text_config.tie_word_embeddings if tie_word_embeddings is None else tie_word_embeddings)
    text_config.tie_word_embeddings = tie
    return InternVLConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_id=image_token_id,
        image_seq_length=tokens_per_tile(vision_config, downsample_ratio),
        downsample_ratio=downsample_ratio,
        projector_hidden_act="gelu",
        vision_feature_layer=select_layer,
        vision_feature_select_strategy="default",
        tie_word_embeddings=tie,
    )
