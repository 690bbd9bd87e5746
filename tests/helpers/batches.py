"""Tiny modules, packed samples and model inputs built from the tiny components."""

from __future__ import annotations

import lightning as L
import torch
from transformers import CONFIG_MAPPING, InternVLForConditionalGeneration

from internvl_lightning.data.packing import EncodedSample
from internvl_lightning.model.components import randomize_weights
from internvl_lightning.model.config import internvl_config, tokens_per_tile
from internvl_lightning.model.families import llm_family
from internvl_lightning.model.presets import LLM_PRESETS, VISION_PRESETS, text_config, vision_config
from internvl_lightning.training.module import InternVLChat


def make_module(components, **kwargs) -> InternVLChat:
    """An InternVLChat on (vision dir, LLM dir), its model built."""
    vision, llm = components
    module = InternVLChat(vision=str(vision), llm=str(llm), **kwargs)
    module.configure_model()
    return module


def fit_batches(module, batches, accumulate=1, callbacks=(), max_steps=1, **trainer) -> L.Trainer:
    """A quiet CPU ``Trainer`` (no logger, checkpoints or bars) fit on ``batches`` (already collated);
    ``trainer``: more Trainer arguments (e.g. a strategy, or a logger after all)."""
    loader = torch.utils.data.DataLoader(batches, batch_size=None, collate_fn=lambda b: b)
    quiet = dict(
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False
    )
    fit = L.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        devices=1,
        accumulate_grad_batches=accumulate,
        callbacks=list(callbacks),
        **(quiet | trainer),
    )
    fit.fit(module, train_dataloaders=loader)
    return fit


def make_sample(sid: str, n_text: int, tiles: int, model, seed: int) -> EncodedSample:
    """Random tokens with one image run of `tiles` tiles in the middle; the second half is trained."""
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    per_tile = tokens_per_tile(cfg.vision_config, cfg.downsample_ratio)
    vocab = cfg.image_token_id - 2  # ordinary tokens only
    text = torch.randint(5, vocab, (n_text,), generator=g)
    image = torch.full((tiles * per_tile,), cfg.image_token_id)
    ids = torch.cat([text[: n_text // 2], image, text[n_text // 2 :]])
    labels = ids.clone()
    labels[: len(ids) - n_text // 2] = -100
    size = cfg.vision_config.image_size[0]
    pixels = torch.randn(tiles, 3, size, size, generator=g)
    return EncodedSample(sid, "test", ids, labels, pixels, torch.ones(tiles, dtype=torch.long))


def vlm_inputs(model, tiles: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids (1, L) with one image run of ``tiles`` tiles, pixel values (tiles, 3, S, S))."""
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    per_tile = tokens_per_tile(cfg.vision_config, cfg.downsample_ratio)
    text = torch.randint(5, cfg.image_token_id - 2, (12,), generator=g)
    ids = torch.cat([text[:4], torch.full((tiles * per_tile,), cfg.image_token_id), text[4:]])[None]
    size = cfg.vision_config.image_size[0]
    return ids, torch.randn(tiles, 3, size, size, generator=g)


def model_logits(model, ids, pixels) -> torch.Tensor:
    """The model's own (full) logits, without gradients."""
    with torch.no_grad():
        return model(input_ids=ids, pixel_values=pixels).logits


def family_vlm(
    family: str,
    tie: bool = False,
    seed: int = 0,
    vocab: int = 320,
    image_token_id: int | None = None,
    vision: dict | None = None,
    select_layer: int = -1,
    **text,
) -> InternVLForConditionalGeneration:
    """A tiny random VLM (tiny ViT preset, ``vision`` overriding its config) whose LLM is of
    ``family`` (``qwen2``, ``qwen3``, ``llama``; ``internlm2`` runs as Llama), RoPE base 1e6, every
    weight perturbed off its init. ``image_token_id`` defaults to the last id."""
    preset = LLM_PRESETS["tiny"]
    cfg = text_config(preset, vocab_size=vocab, tie_word_embeddings=tie, **text)
    if family != "qwen2":
        values = {k: v for k, v in cfg.to_dict().items() if k not in ("model_type", "architectures")}
        cfg = CONFIG_MAPPING[llm_family(family).hf_model_type](**values)
    image_token = vocab - 1 if image_token_id is None else image_token_id
    vit = vision_config(VISION_PRESETS["tiny"], **(vision or {}))
    config = internvl_config(vit, cfg, image_token, 0.5, select_layer, tie)
    torch.manual_seed(seed)
    model = InternVLForConditionalGeneration(config).eval()
    randomize_weights(model, seed)
    return model
