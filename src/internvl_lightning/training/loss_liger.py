"""The weighted loss on Liger-Kernel's fused linear cross-entropy (`loss_kernel: liger`, CUDA).

Same contract as :class:`training.loss.FusedLinearCE`: inputs hidden (n, D), weight (V, D), bias
(V,) or None, targets (n,), token weights w_t / D (n,) fp32; outputs the weighted sum and the
per-token CE (n,). Liger's public autograd function has no per-token weight (its `ce_weight` is
per class) and recomputes every chunk's logits in backward to apply one, so this calls its chunked
forward directly with the token weights as the per-token upstream gradient: the Triton kernel
writes softmax - one-hot in place of each chunk's logits, the weights scale it before the
products, and the gradients of the hidden states, the output weight (summed in fp32) and the bias
all come out of the forward pass. The backward only scales them, as ours does.

Differences from ours: Liger picks its own chunk size (about n x D logits at a time, so
`loss_chunk_size` does not apply), and it reads the number of trained tokens on the host once per
call (a device sync). Its kernels need a CUDA device; tests run them on the CPU with Triton's
interpreter (TRITON_INTERPRET=1).
"""

from __future__ import annotations

import inspect
import os
from functools import cache

import torch

from .loss import GradientsInForward

LIGER_NEEDS = ("token_grad_output", "compute_gradients", "weight_requires_grad")  # since 0.8.2


@cache
def _liger_forward():
    """Liger's chunked forward, checked to take the per-token upstream gradient in the forward pass."""
    try:
        from liger_kernel.ops.fused_linear_cross_entropy import fused_linear_cross_entropy_forward
    except ImportError as e:
        raise ImportError(
            "loss_kernel='liger' needs Liger-Kernel: pip install 'internvl-lightning[liger]' "
            "(or use loss_kernel='chunked')"
        ) from e
    missing = [
        p for p in LIGER_NEEDS if p not in inspect.signature(fused_linear_cross_entropy_forward).parameters
    ]
    if missing:
        from importlib.metadata import version

        raise ImportError(
            f"loss_kernel='liger' needs liger-kernel >= 0.8.2 (its forward takes {', '.join(LIGER_NEEDS)}); "
            f"installed: {version('liger-kernel')}, which lacks {', '.join(missing)}"
        )
    return fused_linear_cross_entropy_forward


def check_liger(device: torch.device) -> None:
    """Refuse early (at setup) what would fail at the first step: no Liger, or no CUDA device."""
    _liger_forward()
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError(
            f"loss_kernel='liger' runs Triton kernels on a CUDA device, and this run is on {device.type}; "
            "use loss_kernel='chunked' (the default) here"
        )


def _no_tokens(ctx, hidden, weight, bias, need_hidden, need_weight, need_bias):
    ctx.grads = (
        torch.zeros_like(hidden) if need_hidden else None,
        torch.zeros_like(weight) if need_weight else None,
        torch.zeros_like(bias) if need_bias else None,
    )
    ce = hidden.new_zeros(0, dtype=torch.float32)
    ctx.mark_non_differentiable(ce)
    return ce.sum(), ce


class LigerLinearCE(GradientsInForward):
    """sum_t w_t * CE(hidden_t @ weight.T + bias, target_t) with Liger's kernels, gradients in forward.

    Arguments and outputs as :class:`training.loss.FusedLinearCE` (`chunk_size` is accepted for
    the common signature and unused); the backward is theirs (``GradientsInForward``).
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, token_weight, chunk_size):
        need_hidden, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_bias = bias is not None and ctx.needs_input_grad[2]
        # Liger computes the weight and bias gradients only together with the hidden one.
        compute = need_hidden or need_weight or need_bias
        if hidden.shape[0] == 0:  # no trained token (Liger divides by the token count): zero gradients
            return _no_tokens(ctx, hidden, weight, bias, need_hidden, need_weight, need_bias)
        ce, _, _, _, grad_hidden, grad_weight, grad_bias = _liger_forward()(
            hidden.to(weight.dtype),
            weight,
            targets,
            bias=bias,
            reduction="none",
            accum_dtype=torch.float32,
            token_grad_output=token_weight,
            compute_gradients=compute,
            weight_requires_grad=need_weight,
        )
        ce = ce.float()
        ctx.grads = (
            grad_hidden.to(hidden.dtype) if need_hidden else None,
            grad_weight if need_weight else None,
            grad_bias if need_bias else None,
        )
        ctx.mark_non_differentiable(ce)
        return (ce * token_weight).sum(), ce
