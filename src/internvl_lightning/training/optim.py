"""AdamW parameter groups and the cosine-with-warmup schedule of the reference recipes."""

from __future__ import annotations

import math

import torch


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters split into decay / no-decay groups.

    No decay on biases, norm weights and other vectors (layer-scale lambdas): everything with
    fewer than 2 dims, as in nanoGPT and the HF Trainer's bias/LayerNorm rule. Frozen parameters
    are left out entirely, so they get no optimizer state.
    """
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 else no_decay).append(p)
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def warmup_steps_from(warmup: float, total_steps: int) -> int:
    """`warmup` >= 1 is a step count; 0 < warmup < 1 is a ratio of the total steps (reference: 0.03)."""
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    if 0 < warmup < 1:
        return math.ceil(warmup * total_steps)
    return int(warmup)


def cosine_with_warmup(step: int, warmup: int, total: int, min_lr_ratio: float = 0.0) -> float:
    """LR multiplier: linear 0->1 over `warmup` steps, then cosine 1->min_lr_ratio at `total`."""
    if warmup > 0 and step < warmup:
        return step / warmup  # as the HF scheduler the reference uses: 0 at step 0
    if total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
