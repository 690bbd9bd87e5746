"""Weighted next-token cross-entropy computed from hidden states in chunks.

Full logits for a 16384-token pack over a 151,674-token vocabulary take ~10 GB in fp32. We
never build them: only positions that carry a label need logits, and those are processed in
chunks whose logits are recomputed in backward (activation checkpointing per chunk), so the
peak is one chunk of logits (chunk_size x vocab).

Reduction (InternVL reference, loss_reduction): every trained token t of packed sample s carries
a weight w_t (token: 1, sample: 1/n_s, square: 1/sqrt(n_s)), set by the collator. Then
    loss = sum_t w_t * CE_t / D
with D the weight sum of this batch, or of the whole optimizer step (gradient accumulation and
data parallel), which makes accumulation exactly equal to one big batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..constants import IGNORE_INDEX


def _chunk_ce(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor
) -> torch.Tensor:
    """(n, D) hidden -> per-token CE (n,) in fp32; logits exist only inside this call."""
    logits = F.linear(hidden, weight, bias).float()  # (n, V)
    return F.cross_entropy(logits, targets, reduction="none")


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


def chunked_token_ce(
    hidden: torch.Tensor,
    lm_head: torch.nn.Linear,
    labels: torch.Tensor,
    loss_weight: torch.Tensor | None = None,
    chunk_size: int = 4096,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token CE of trained positions.

    hidden (B, L, D), labels (B, L), loss_weight (B, L) -> (ce (n,), weights (n,), flat positions (n,)).
    Positions index the shifted grid B x (L-1); divide by (L-1) to get the row.
    """
    idx, tgt, w = shifted_targets(labels, loss_weight)
    h = hidden[:, :-1].reshape(-1, hidden.shape[-1]).index_select(0, idx)  # (n, D)
    pieces = []
    for start in range(0, h.shape[0], chunk_size):
        sl = slice(start, start + chunk_size)
        if torch.is_grad_enabled() and (h.requires_grad or lm_head.weight.requires_grad):
            ce = checkpoint(_chunk_ce, h[sl], lm_head.weight, lm_head.bias, tgt[sl], use_reentrant=False)
        else:
            ce = _chunk_ce(h[sl], lm_head.weight, lm_head.bias, tgt[sl])
        pieces.append(ce)
    ce = torch.cat(pieces) if pieces else hidden.new_zeros(0, dtype=torch.float32)
    return ce, w, idx


def weighted_loss(
    hidden: torch.Tensor,
    lm_head: torch.nn.Linear,
    labels: torch.Tensor,
    loss_weight: torch.Tensor | None = None,
    denominator: torch.Tensor | float | None = None,
    chunk_size: int = 4096,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (loss, local weight sum). `denominator` defaults to the local weight sum."""
    ce, w, _ = chunked_token_ce(hidden, lm_head, labels, loss_weight, chunk_size)
    numerator = (ce * w).sum()
    wsum = w.sum()
    if denominator is None:
        denominator = wsum
    denom = torch.as_tensor(denominator, dtype=numerator.dtype, device=numerator.device).clamp_min(1e-12)
    # A batch with no trained token still returns a graph-connected zero (all ranks must backward).
    loss = numerator / denom + hidden.sum() * 0.0
    return loss, wsum.detach()


def per_sample_losses(
    hidden: torch.Tensor,
    lm_head: torch.nn.Linear,
    labels: torch.Tensor,
    sample_index: torch.Tensor,
    chunk_size: int = 4096,
) -> dict[int, torch.Tensor]:
    """Token-mean CE per packed sample (for evaluation and tests): {sample id: loss}."""
    ce, _, idx = chunked_token_ce(hidden, lm_head, labels, None, chunk_size)
    sid = sample_index[:, 1:].reshape(-1).index_select(0, idx)
    return {int(s): ce[sid == s].mean() for s in torch.unique(sid)}
