"""A small InternVL for CPU benchmarks, and synthetic samples shaped like the realistic length mix.

Model: the tiny vision preset (64 px tiles, 8 px patches: 16 LLM tokens per tile after pixel shuffle)
with a Qwen2-style LLM of hidden 256 x 4 layers, written as component checkpoints with
``write_components`` and assembled with ``build_model``, exactly as users do.

Samples: ``realistic_length_mix`` scaled down by the ratio of tokens per tile (256 -> 16), so the
mix keeps its shape (image vs text share, spread of lengths) at a 16x smaller token budget:
16384 / 16 = 1024 tokens per pack, 48 tiles.
"""

from __future__ import annotations

from pathlib import Path

import torch

from internvl_lightning.data.length_mix import TOKENS_PER_TILE, realistic_length_mix
from internvl_lightning.data.packing import EncodedSample, Packer
from internvl_lightning.model.build import build_model
from internvl_lightning.model.components import write_components
from internvl_lightning.model.config import tokens_per_tile
from internvl_lightning.model.presets import VISION_PRESETS, LLMPreset, VLMPreset

SMALL_LLM = LLMPreset(
    name="bench-small",
    arch="qwen2",
    hidden_size=256,
    num_layers=4,
    num_heads=4,
    num_kv_heads=2,
    intermediate_size=704,
    vocab_size=1024,
    tokenizer_vocab=None,
    rope_theta=1e6,
    tie_word_embeddings=False,
    rms_norm_eps=1e-6,
    max_position_embeddings=4096,
)
SMALL_VLM = VLMPreset("bench-small", VISION_PRESETS["tiny"], SMALL_LLM)
PACK_TILES = 48


def small_components(out: Path) -> tuple[Path, Path]:
    """Vision + LLM checkpoint directories of the small model (random weights, local tokenizer)."""
    return write_components(SMALL_VLM, out, seed=0)


def small_model(components: tuple[Path, Path]):
    """The assembled VLM in train mode, fp32, sdpa attention."""
    vision, llm = components
    return build_model(vision=vision, llm=llm, seed=0).train()


def scale(model) -> int:
    """Token scale factor of the model vs the real 256 tokens per tile."""
    cfg = model.config
    return TOKENS_PER_TILE // tokens_per_tile(cfg.vision_config, cfg.downsample_ratio)


def pack_budget(model) -> int:
    return 16384 // scale(model)


def mix_samples(model, n: int, seed: int = 0) -> list[EncodedSample]:
    """``n`` samples of the scaled mix: text, one run of image tokens, text; the answer (second half
    of the text) is trained. Token ids are random ordinary tokens."""
    cfg = model.config
    per_tile = tokens_per_tile(cfg.vision_config, cfg.downsample_ratio)
    k = scale(model)
    size = cfg.vision_config.image_size[0]
    vocab = cfg.image_token_id - 2  # below InternVL's added tokens
    g = torch.Generator().manual_seed(seed)
    out = []
    for i, (tokens, tiles) in enumerate(realistic_length_mix(seed, n)):
        text = max(2, round((tokens - tiles * TOKENS_PER_TILE) / k))
        ids = torch.randint(5, vocab, (text,), generator=g)
        image = torch.full((tiles * per_tile,), cfg.image_token_id)
        prompt = text // 2
        input_ids = torch.cat([ids[:prompt], image, ids[prompt:]])
        labels = input_ids.clone()
        labels[: len(input_ids) - (text - prompt)] = -100
        pixels = torch.randn(tiles, 3, size, size, generator=g)
        out.append(
            EncodedSample(f"s{i}", "mix", input_ids, labels, pixels, torch.ones(tiles, dtype=torch.long))
        )
    return out


def packs_of(samples: list[EncodedSample], budget: int) -> list[list[EncodedSample]]:
    """Greedy packs (the library's default packer) at ``budget`` tokens / 48 tiles, buffer 20."""
    return [list(p) for p in Packer(budget, PACK_TILES, 20).pack(samples)]
