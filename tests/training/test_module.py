"""InternVLChat on tiny components: packing exactness, accumulation, freezing."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from internvl_lightning.data.accumulate import StepWindow
from internvl_lightning.data.collate import PackingCollator
from internvl_lightning.training.freeze import FreezeSchedule
from internvl_lightning.training.loss import weighted_loss
from internvl_lightning.training.module import InternVLChat
from tests.helpers.batches import fit_batches, make_module, make_sample


@pytest.fixture(scope="module")
def module(tiny_components):
    m = make_module(tiny_components)
    m.model.eval()
    return m


@pytest.mark.parametrize("reduction", ["token", "sample", "square"])
def test_packed_equals_one_by_one(module, reduction):
    """(c) per-sample losses and the gradient of the packed loss equal the unpacked computation."""
    model = module.model
    samples = [
        make_sample("a", 11, 1, model, 1),
        make_sample("b", 9, 0, model, 2),
        make_sample("c", 14, 2, model, 3),
    ]
    collate = PackingCollator(loss_reduction=reduction, image_size=model.config.vision_config.image_size[0])
    params = [p for p in model.parameters() if p.requires_grad]

    packed = collate([samples])
    per_sample = module.sample_losses(packed)
    loss, _ = weighted_loss(module(packed), model.lm_head, packed["labels"], packed["loss_weight"])
    grads = torch.autograd.grad(loss, params, allow_unused=True)

    numerator, denominator = 0.0, 0.0
    for i, s in enumerate(samples):
        single = collate([[s]])
        alone = module.sample_losses(single)[0]
        torch.testing.assert_close(per_sample[i], alone, atol=1e-5, rtol=1e-5)
        # The weight of a sample does not depend on its pack, so the packed numerator is a sum.
        loss_s, wsum_s = weighted_loss(module(single), model.lm_head, single["labels"], single["loss_weight"])
        numerator = numerator + loss_s * wsum_s
        denominator = denominator + wsum_s
    ref_grads = torch.autograd.grad(numerator / denominator, params, allow_unused=True)
    for g, r in zip(grads, ref_grads):
        if g is None or r is None:
            assert g is None or not g.any()
            continue
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-4)


class GradCapture(L.Callback):
    def __init__(self):
        self.grads = None

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.grads = {n: p.grad.clone() for n, p in pl_module.model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("reduction", ["token", "square"])
def test_accumulation_equals_combined_batch(tiny_components, reduction):
    """(d) two micro-batches accumulated give the gradient of one batch holding both packs."""
    ref = make_module(tiny_components)
    collate = PackingCollator(
        loss_reduction=reduction, image_size=ref.model.config.vision_config.image_size[0]
    )
    pack1 = [make_sample("a", 12, 1, ref.model, 1), make_sample("b", 7, 0, ref.model, 2)]
    pack2 = [make_sample("c", 20, 2, ref.model, 3)]

    combined = GradCapture()
    fit_batches(make_module(tiny_components), [collate([pack1, pack2])], callbacks=[combined])
    accumulated = GradCapture()
    micro = list(StepWindow([collate([pack1]), collate([pack2])], steps=lambda: 2))
    fit_batches(make_module(tiny_components), micro, accumulate=2, callbacks=[accumulated])

    assert combined.grads.keys() == accumulated.grads.keys()
    for name, g in combined.grads.items():
        torch.testing.assert_close(accumulated.grads[name], g, atol=1e-6, rtol=1e-4, msg=name)


STAGES = {
    "stage1": (dict(freeze_llm=True, freeze_backbone=True), {"mlp"}),
    "stage1.5": (dict(freeze_llm=True), {"vision", "mlp"}),
    "stage2": (dict(), {"vision", "mlp", "llm"}),
    "head_only": (
        dict(freeze_llm=True, freeze_backbone=True, freeze_mlp=True, unfreeze_lm_head=True),
        {"lm_head"},
    ),
}


def _component(name: str) -> str:
    if name.startswith("model.vision_tower"):
        return "vision"
    if name.startswith("model.multi_modal_projector"):
        return "mlp"
    if name.startswith("lm_head"):
        return "lm_head"
    return "llm"


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_freeze_flags_after_a_step(tiny_components, stage):
    """(e) frozen tensors are bit-identical after a step, trainable ones changed; no state for frozen ones."""
    flags, trains = STAGES[stage]
    module = make_module(
        tiny_components, lr=1e-2, gradient_checkpointing_vit=True, gradient_checkpointing_llm=True
    )
    cb = FreezeSchedule(**flags)
    cb.apply(module.model)
    before = {n: p.detach().clone() for n, p in module.model.named_parameters()}
    collate = PackingCollator(image_size=module.model.config.vision_config.image_size[0])
    batch = collate([[make_sample("a", 16, 1, module.model, 1), make_sample("b", 10, 0, module.model, 2)]])
    trainer = fit_batches(module, [batch], callbacks=[cb])
    opt = trainer.optimizers[0]
    with_state = {id(p) for p in opt.state}
    for name, p in module.model.named_parameters():
        comp = _component(name)
        expect_train = comp in trains or (comp == "lm_head" and "llm" in trains)
        if expect_train:
            assert not torch.equal(p, before[name]), f"{name} should have changed"
            assert id(p) in with_state
        else:
            assert torch.equal(p, before[name]), f"{name} is frozen but changed"
            assert id(p) not in with_state


def test_unfreeze_vit_layers_slice_semantics(tiny_components):
    module = make_module(tiny_components)
    FreezeSchedule(freeze_backbone=True, unfreeze_vit_layers=-1).apply(module.model)
    layers = module.model.model.vision_tower.encoder.layer
    n = len(layers)
    assert all(p.requires_grad for p in layers[n - 1].parameters())
    assert not any(p.requires_grad for p in layers[0].parameters())
    assert not module.model.model.vision_tower.embeddings.cls_token.requires_grad


def test_freezing_everything_is_an_error(tiny_components):
    module = make_module(tiny_components)
    with pytest.raises(ValueError, match="froze every parameter"):
        FreezeSchedule(freeze_llm=True, freeze_backbone=True, freeze_mlp=True).apply(module.model)


def test_missing_components_message():
    with pytest.raises(ValueError, match="--model.vision=DIR"):
        InternVLChat()


@pytest.mark.slow
def test_compiled_blocks_train_like_eager(tiny_components):
    """`compile_blocks=True` under the Trainer: the same gradients as the eager module, in stage 1
    (frozen towers, gradients passing through the compiled LLM blocks) and stage 2."""
    ref = make_module(tiny_components)
    collate = PackingCollator(image_size=ref.model.config.vision_config.image_size[0])
    batch = collate([[make_sample("a", 12, 1, ref.model, 1), make_sample("b", 20, 2, ref.model, 2)]])
    for freeze in (dict(freeze_llm=True, freeze_backbone=True), dict()):
        grads = {}
        for compiled in (False, True):
            capture = GradCapture()
            module = make_module(tiny_components, compile_blocks=compiled)
            block = module.model.model.language_model.layers[0]
            assert (block._compiled_call_impl is not None) == compiled
            fit_batches(module, [batch], callbacks=[FreezeSchedule(**freeze), capture])
            grads[compiled] = capture.grads
        assert grads[True].keys() == grads[False].keys() and grads[True]
        for name, g in grads[False].items():
            torch.testing.assert_close(grads[True][name], g, atol=1e-6, rtol=1e-4, msg=name)
