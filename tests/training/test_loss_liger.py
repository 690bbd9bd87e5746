"""`loss_kernel: liger` (training/loss_liger.py) against full logits and against our chunked kernel
(no trained token, accumulation and one backward: test_loss_fused.py, run with each kernel).

Liger-Kernel's Triton kernels run on a CUDA device; without one they run here under Triton's
interpreter (switched on by tests/conftest.py before triton is imported).
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("liger_kernel", reason="liger-kernel is not installed (pip install '.[liger]')")

from internvl_lightning.data.accumulate import StepWindow  # noqa: E402
from internvl_lightning.data.collate import PackingCollator  # noqa: E402
from internvl_lightning.training.freeze import FreezeSchedule  # noqa: E402
from internvl_lightning.training.loss import weighted_loss  # noqa: E402
from internvl_lightning.training.loss_liger import check_liger  # noqa: E402
from tests.helpers.batches import fit_batches, make_module, make_sample  # noqa: E402

from .test_loss_fused import _batch, _full_logits_numerator, _params, _Products, kernel_device  # noqa: E402
from .test_module import GradCapture  # noqa: E402

DEVICE = kernel_device("liger")


@pytest.mark.parametrize("reduction", ["token", "sample", "square"])
def test_liger_equals_full_logits_and_the_chunked_kernel(reduction):
    hidden, head, labels, weights = _batch(reduction, device=DEVICE)
    num, wsum = _full_logits_numerator(hidden, head, labels, weights)
    ref = num / wsum
    g_ref = torch.autograd.grad(ref, _params(hidden, head))
    results = {}
    for kernel in ("liger", "chunked"):
        loss, got_wsum = weighted_loss(hidden, head, labels, weights, chunk_size=7, kernel=kernel)
        results[kernel] = (loss, torch.autograd.grad(loss, _params(hidden, head)))
        assert float(got_wsum) == pytest.approx(float(wsum), rel=1e-6)
    loss, grads = results["liger"]
    assert abs(loss.item() - ref.item()) <= 1e-5
    assert abs(loss.item() - results["chunked"][0].item()) <= 1e-5
    for name, a, b, c in zip(("hidden", "weight", "bias"), grads, g_ref, results["chunked"][1]):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert float((a - b).abs().max()) <= 1e-6, name
        assert float((a - c).abs().max()) <= 1e-6, name


def test_liger_frozen_head_computes_no_weight_gradient():
    hidden, head, labels, weights = _batch("token", bias=False, device=DEVICE)
    head.weight.requires_grad_(False)
    with _Products() as products:
        loss, _ = weighted_loss(hidden, head, labels, weights, kernel="liger")
        loss.backward()
    vocab, dim = head.weight.shape
    assert products.shapes and (vocab, dim) not in products.shapes  # logits and d(hidden) only
    assert head.weight.grad is None and hidden.grad is not None


def test_unknown_kernel_is_refused():
    hidden, head, labels, weights = _batch("token")
    with pytest.raises(ValueError, match="unknown loss kernel 'cce'; choose one of"):
        weighted_loss(hidden, head, labels, weights, kernel="cce")


def test_liger_on_a_cpu_run_is_refused_at_setup(tiny_components, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # a CPU run as a user starts it
    with pytest.raises(RuntimeError, match="loss_kernel='liger' runs Triton kernels on a CUDA device"):
        check_liger(torch.device("cpu"))
    module = make_module(tiny_components, loss_kernel="liger")
    collate = PackingCollator(image_size=module.model.config.vision_config.image_size[0])
    batch = collate([[make_sample("a", 12, 1, module.model, 1)]])
    before = {n: p.detach().clone() for n, p in module.model.named_parameters()}
    with pytest.raises(RuntimeError, match="use loss_kernel='chunked'"):
        fit_batches(module, [batch])
    assert all(torch.equal(p, before[n]) for n, p in module.model.named_parameters())  # no step ran


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_liger_trains_the_module_like_the_chunked_kernel(tiny_components, stage):
    """InternVLChat under the Trainer, 2 micro-batches accumulated: the same gradients either way
    (stage 1: the LLM and its head frozen; stage 2: everything trains)."""
    flags = {"stage1": dict(freeze_llm=True, freeze_backbone=True), "stage2": {}}[stage]
    grads = {}
    for kernel in ("chunked", "liger"):
        module = make_module(tiny_components, loss_kernel=kernel)
        freeze = FreezeSchedule(**flags)
        freeze.apply(module.model)
        collate = PackingCollator(
            loss_reduction="square", image_size=module.model.config.vision_config.image_size[0]
        )
        packs = [
            collate([[make_sample("a", 12, 1, module.model, 1), make_sample("b", 7, 0, module.model, 2)]]),
            collate([[make_sample("c", 20, 2, module.model, 3)]]),
        ]
        capture = GradCapture()
        fit_batches(
            module, list(StepWindow(packs, steps=lambda: 2)), accumulate=2, callbacks=[freeze, capture]
        )
        grads[kernel] = capture.grads
    assert grads["liger"].keys() == grads["chunked"].keys()
    assert ("lm_head.weight" in grads["liger"]) == (stage == "stage2")  # a frozen head gets none
    for name, g in grads["chunked"].items():
        torch.testing.assert_close(grads["liger"][name], g, atol=1e-6, rtol=1e-5, msg=name)
