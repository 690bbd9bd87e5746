"""Compile each transformer block of the ViT and the LLM with ``torch.compile``.

Per block, not the whole model (the torchtitan recipe): blocks of a part share their code, so one
graph serves all of them; the glue (image-token scatter, pixel shuffle, chunked loss) stays eager
and free to vary. What compilation buys is fused element-wise work (norms, rotary embeddings,
SwiGLU/GELU, residual adds, dtype casts) that otherwise reads and writes every activation once per
op (measured gain: benchmarks/README.md, GPU figure). The first steps pay for compilation; a new
number of tiles in a batch recompiles the ViT block once with dynamic shapes, after which no step
recompiles.
"""

from __future__ import annotations

import torch

# Where each part keeps its repeated blocks, for the architectures transformers' InternVL wraps.
_BLOCK_LISTS = ("layers", "encoder.layer", "encoder.layers")


def transformer_blocks(part: torch.nn.Module) -> torch.nn.ModuleList:
    """The repeated blocks of a ViT (``encoder.layer``) or an LLM (``layers``)."""
    for path in _BLOCK_LISTS:
        found = part
        for name in path.split("."):
            found = getattr(found, name, None)
        if isinstance(found, torch.nn.ModuleList):
            return found
    raise AttributeError(
        f"{type(part).__name__} has none of {_BLOCK_LISTS}: no transformer blocks to compile"
    )


def compile_blocks(model) -> int:
    """``torch.compile`` every ViT and LLM block of an ``InternVLForConditionalGeneration`` in
    place; returns how many. Call after activation checkpointing is set up (the checkpoint wraps
    the compiled block) and before FSDP sharding."""
    config = torch._dynamo.config
    limit = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    # Blocks share one code object: its cache holds an entry per guard set, which must not run out.
    setattr(config, limit, max(getattr(config, limit), 64))
    count = 0
    for part in (model.model.vision_tower, model.model.language_model):
        for block in transformer_blocks(part):
            block.compile()
            count += 1
    return count
