"""Training setup of a built VLM, in one function and one fixed order (torchtitan's ``parallelize``).

1. LoRA adapters (model surgery: new parameters, which every later step must see);
2. freezing (the stage's ``FreezeSchedule``: requires_grad settles here for the whole fit);
3. activation checkpointing (each block recomputes in backward);
4. ``torch.compile`` of each block (inside the checkpoint wrapper, so recompute runs compiled);
5. the strategy's wrapping: a strategy with a ``parallelize_model(root, model)`` method applies it
   (FSDP2 shards each block and the root); ZeRO-3 gathers the output layer for the logits-free
   loss (the returned :class:`ParamScope`); others need nothing.

What cannot be combined is refused before anything is changed. A new strategy brings its wrapping
as its own ``parallelize_model``; nothing here changes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import lightning as L
from lightning.pytorch.strategies import ModelParallelStrategy
from lightning.pytorch.utilities import rank_zero_info

from ..model.checkpointing import enable_activation_checkpointing
from ..model.compile import compile_blocks
from ..model.lora import add_vlm_lora
from .strategy import ParamScope, is_zero3


@dataclass(frozen=True)
class TrainingSetup:
    """What :func:`parallelize` applies (``InternVLChat`` builds it from its hyperparameters)."""

    vit_lora_rank: int = 0
    llm_lora_rank: int = 0
    lora_alpha: float | None = None
    lora_dropout: float = 0.05
    lora_seed: int = 0
    checkpoint_vision: bool = False
    checkpoint_llm: bool = False
    compile_blocks: bool = False

    @property
    def lora(self) -> bool:
        return bool(self.vit_lora_rank or self.llm_lora_rank)


def add_adapters(model, setup: TrainingSetup) -> dict[str, int]:
    """Step 1 alone: the adapters of ``setup`` (also what a checkpoint reader needs, to match the
    saved keys). Returns {part: layers wrapped}."""
    if not setup.lora:
        return {}
    return add_vlm_lora(
        model, setup.vit_lora_rank, setup.llm_lora_rank, setup.lora_alpha, setup.lora_dropout, setup.lora_seed
    )


def check_setup(setup: TrainingSetup, strategy: Any) -> None:
    """Refuse combinations that cannot work, before the model is changed."""
    if is_zero3(strategy):
        if setup.lora:
            raise ValueError(
                "LoRA adapters are not supported with ZeRO-3 (the adapters would be created after "
                "the weights were partitioned): use ZeRO-1/2, DDP or Fsdp2Strategy"
            )
        if setup.compile_blocks:
            raise ValueError(
                "compile_blocks does not work with ZeRO-3 (its parameter-gathering hooks run inside "
                "every block): use ZeRO-1/2, DDP or Fsdp2Strategy, or compile_blocks=false"
            )
    if isinstance(strategy, ModelParallelStrategy) and not hasattr(strategy, "parallelize_model"):
        raise ValueError("InternVL has no tensor-parallel plan: use Fsdp2Strategy for FSDP2")


def parallelize(
    model,
    setup: TrainingSetup,
    strategy: Any = None,
    freeze: Callable[[Any], None] | None = None,
    root: L.LightningModule | None = None,
) -> ParamScope:
    """Apply ``setup`` to ``model`` (an ``InternVLForConditionalGeneration``) in the order of the
    module docstring. ``freeze`` sets requires_grad (step 2); ``root`` is the LightningModule (FSDP2
    makes it the root unit). Returns the scope the loss must run in."""
    check_setup(setup, strategy)
    wrapped = add_adapters(model, setup)
    if wrapped:
        rank_zero_info(f"LoRA adapters (layers wrapped): {wrapped}")
    if freeze is not None:
        freeze(model)
    parts = [model.model.vision_tower] if setup.checkpoint_vision else []
    parts += [model.model.language_model] if setup.checkpoint_llm else []
    for part in parts:
        enable_activation_checkpointing(part)
    if setup.compile_blocks:
        compile_blocks(model)
    wrap = getattr(strategy, "parallelize_model", None)
    if wrap is not None:
        wrap(root, model)
    return ParamScope(list(model.lm_head.parameters()) if is_zero3(strategy) else None)
