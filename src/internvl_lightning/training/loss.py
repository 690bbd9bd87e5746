"""Weighted next-token cross-entropy computed from hidden states in chunks.

Full logits for a 16384-token pack over a 151,674-token vocabulary take ~10 GB in fp32. We
never build them: only positions that carry a label need logits, and those are processed in
chunks, so the peak is one chunk of logits (chunk_size x vocab).

Training does not recompute anything: :class:`FusedLinearCE` computes, chunk by chunk in the
forward pass, the loss and its gradients with respect to the hidden states and the output layer
(weight gradient summed over chunks in fp32); its backward only scales the stored gradients by the
incoming one. A part that does not train (a frozen head in stage 1, hidden states that need no
gradient) gets no gradient computed at all.

Reduction (InternVL reference, loss_reduction): every trained token t of packed sample s carries
a weight w_t (token: 1, sample: 1/n_s, square: 1/sqrt(n_s)), set by the collator. Then
    loss = sum_t w_t * CE_t / D
with D the weight sum of this batch, or of the whole optimizer step (gradient accumulation and
data parallel), which makes accumulation exactly equal to one big batch. D is a constant for
autograd; it enters as the token weights w_t / D, so the gradients come out of the forward pass
already divided.

`kernel="liger"` computes the same thing with Liger-Kernel's Triton kernels on a CUDA device
(`loss_liger.py`, the same inputs and outputs); the default, "chunked", is this file's and runs
everywhere. Which is faster on a GPU is measured by `benchmarks/gpu_suite.py`.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F

from ..constants import IGNORE_INDEX


def _check_chunk(chunk_size: int) -> None:
    if chunk_size < 1:
        raise ValueError(f"loss chunk_size must be >= 1, got {chunk_size}")


def _chunk_logits(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """(c, D) hidden -> (c, V) logits in the weight dtype (or autocast's); `h` is cast to it first."""
    return F.linear(h.to(weight.dtype), weight, bias)


def _softmax_ce_(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token CE (c,) of fp32 `logits` (c, V); overwrites `logits` with the softmax. Returns (ce, softmax)."""
    target_logit = logits.gather(1, targets[:, None]).squeeze(1)
    top = logits.amax(1, keepdim=True)
    probs = logits.sub_(top).exp_()
    total = probs.sum(1, keepdim=True)
    probs.div_(total)
    ce = (top + total.log()).squeeze(1) - target_logit
    return ce, probs


def _chunk_ce(
    h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor
) -> torch.Tensor:
    """Per-token CE (c,) in fp32 of one chunk, values only."""
    return _softmax_ce_(_chunk_logits(h, weight, bias).float(), targets)[0]


def _add_weight_grad(
    grad_weight: torch.Tensor | None, grad_logits: torch.Tensor, h: torch.Tensor
) -> torch.Tensor:
    """grad_weight (V, D) fp32 + grad_logits.T (V, c) @ h (c, D): the output layer's gradient so far."""
    if grad_weight is None:  # first chunk: the product is the buffer (no zero fill, no extra pass)
        return torch.mm(grad_logits.t(), h).float()
    if grad_logits.dtype == grad_weight.dtype and not torch.is_autocast_enabled(grad_weight.device.type):
        return grad_weight.addmm_(grad_logits.t(), h)
    return grad_weight.add_(torch.mm(grad_logits.t(), h))  # a bf16 product summed in fp32


class GradientsInForward(torch.autograd.Function):
    """A loss whose forward stores (grad_hidden, grad_weight, grad_bias) in ``ctx.grads`` for inputs
    (hidden, weight, bias, targets, token weights, chunk size); its backward only scales them."""

    @staticmethod
    def backward(ctx, grad_sum, grad_ce):
        grads = ctx.grads
        if grads is None:
            raise RuntimeError("the loss's backward ran twice (retain_graph is not supported)")
        ctx.grads = None  # scaled in place below: a second backward would be wrong, so refuse it
        # Usually 1 (the denominator is in the token weights), but testing that would cost a device
        # sync per step; one elementwise pass over the stored gradients costs less.
        grads = tuple(None if g is None else g.mul_(grad_sum.to(g.dtype)) for g in grads)
        return (*grads, None, None, None)


class FusedLinearCE(GradientsInForward):
    """sum_t w_t * CE(hidden_t @ weight.T + bias, target_t), gradients computed during forward.

    Inputs: hidden (n, D), weight (V, D), bias (V,) or None, targets (n,) long, token weights (n,)
    fp32, chunk size. Outputs: the weighted sum (fp32 scalar, differentiable) and the per-token CE
    (n,) fp32 (not differentiable). Keeps only grad_hidden (n, D) and grad_weight (V, D) between
    forward and backward, never logits; its backward runs once (no `retain_graph`).
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, token_weight, chunk_size):
        need_hidden, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_bias = bias is not None and ctx.needs_input_grad[2]
        n = hidden.shape[0]
        ce = torch.empty(n, dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        grad_weight = None  # (V, D) fp32, the first chunk's product, then summed into
        grad_bias = torch.zeros_like(bias, dtype=torch.float32) if need_bias else None
        for start in range(0, n, chunk_size):
            sl = slice(start, start + chunk_size)
            h = hidden[sl].to(weight.dtype)
            raw = _chunk_logits(h, weight, bias)
            compute_dtype = raw.dtype  # the weight's, or autocast's
            ce[sl], probs = _softmax_ce_(raw.float(), targets[sl])
            del raw
            if not (need_hidden or need_weight or need_bias):
                continue
            # d(sum w * ce)/d logits = w * (softmax - onehot), formed in place
            w = token_weight[sl, None]
            grad_logits = probs.mul_(w).scatter_add_(1, targets[sl, None], -w)
            del probs
            if need_bias:
                grad_bias += grad_logits.sum(0)
            grad_logits = grad_logits.to(compute_dtype)
            if need_hidden:
                grad_hidden[sl] = torch.mm(grad_logits, weight)  # autocast casts (and caches) the weight
            if need_weight:
                grad_weight = _add_weight_grad(grad_weight, grad_logits, h.to(compute_dtype))
            del grad_logits  # before the next chunk's logits: one chunk-sized buffer at a time
        if need_weight and grad_weight is None:  # no trained token: a zero gradient all the same
            grad_weight = torch.zeros_like(weight, dtype=torch.float32)
        ctx.grads = (
            grad_hidden,
            None if grad_weight is None else grad_weight.to(weight.dtype),
            None if grad_bias is None else grad_bias.to(bias.dtype),
        )
        ctx.mark_non_differentiable(ce)
        return (ce * token_weight).sum(), ce


LossKernel = Literal["chunked", "liger"]  # the same inputs and outputs
LOSS_KERNELS = get_args(LossKernel)


def _kernel(name: str) -> type[GradientsInForward]:
    if name not in LOSS_KERNELS:
        raise ValueError(f"unknown loss kernel {name!r}; choose one of {sorted(LOSS_KERNELS)}")
    if name == "liger":
        from .loss_liger import LigerLinearCE  # its module builds on this one

        return LigerLinearCE
    return FusedLinearCE


def shifted_targets(
    labels: torch.Tensor, loss_weight: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Positions (flat index into B*(L-1)), their target ids and weights for next-token prediction."""
    tgt = labels[:, 1:].reshape(-1)  # position t predicts token t+1
    if loss_weight is None:
        w = (tgt != IGNORE_INDEX).float()
    else:
        w = loss_weight[:, 1:].reshape(-1).float() * (tgt != IGNORE_INDEX)
    idx = torch.nonzero(w > 0, as_tuple=True)[0]
    return idx, tgt[idx], w[idx]


def _trained_hidden(hidden: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """(B, L, D) -> (n, D): the hidden states of the positions in `idx` (shifted grid)."""
    return hidden[:, :-1].reshape(-1, hidden.shape[-1]).index_select(0, idx)


def _ce_values(
    h: torch.Tensor, lm_head: torch.nn.Linear, targets: torch.Tensor, chunk_size: int
) -> torch.Tensor:
    """(n, D) hidden -> per-token CE (n,) fp32, chunk by chunk (no gradient bookkeeping)."""
    pieces = [
        _chunk_ce(h[s : s + chunk_size], lm_head.weight, lm_head.bias, targets[s : s + chunk_size])
        for s in range(0, h.shape[0], chunk_size)
    ]
    return torch.cat(pieces) if pieces else h.new_zeros(0, dtype=torch.float32)


def chunked_token_ce(
    hidden: torch.Tensor,
    lm_head: torch.nn.Linear,
    labels: torch.Tensor,
    loss_weight: torch.Tensor | None = None,
    chunk_size: int = 4096,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token CE of trained positions (values only, no gradient: train with :func:`weighted_loss`).

    hidden (B, L, D), labels (B, L), loss_weight (B, L) -> (ce (n,), weights (n,), flat positions (n,)).
    Positions index the shifted grid B x (L-1); divide by (L-1) to get the row.
    """
    _check_chunk(chunk_size)
    idx, tgt, w = shifted_targets(labels, loss_weight)
    with torch.no_grad():
        ce = _ce_values(_trained_hidden(hidden, idx), lm_head, tgt, chunk_size)
    return ce, w, idx


def weighted_loss(
    hidden: torch.Tensor,
    lm_head: torch.nn.Linear,
    labels: torch.Tensor,
    loss_weight: torch.Tensor | None = None,
    denominator: torch.Tensor | float | None = None,
    chunk_size: int = 4096,
    kernel: LossKernel = "chunked",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (loss, local weight sum). `denominator` defaults to the local weight sum; it is a
    constant for autograd (an all-reduced step total, say). `kernel`: "chunked" (ours, every
    device) or "liger" (Liger-Kernel's, CUDA)."""
    loss, wsum, _, _ = weighted_loss_with_token_ce(
        hidden, lm_head, labels, loss_weight, denominator, chunk_size, kernel
    )
    return loss, wsum


def weighted_loss_with_token_ce(
    hidden: torch.Tensor,
    lm_head: torch.nn.Linear,
    labels: torch.Tensor,
    loss_weight: torch.Tensor | None = None,
    denominator: torch.Tensor | float | None = None,
    chunk_size: int = 4096,
    kernel: LossKernel = "chunked",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`weighted_loss` plus what it computed on the way, for metrics at no extra cost: the
    per-token CE of the trained positions (n,) (no gradient) and their flat positions (n,)."""
    _check_chunk(chunk_size)
    function = _kernel(kernel)
    idx, tgt, w = shifted_targets(labels, loss_weight)
    h = _trained_hidden(hidden, idx)
    wsum = w.sum()
    if denominator is None:
        denominator = wsum
    denom = torch.as_tensor(denominator, dtype=w.dtype, device=w.device).detach().clamp_min(1e-12)
    scaled = w / denom  # the gradients come out already divided: backward need not scale them
    if torch.is_grad_enabled():
        loss, ce = function.apply(h, lm_head.weight, lm_head.bias, tgt, scaled, chunk_size)
    else:  # evaluation: values only (the function would compute gradients whatever the grad mode)
        ce = _ce_values(h, lm_head, tgt, chunk_size)
        loss = (ce * scaled).sum()
    # A batch with no trained token still returns a graph-connected zero (all ranks must backward).
    return loss + hidden.sum() * 0.0, wsum.detach(), ce.detach(), idx


def per_sample_losses(
    hidden: torch.Tensor,
    lm_head: torch.nn.Linear,
    labels: torch.Tensor,
    sample_index: torch.Tensor,
    chunk_size: int = 4096,
) -> dict[int, torch.Tensor]:
    """Token-mean CE per packed sample (for evaluation and tests): {sample id: loss}, no gradient."""
    ce, _, idx = chunked_token_ce(hidden, lm_head, labels, None, chunk_size)
    sid = sample_index[:, 1:].reshape(-1).index_select(0, idx)
    return {int(s): ce[sid == s].mean() for s in torch.unique(sid)}
