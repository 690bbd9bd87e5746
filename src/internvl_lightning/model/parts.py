"""The three parts of the VLM and their names: ``vision`` (the ViT), ``mlp`` (the projector, InternVL's
``mlp1``) and ``llm`` (the language model with its output layer). Freezing, parameter tables,
FLOPs and plans all speak of the parts by these names."""

from __future__ import annotations

from torch import nn

PARTS = ("vision", "mlp", "llm")


def vlm_parts(model) -> dict[str, nn.Module]:
    """{part name: module} of an ``InternVLForConditionalGeneration`` (the LLM's output layer is in ``llm``)."""
    inner = model.model
    return {
        "vision": inner.vision_tower,
        "mlp": inner.multi_modal_projector,
        "llm": nn.ModuleList([inner.language_model, model.lm_head]),
    }
