"""Which parts of the VLM train in a stage: the `FreezeSchedule` callback.

Flags and their order follow the reference trainer (freeze_backbone -> freeze_llm ->
unfreeze_lm_head -> LoRA-adapted parts train their adapters only -> freeze_mlp ->
unfreeze_vit_layers), with one correction: the reference's
`unfreeze_lm_head` sets a Python attribute on the Module instead of on its weight, so it never
unfroze anything; here it really makes the output layer trainable.
Frozen modules stay in train mode (as in the reference), so ViT drop path stays active in
stage 1.5 even where some layers are frozen.
"""

from __future__ import annotations

import logging

import lightning as L
from lightning.pytorch.utilities import rank_zero_info

from ..model.lora import freeze_all_but_adapters, has_adapters
from ..model.parts import vlm_parts

log = logging.getLogger(__name__)


def parameter_table(model) -> list[tuple[str, int, int]]:
    """[(part, trainable, frozen)] counting shared (tied) tensors once."""
    rows, seen = [], set()
    for name, module in vlm_parts(model).items():
        trainable = frozen = 0
        for p in module.parameters():
            if id(p) in seen:
                continue
            seen.add(id(p))
            n = getattr(p, "ds_numel", p.numel())  # ZeRO-3 leaves a local shard in p
            if p.requires_grad:
                trainable += n
            else:
                frozen += n
        rows.append((name, trainable, frozen))
    return rows


def format_table(rows: list[tuple[str, int, int]]) -> str:
    """Render parameter_table() as aligned text."""
    lines = [f"{'component':<10} {'trainable':>15} {'frozen':>15}"]
    for name, t, f in rows:
        lines.append(f"{name:<10} {t:>15,} {f:>15,}")
    lines.append(f"{'total':<10} {sum(r[1] for r in rows):>15,} {sum(r[2] for r in rows):>15,}")
    return "\n".join(lines)


class FreezeSchedule(L.Callback):
    """Freeze / unfreeze VLM components for a training stage.

    Args:
        freeze_llm: no gradient for the language model (embeddings and output layer included).
        freeze_backbone: no gradient for the vision encoder.
        freeze_mlp: no gradient for the projector.
        unfreeze_vit_layers: Python-slice start of encoder layers to train again (-4 = last four,
            4 = layers 4..end, 0 = none), applied after freeze_backbone.
        unfreeze_lm_head: train the output layer even when freeze_llm is set.
    """

    def __init__(
        self,
        freeze_llm: bool = False,
        freeze_backbone: bool = False,
        freeze_mlp: bool = False,
        unfreeze_vit_layers: int = 0,
        unfreeze_lm_head: bool = False,
    ) -> None:
        self.freeze_llm = freeze_llm
        self.freeze_backbone = freeze_backbone
        self.freeze_mlp = freeze_mlp
        self.unfreeze_vit_layers = unfreeze_vit_layers
        self.unfreeze_lm_head = unfreeze_lm_head

    def apply(self, model) -> None:
        """Set requires_grad on `model` (an InternVLForConditionalGeneration). Idempotent."""
        parts = vlm_parts(model)
        for p in model.parameters():
            p.requires_grad_(True)
        if self.freeze_backbone:
            parts["vision"].requires_grad_(False)
        if self.freeze_llm:
            parts["llm"].requires_grad_(False)
        if self.unfreeze_lm_head:
            model.lm_head.weight.requires_grad_(True)
        for part in (parts["vision"], parts["llm"]):  # LoRA-adapted parts train their adapters only
            if has_adapters(part):
                freeze_all_but_adapters(part)
        if self.freeze_mlp:
            parts["mlp"].requires_grad_(False)
        if self.unfreeze_vit_layers:
            layers = parts["vision"].encoder.layer
            for layer in layers[self.unfreeze_vit_layers :]:
                layer.requires_grad_(True)
        if not any(p.requires_grad for p in model.parameters()):
            raise ValueError("FreezeSchedule froze every parameter: nothing would train in this stage")

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        model = getattr(pl_module, "model", None)
        if model is not None:
            rank_zero_info("Trainable parameters this stage:\n" + format_table(parameter_table(model)))
