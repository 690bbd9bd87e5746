"""Activation checkpointing of a ViT or an LLM: recompute each block's activations in backward."""

from __future__ import annotations

import torch

_NON_REENTRANT = {"use_reentrant": False}  # frozen inputs (stage 1) raise no "does not require grad"


def enable_activation_checkpointing(part: torch.nn.Module) -> None:
    """Checkpoint every block of a transformers model (``vision_tower`` or ``language_model``)."""
    if hasattr(part, "activation_checkpointing_enable"):  # transformers >= 5.2x
        part.activation_checkpointing_enable(activation_checkpointing_kwargs=_NON_REENTRANT)
    else:
        part.gradient_checkpointing_enable(gradient_checkpointing_kwargs=_NON_REENTRANT)
