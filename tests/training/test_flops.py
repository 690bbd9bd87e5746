"""`training/flops.py` against FLOPs counted by PyTorch while a tiny VLM takes one training step.

One unpacked sample and eager attention, so the count sees every matmul (sdpa kernels on CPU are
not counted) and full T^2 attention, the convention of the formula. Freezing parts must remove
exactly the work autograd skips: weight gradients of frozen parts, everything but the forward
of a frozen ViT.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import InternVLForConditionalGeneration

from internvl_lightning.model.config import tokens_per_tile
from internvl_lightning.model.forward import vlm_hidden_states
from internvl_lightning.model.lora import LLM_TARGETS, VIT_TARGETS, add_lora
from internvl_lightning.model.presets import VLM_PRESETS, vlm_config
from internvl_lightning.training.flops import FlopsModel, trained_parts

TRAINED = {  # stage -> parameter-name fragments that train
    "1": ("multi_modal_projector",),
    "1.5": ("multi_modal_projector", "vision_tower"),
    "2": ("",),
    "llm only": ("language_model", "lm_head"),
}


@pytest.fixture(scope="module")
def tiny():
    preset = VLM_PRESETS["tiny"]
    cfg = vlm_config(preset)
    torch.manual_seed(0)
    model = InternVLForConditionalGeneration._from_config(cfg, attn_implementation="eager").train()
    tiles, text = 3, 400
    per_tile = tokens_per_tile(preset.vision, preset.downsample_ratio)
    words = torch.randint(5, cfg.image_token_id - 2, (text,))
    image = torch.full((tiles * per_tile,), cfg.image_token_id)
    input_ids = torch.cat([words[: text // 2], image, words[text // 2 :]])[None]
    size = preset.vision.image_size
    pixels = torch.randn(tiles, 3, size, size)
    return model, input_ids, pixels, tiles


def counted_step_flops(model, input_ids, pixels) -> int:
    with FlopCounterMode(display=False) as counter:
        hidden = vlm_hidden_states(model, input_ids, None, pixels, torch.ones(len(pixels), dtype=torch.long))
        logits = model.lm_head(hidden)[0, :-1]
        torch.nn.functional.cross_entropy(logits, input_ids[0, 1:]).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


LORA = {  # case -> (ViT rank, LLM rank); the projector trains beside the adapters
    "vit lora": (1, 0),
    "llm lora": (0, 1),
}
EXPECTED_PARTS = {
    "1": {"vision": False, "mlp": True, "llm": False, "adapters": ()},
    "1.5": {"vision": True, "mlp": True, "llm": False, "adapters": ()},
    "2": {"vision": True, "mlp": True, "llm": True, "adapters": ()},
    "llm only": {"vision": False, "mlp": False, "llm": True, "adapters": ()},
    "vit lora": {"vision": False, "mlp": True, "llm": False, "adapters": ("vision",)},
    "llm lora": {"vision": False, "mlp": True, "llm": False, "adapters": ("llm",)},
}


@pytest.mark.parametrize("stage", sorted(EXPECTED_PARTS))
def test_formula_matches_counted_flops(tiny, stage):
    model, input_ids, pixels, tiles = tiny
    if stage in LORA:  # rank 1: the adapters' own products (left out of the formula) stay small
        model = copy.deepcopy(model)
        for name, p in model.named_parameters():
            p.requires_grad_("multi_modal_projector" in name)
        vit_rank, llm_rank = LORA[stage]
        if vit_rank:
            add_lora(model.model.vision_tower, VIT_TARGETS, vit_rank, dropout=0.0)
        if llm_rank:
            add_lora(model.model.language_model, LLM_TARGETS, llm_rank, dropout=0.0)
            model.lm_head.requires_grad_(False)
    else:
        for name, p in model.named_parameters():
            p.requires_grad_(any(part in name for part in TRAINED[stage]))
    parts = trained_parts(model)
    assert parts == EXPECTED_PARTS[stage]
    tokens = input_ids.shape[1]
    estimate = FlopsModel.from_model(model).step_flops(tokens, [tokens], tiles, **parts)
    counted = counted_step_flops(model, input_ids, pixels)
    # The formula also counts norms, biases and position embeddings as 6N: a few per cent here.
    assert estimate == pytest.approx(counted, rel=0.05), (stage, estimate / counted)


def test_frozen_parts_cost_less_and_default_is_stage_2(tiny):
    model, input_ids, _, tiles = tiny
    fm = FlopsModel.from_model(model)
    args = (2000, [1000, 1000], 12)
    full = fm.step_flops(*args)
    assert full == fm.step_flops(*args, vision=True, mlp=True, llm=True)
    stage1 = fm.step_flops(*args, vision=False, mlp=True, llm=False)
    stage15 = fm.step_flops(*args, vision=True, mlp=True, llm=False)
    assert stage1 < stage15 < full
    # Stage 1: ViT forward only (1/3 of its training cost), LLM dense terms 4N instead of 6N.
    v = fm.vit_tokens_per_tile
    vit_full = 12 * (6 * fm.vit_params * v + 12 * fm.vit_layers * fm.vit_hidden * v * v)
    llm_dense = 6 * fm.llm_params * 2000
    assert full - stage1 == pytest.approx(vit_full * 2 / 3 + llm_dense / 3)
