"""The loss without recompute (training/loss.py::FusedLinearCE) against full logits and autograd.

The tests of the loss's contract (no trained token, accumulation, one backward) run with each
kernel: Liger-Kernel's (training/loss_liger.py) on a CUDA device, or on the CPU under Triton's
interpreter (tests/conftest.py); its own tests are in test_loss_liger.py.
"""

from __future__ import annotations

from importlib.util import find_spec

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from internvl_lightning.data.collate import len2weight
from internvl_lightning.training.loss import chunked_token_ce, weighted_loss

B, L, D, V = 2, 31, 16, 50
SEGMENTS = [(0, 9), (9, 20), (20, 31)]  # three packed samples per row
NO_LIGER = pytest.mark.skipif(
    find_spec("liger_kernel") is None, reason="liger-kernel is not installed (pip install '.[liger]')"
)
KERNELS = ["chunked", pytest.param("liger", marks=NO_LIGER)]


def kernel_device(kernel: str) -> str:
    """Where a kernel's test tensors live: Liger's kernels on the GPU when there is one."""
    return "cuda" if kernel == "liger" and torch.cuda.is_available() else "cpu"


def _batch(reduction: str, seed: int = 0, bias: bool = True, device: str = "cpu"):
    """hidden (B, L, D), an output layer with bias, labels with ignored positions, collator-style
    weights (drawn on the CPU, then put on ``device``)."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, L, D, generator=g).to(device).requires_grad_(True)
    head = torch.nn.Linear(D, V, bias=bias)
    with torch.no_grad():
        head.weight.copy_(torch.randn(V, D, generator=g))
        if bias:
            head.bias.copy_(torch.randn(V, generator=g))
    labels = torch.randint(0, V, (B, L), generator=g)
    labels[torch.rand(B, L, generator=g) < 0.3] = -100
    weights = torch.zeros(B, L)
    for b in range(B):
        for a, e in SEGMENTS:
            trained = labels[b, a:e] != -100
            weights[b, a:e] = trained.float() * len2weight(int(trained.sum()), reduction)
    return hidden, head.to(device), labels.to(device), weights.to(device)


def _full_logits_numerator(hidden, head, labels, weights):
    """sum w * CE over every position from the full logits tensor (what a causal LM does)."""
    logits = head(hidden)[:, :-1].float().reshape(-1, V)
    tgt = labels[:, 1:].reshape(-1)
    w = (weights[:, 1:] * (labels[:, 1:] != -100)).reshape(-1)
    return (F.cross_entropy(logits, tgt.clamp_min(0), reduction="none") * w).sum(), w.sum()


def _params(hidden, head):
    return [hidden, head.weight] + ([head.bias] if head.bias is not None else [])


@pytest.mark.parametrize("reduction", ["token", "sample", "square"])
@pytest.mark.parametrize("chunk", [1, 7, 40, 10_000])  # 40 ~ n (44 trained), 10_000 > n
def test_loss_and_gradients_equal_full_logits(reduction, chunk):
    hidden, head, labels, weights = _batch(reduction)
    num, wsum = _full_logits_numerator(hidden, head, labels, weights)
    ref = num / wsum
    g_ref = torch.autograd.grad(ref, _params(hidden, head))
    loss, got_wsum = weighted_loss(hidden, head, labels, weights, chunk_size=chunk)
    g = torch.autograd.grad(loss, _params(hidden, head))
    assert abs(loss.item() - ref.item()) <= 1e-5
    assert float(got_wsum) == pytest.approx(float(wsum), rel=1e-6)
    for name, a, b in zip(("hidden", "weight", "bias"), g, g_ref):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert float((a - b).abs().max()) <= 1e-6, name


@pytest.mark.parametrize("kernel", KERNELS)
def test_no_trained_token_gives_zero_loss_and_zero_gradients(kernel):
    hidden, head, labels, weights = _batch("square", device=kernel_device(kernel))
    labels[:] = -100
    loss, wsum = weighted_loss(hidden, head, labels, weights, chunk_size=4, kernel=kernel)
    loss.backward()
    assert loss.item() == 0.0 and wsum.item() == 0.0
    assert hidden.grad is not None and not hidden.grad.any()
    assert head.weight.grad is not None and not head.weight.grad.any()  # every rank still reduces it


@pytest.mark.parametrize("kernel", KERNELS)
def test_two_micro_batches_with_the_step_denominator_equal_one_combined_batch(kernel):
    parts = [_batch("square", seed=s, device=kernel_device(kernel)) for s in (1, 2)]
    head = parts[0][1]
    step_wsum = sum(float(_full_logits_numerator(*p)[1]) for p in parts)
    for hidden, _, labels, weights in parts:  # accumulate into head.weight.grad / head.bias.grad
        step = torch.tensor(step_wsum)
        loss, _ = weighted_loss(hidden, head, labels, weights, step, chunk_size=5, kernel=kernel)
        loss.backward()
    accumulated = [head.weight.grad.clone(), head.bias.grad.clone()]
    head.zero_grad(set_to_none=True)
    hidden = torch.cat([p[0].detach() for p in parts], 0).requires_grad_(True)
    labels, weights = (torch.cat([p[k] for p in parts], 0) for k in (2, 3))
    combined, _ = weighted_loss(hidden, head, labels, weights, chunk_size=5, kernel=kernel)
    combined.backward()
    for a, b in zip(accumulated, [head.weight.grad, head.bias.grad]):
        assert float((a - b).abs().max()) <= 1e-6
    for k, (h, *_) in enumerate(parts):  # each micro-batch's hidden gradient is its slice of the combined one
        assert float((h.grad - hidden.grad[k * B : (k + 1) * B]).abs().max()) <= 1e-6


class _Products(TorchDispatchMode):
    """Records the output shape of every matrix product (mm, addmm, in place or not) run inside."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.addmm, torch.ops.aten.addmm_):
            self.shapes.append(tuple(out.shape))
        return out


