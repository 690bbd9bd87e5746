"""The options of an InternVL model that transformers' class lacks or only stores: feature layer,
pixel shuffle version, drop path, and which attention the ViT runs. Applied to every model we build
or load, whatever it was read from."""

from __future__ import annotations

from .drop_path import install_drop_path
from .pixel_shuffle import patch_pixel_shuffle


def apply_options(model, drop_path_rate: float, ps_version: str, select_layer: int):
    """Set the options on ``model`` (an ``InternVLForConditionalGeneration``) in place; return it."""
    n_layers = model.config.vision_config.num_hidden_layers
    if not -(n_layers + 1) <= select_layer <= n_layers:
        raise ValueError(f"select_layer {select_layer} out of range for a {n_layers}-layer vision encoder")
    model.config.vision_feature_layer = select_layer
    vision = model.model.vision_tower
    if vision.config._attn_implementation == "flex_attention":
        # Flex attention is for the LLM's packed block-diagonal masks. ViT tiles are fixed-length
        # and unmasked, where sdpa's flash kernel needs no compilation (as benchmarks/gpu.py ran).
        vision.set_attn_implementation("sdpa")
    patch_pixel_shuffle(model, ps_version)
    install_drop_path(model, drop_path_rate)
    return model
