"""`model/compile.py`: per-block ``torch.compile`` computes what the eager model computes."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from transformers import InternVLForConditionalGeneration

from internvl_lightning.model.checkpointing import enable_activation_checkpointing
from internvl_lightning.model.compile import compile_blocks, transformer_blocks
from internvl_lightning.model.config import tokens_per_tile
from internvl_lightning.model.forward import vlm_hidden_states
from internvl_lightning.model.presets import VLM_PRESETS, vlm_config
from internvl_lightning.training.loss import weighted_loss
from internvl_lightning.training.module import InternVLChat
from internvl_lightning.training.strategy import ZeroStrategy


def tiny_model() -> InternVLForConditionalGeneration:
    torch.manual_seed(0)
    return InternVLForConditionalGeneration._from_config(
        vlm_config(VLM_PRESETS["tiny"]), attn_implementation="sdpa"
    )


def packed_batch(tiles: int, seed: int) -> dict:
    """Two samples in one 160-token pack (the first with `tiles` tiles), as the collator lays them out."""
    preset = VLM_PRESETS["tiny"]
    cfg = vlm_config(preset)
    g = torch.Generator().manual_seed(seed)
    image = torch.full((tiles * tokens_per_tile(preset.vision, preset.downsample_ratio),), cfg.image_token_id)
    first = torch.cat(
        [torch.randint(5, 900, (10,), generator=g), image, torch.randint(5, 900, (30,), generator=g)]
    )
    second = torch.randint(5, 900, (160 - len(first),), generator=g)
    size = preset.vision.image_size
    return {
        "input_ids": torch.cat([first, second])[None],
        "position_ids": torch.cat([torch.arange(len(first)), torch.arange(len(second))])[None],
        "pixel_values": torch.randn(tiles, 3, size, size, generator=g),
        "image_flags": torch.ones(tiles, dtype=torch.long),
    }


def loss_and_grads(model, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    hidden = vlm_hidden_states(
        model, batch["input_ids"], batch["position_ids"], batch["pixel_values"], batch["image_flags"]
    )
    loss, _ = weighted_loss(hidden, model.lm_head, batch["input_ids"], chunk_size=64)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return loss.detach(), grads


def test_blocks_are_found_and_missing_ones_named():
    model = tiny_model()
    assert len(transformer_blocks(model.model.vision_tower)) == 2
    assert len(transformer_blocks(model.model.language_model)) == 2
    with pytest.raises(AttributeError, match="Linear has none of"):
        transformer_blocks(torch.nn.Linear(2, 2))


@pytest.mark.slow
def test_compiled_blocks_match_eager_under_checkpointing():
    eager = tiny_model().train()
    compiled = copy.deepcopy(eager)
    for model in (eager, compiled):  # the recommended 16k setting: checkpointed ViT blocks
        enable_activation_checkpointing(model.model.vision_tower)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert compile_blocks(compiled) == 4
    # Two tile counts: the second one recompiles the ViT block with a dynamic tile dimension.
    for tiles, seed in ((2, 0), (3, 1)):
        batch = packed_batch(tiles, seed)
        want_loss, want_grads = loss_and_grads(eager, batch)
        got_loss, got_grads = loss_and_grads(compiled, batch)
        torch.testing.assert_close(got_loss, want_loss, rtol=1e-5, atol=1e-6)
        assert got_grads.keys() == want_grads.keys()
        for name, want in want_grads.items():
            torch.testing.assert_close(got_grads[name], want, rtol=1e-4, atol=1e-6, msg=name)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > graphs  # the blocks did run compiled


def test_module_refuses_compile_under_zero3():
    module = InternVLChat(preset="tiny", compile_blocks=True)
    module._trainer = SimpleNamespace(strategy=ZeroStrategy(stage=3), callbacks=[])
    with pytest.raises(ValueError, match="compile_blocks does not work with ZeRO-3"):
        module.configure_model()