def _product_shapes(hidden, head, labels, weights) -> list[tuple[int, ...]]:
    """Output shapes of the products in one loss forward + backward (chunks of 8 rows)."""
    with _Products() as products:
        loss, _ = weighted_loss(hidden, head, labels, weights, chunk_size=8)
        loss.backward()
    return products.shapes


def _expected(n: int, logits: bool, d_hidden: bool, d_weight: bool) -> list[tuple[int, ...]]:
    shapes = []
    for start in range(0, n, 8):
        c = min(8, n - start)
        shapes += [(c, V)] * logits + [(c, D)] * d_hidden + [(V, D)] * d_weight
    return shapes


def test_frozen_head_computes_no_weight_gradient():
    hidden, head, labels, weights = _batch("token", bias=False)
    n = int(((labels[:, 1:] != -100) & (weights[:, 1:] > 0)).sum())
    assert _product_shapes(hidden, head, labels, weights) == _expected(n, True, True, True)
    head.weight.grad = None
    head.weight.requires_grad_(False)
    assert _product_shapes(hidden, head, labels, weights) == _expected(n, True, True, False)
    assert head.weight.grad is None and hidden.grad is not None


def test_hidden_without_gradient_skips_its_product():
    hidden, head, labels, weights = _batch("token", bias=False)
    n = int(((labels[:, 1:] != -100) & (weights[:, 1:] > 0)).sum())
    assert _product_shapes(hidden.detach(), head, labels, weights) == _expected(n, True, False, True)
    assert head.weight.grad is not None


def test_evaluation_without_grad_gives_the_same_loss():
    hidden, head, labels, weights = _batch("sample")
    loss, _ = weighted_loss(hidden, head, labels, weights, chunk_size=6)
    with torch.no_grad():
        value, _ = weighted_loss(hidden, head, labels, weights, chunk_size=6)
    assert not value.requires_grad and abs(value.item() - loss.item()) <= 1e-6
    ce, w, _ = chunked_token_ce(hidden, head, labels, weights, chunk_size=6)
    assert not ce.requires_grad
    assert abs(float((ce * w).sum() / w.sum()) - loss.item()) <= 1e-6


@pytest.mark.parametrize("kernel", KERNELS)
def test_second_backward_is_refused(kernel):
    hidden, head, labels, weights = _batch("token", device=kernel_device(kernel))
    loss, _ = weighted_loss(hidden, head, labels, weights, kernel=kernel)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward ran twice"):
        loss.backward()


def test_chunk_size_must_be_positive():
    hidden, head, labels, weights = _batch("token")
    with pytest.raises(ValueError, match="chunk_size must be >= 1, got 0"):
        weighted_loss(hidden, head, labels, weights, chunk_size=0)


def _close_to_fp32(loss, grads, ref, g_ref, rtol: float) -> None:
    assert abs(loss.item() - ref.item()) <= rtol * abs(ref.item())
    for a, b in zip(grads, g_ref):
        assert float((a.float() - b).norm() / b.norm()) <= rtol


def test_bf16_hidden_and_weights():
    hidden, head, labels, weights = _batch("square")
    num, wsum = _full_logits_numerator(hidden, head, labels, weights)
    ref = num / wsum
    g_ref = torch.autograd.grad(ref, _params(hidden, head))
    hidden16 = hidden.detach().bfloat16().requires_grad_(True)
    head16 = head.to(torch.bfloat16)
    loss, _ = weighted_loss(hidden16, head16, labels, weights, chunk_size=7)
    grads = torch.autograd.grad(loss, _params(hidden16, head16))
    assert loss.dtype == torch.float32 and all(g.dtype == torch.bfloat16 for g in grads)
    _close_to_fp32(loss, grads, ref, g_ref, rtol=2e-2)


def test_bf16_autocast_keeps_fp32_gradients():
    hidden, head, labels, weights = _batch("square")
    num, wsum = _full_logits_numerator(hidden, head, labels, weights)
    ref = num / wsum
    g_ref = torch.autograd.grad(ref, _params(hidden, head))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = weighted_loss(hidden, head, labels, weights, chunk_size=7)
    grads = torch.autograd.grad(loss, _params(hidden, head))
    assert all(g.dtype == torch.float32 for g in grads)
    _close_to_fp32(loss, grads, ref, g_ref, rtol=2e-2)
