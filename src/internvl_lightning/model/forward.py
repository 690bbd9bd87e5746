"""The training-side forward: packed tokens + tiles -> last hidden states (never logits).

transformers' `InternVLForConditionalGeneration.forward` computes logits for every position and
expects every tile to be real. Training needs two things it lacks:
  * dummy tiles (`image_flags == 0`, carried by text-only packs so every rank runs the vision
    tower and ZeRO/DDP see the same graph) must pass through the ViT but be dropped afterwards;
  * the loss is computed from hidden states in chunks (see `training/loss.py`), so we stop
    before `lm_head`.
Packed samples stay independent because `position_ids` restart per sample, `attention_mask`
is None and no cache is passed: transformers then builds a block-diagonal causal mask.
"""

from __future__ import annotations

import torch
from transformers import InternVLForConditionalGeneration


def image_features(model: InternVLForConditionalGeneration, pixel_values: torch.Tensor) -> torch.Tensor:
    """(N_tiles, 3, S, S) -> (N_tiles, tokens_per_tile, D_llm) through ViT, pixel shuffle and projector."""
    cfg = model.config
    kwargs = dict(
        pixel_values=pixel_values,
        vision_feature_layer=cfg.vision_feature_layer,
        vision_feature_select_strategy=cfg.vision_feature_select_strategy,
    )
    try:  # transformers >= 5.2x: an output object, whose pooler_output holds the features
        out = model.model.get_image_features(**kwargs, return_dict=True)
    except TypeError:  # earlier 5.x: no return_dict, the features tensor itself
        out = model.model.get_image_features(**kwargs)
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def vlm_hidden_states(
    model: InternVLForConditionalGeneration,
    input_ids: torch.Tensor,
    position_ids: torch.Tensor | None,
    pixel_values: torch.Tensor | None,
    image_flags: torch.Tensor | None,
) -> torch.Tensor:
    """Return the LLM's last hidden states (B, L, D) for a (packed) batch.

    `<IMG_CONTEXT>` positions (config.image_token_id) are filled, in order, with the features of
    the real tiles; their count must equal real_tiles x tokens_per_tile.
    """
    embed = model.get_input_embeddings()
    inputs_embeds = embed(input_ids)  # (B, L, D)
    if pixel_values is not None and pixel_values.numel() > 0:
        feats = image_features(model, pixel_values)  # (N, T, D)
        if image_flags is not None:
            keep = image_flags.to(torch.bool)
            # `0 * sum` keeps dropped tiles (and the whole tower) in the autograd graph, so
            # distributed gradient reduction sees identical parameter sets on every rank.
            anchor = feats[~keep].sum() * 0.0
            feats = feats[keep]
        else:
            anchor = feats.new_zeros(())
        mask = input_ids == model.config.image_token_id  # (B, L)
        n_slots = int(mask.sum())
        if n_slots != feats.shape[0] * feats.shape[1]:
            raise ValueError(
                f"batch has {n_slots} <IMG_CONTEXT> tokens but {feats.shape[0]} real tiles x "
                f"{feats.shape[1]} tokens = {feats.shape[0] * feats.shape[1]} image features; "
                "the data's tokens_per_tile must match the model (image_size, patch_size, downsample_ratio)"
            )
        feats = feats.reshape(-1, feats.shape[-1]).to(inputs_embeds.dtype)
        inputs_embeds = inputs_embeds.masked_scatter(mask.unsqueeze(-1), feats) + anchor.to(
            inputs_embeds.dtype
        )
    out = model.model.language_model(
        inputs_embeds=inputs_embeds,
        position_ids=position_ids,
        attention_mask=None,
        use_cache=False,
    )
    return out.last_hidden_state
