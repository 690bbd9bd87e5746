"""LoRA adapters (`model/lora.py`): exact start, what trains, merged exports, checkpoint reloads."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from transformers import AutoModelForImageTextToText

from internvl_lightning.data.collate import PackingCollator
from internvl_lightning.export import export_hf, export_original
from internvl_lightning.model.build import build_model
from internvl_lightning.model.load import load_original
from internvl_lightning.model.lora import (
    LLM_TARGETS,
    LoRALinear,
    add_lora,
    add_vlm_lora,
    merged_state_dict,
)
from internvl_lightning.tokenizer import load_tokenizer
from internvl_lightning.training.checkpoint import load_lightning_checkpoint
from internvl_lightning.training.freeze import FreezeSchedule
from internvl_lightning.training.module import InternVLChat
from internvl_lightning.training.strategy import ZeroStrategy
from tests.helpers.batches import make_sample, vlm_inputs


def _logits(model, ids, pixels):
    """Eval mode first: a new adapter's dropout starts in training mode whatever its parent's mode."""
    with torch.no_grad():
        return model.eval()(input_ids=ids, pixel_values=pixels).logits


def _randomise_adapters(model, seed: int = 1) -> None:
    """B starts at zero (an exact no-op); give it values so merges have something to fold in."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, LoRALinear):
            with torch.no_grad():
                m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * 0.05)


@pytest.fixture(scope="module")
def base(tiny_components):
    return build_model(*tiny_components)


def test_fresh_adapters_change_nothing_and_only_they_train(base):
    model = copy.deepcopy(base)
    ids, pixels = vlm_inputs(model)
    before = _logits(model, ids, pixels)
    assert add_vlm_lora(model, vit_rank=4, llm_rank=4) == {"vision": 2 * 6, "llm": 2 * 7}  # 2 layers each
    assert torch.equal(_logits(model, ids, pixels), before)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(
        n.rsplit(".", 1)[-1] in ("lora_A", "lora_B") for n in trainable if "projector" not in n
    )
    assert any("multi_modal_projector" in n for n in trainable)  # the projector is not adapted, still trains
    layer = model.model.language_model.layers[0].self_attn.q_proj
    assert layer.scaling == 2.0 and layer.lora_A.shape == (4, layer.base.in_features)  # alpha = 2r


def test_adapters_are_the_same_under_a_default_device_context(base):
    """Lightning builds models under `torch.device(<accelerator>)`: the adapters must still land
    on the weights' device with the seeded values (a CUDA default device once broke the CPU draw)."""
    plain, scoped = copy.deepcopy(base), copy.deepcopy(base)
    add_vlm_lora(plain, 2, 2)
    with torch.device("meta"):
        add_vlm_lora(scoped, 2, 2)
    for (name, a), (_, b) in zip(plain.named_parameters(), scoped.named_parameters()):
        assert b.device == a.device and torch.equal(a, b), name


def test_merged_weights_compute_what_the_adapters_compute(base):
    model = copy.deepcopy(base)
    add_lora(model.model.language_model, LLM_TARGETS, rank=2, dropout=0.0)
    _randomise_adapters(model)
    layer = model.model.language_model.layers[1].mlp.down_proj
    x = torch.randn(3, layer.base.in_features)
    torch.testing.assert_close(
        layer(x), torch.nn.functional.linear(x, layer.merged_weight(), layer.base.bias)
    )
    state = merged_state_dict(model)
    assert state.keys() == base.state_dict().keys()  # the unadapted layout, no lora_ names
    plain = copy.deepcopy(base)
    plain.load_state_dict(state)
    ids, pixels = vlm_inputs(model)
    torch.testing.assert_close(_logits(plain, ids, pixels), _logits(model, ids, pixels), atol=1e-5, rtol=1e-5)


def test_exports_merge_the_adapters(base, tiny_components, tmp_path):
    model = copy.deepcopy(base)
    add_vlm_lora(model, vit_rank=2, llm_rank=2)
    _randomise_adapters(model)
    ids, pixels = vlm_inputs(model)
    want = _logits(model, ids, pixels)
    tok = load_tokenizer(tiny_components[1])
    hf = AutoModelForImageTextToText.from_pretrained(export_hf(model, tmp_path / "hf", tok))
    torch.testing.assert_close(_logits(hf, ids, pixels), want, atol=1e-5, rtol=1e-5)
    original = load_original(export_original(model, tmp_path / "original", tok))
    torch.testing.assert_close(_logits(original, ids, pixels), want, atol=1e-5, rtol=1e-5)


def test_training_moves_adapters_only_and_checkpoints_reload(tiny_components, tmp_path):
    vision, llm = tiny_components
    module = InternVLChat(vision=str(vision), llm=str(llm), llm_lora_rank=4, vit_lora_rank=2, lr=1e-2)
    module.configure_model()
    start = {n: p.detach().clone() for n, p in module.model.named_parameters()}
    collate = PackingCollator(image_size=module.model.config.vision_config.image_size[0])
    batch = collate([[make_sample("a", 12, 1, module.model, 1), make_sample("b", 20, 2, module.model, 2)]])
    trainer = L.Trainer(
        max_steps=2, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path,
        callbacks=[FreezeSchedule()],  # stage 2 flags: everything would train, but adapted parts keep to adapters
    )  # fmt: skip
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader([batch, batch], batch_size=None))
    moved = {n for n, p in module.model.named_parameters() if not torch.equal(p, start[n])}
    assert any(n.endswith("lora_B") for n in moved)
    assert any("multi_modal_projector" in n for n in moved)
    assert all(n.endswith(("lora_A", "lora_B")) or "multi_modal_projector" in n for n in moved), moved
    # A Lightning checkpoint rebuilds the adapters from the hyperparameters and reloads them.
    ckpt = tmp_path / "lora.ckpt"
    trainer.save_checkpoint(ckpt)
    reloaded, _ = load_lightning_checkpoint(ckpt)
    ids, pixels = vlm_inputs(reloaded)
    assert torch.equal(_logits(reloaded, ids, pixels), _logits(module.model, ids, pixels))


def test_bad_settings_are_named(base):
    with pytest.raises(ValueError, match="rank must be >= 1"):
        add_lora(copy.deepcopy(base).model.language_model, LLM_TARGETS, rank=0)
    with pytest.raises(ValueError, match="no LoRA target"):
        add_lora(copy.deepcopy(base).model.multi_modal_projector, LLM_TARGETS, rank=2)
    module = InternVLChat(preset="tiny", llm_lora_rank=4)
    module._trainer = SimpleNamespace(strategy=ZeroStrategy(stage=3), callbacks=[])
    with pytest.raises(ValueError, match="LoRA adapters are not supported with ZeRO-3"):
        module.configure_model()
