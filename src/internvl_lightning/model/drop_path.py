"""InternViT stochastic depth (DropPath) for transformers' ``InternVLVisionLayer``.

transformers builds the InternViT block without DropPath. InternViT computes
``x = x + DropPath(attn(norm1(x)) * ls1)`` and ``x = x + DropPath(mlp(norm2(x)) * ls2)``.
DropPath multiplies each sample by a scalar (0 or 1/keep), so it commutes with the per-channel
layer scale: applying it to the *output* of ``layer.attention`` / ``layer.mlp`` is the same thing.
We do that with forward hooks on those two submodules, which
  * adds no parameters or buffers (state-dict keys and exports are unchanged),
  * reruns inside gradient checkpointing's recompute with the same RNG state (torch restores it),
  * touches only this instance (the class stays native).
"""

from __future__ import annotations

import torch
from torch import nn


def drop_path_schedule(rate: float, num_layers: int) -> list[float]:
    """Linear per-layer rates, ``linspace(0, rate, num_layers)[i]`` (InternViT / timm)."""
    return [float(x) for x in torch.linspace(0, rate, num_layers)]


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Zero whole samples (dim 0) with probability ``p``; scale survivors by 1/(1-p)."""
    if p <= 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)  # (B, 1, 1)
    return x * mask / keep


class DropPath(nn.Module):
    """Parameter-free holder of one layer's rate; its hooks drop the residual branches."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.p, self.training)

    def attention_hook(self, module: nn.Module, args, output):
        # InternVLVisionAttention returns (output (B, N, C), attention weights or None)
        return (self(output[0]),) + tuple(output[1:])

    def mlp_hook(self, module: nn.Module, args, output: torch.Tensor) -> torch.Tensor:
        return self(output)  # (B, N, C)

    def extra_repr(self) -> str:
        return f"p={self.p:.4f}"


def _vision_layers(model: nn.Module) -> nn.ModuleList:
    """Encoder layers of a VLM (``model.model.vision_tower``), its inner model or a vision tower."""
    for path in ("model.vision_tower.encoder.layer", "vision_tower.encoder.layer", "encoder.layer"):
        obj = model
        try:
            for name in path.split("."):
                obj = getattr(obj, name)
        except AttributeError:
            continue
        return obj
    raise TypeError(f"{type(model).__name__} has no InternVL vision encoder layers")


def install_drop_path(model: nn.Module, rate: float) -> list[float]:
    """Enable DropPath with a linear schedule up to ``rate`` (0 removes it); return the schedule.

    Active only in training mode. Calling again replaces the previous installation.
    """
    layers = _vision_layers(model)
    schedule = drop_path_schedule(rate, len(layers))
    for layer, p in zip(layers, schedule):
        layer._modules.pop("drop_path", None)
        for sub in (layer.attention, layer.mlp):
            for key, hook in list(sub._forward_hooks.items()):
                if isinstance(getattr(hook, "__self__", None), DropPath):
                    del sub._forward_hooks[key]
        if rate <= 0:
            continue
        dp = DropPath(p)
        layer.attention.register_forward_hook(dp.attention_hook)
        layer.mlp.register_forward_hook(dp.mlp_hook)
        dp.train(layer.training)
        layer.drop_path = dp
    config = getattr(model, "config", None)
    if config is not None:
        config.drop_path_rate = rate
        vision = getattr(config, "vision_config", None)
        if vision is not None:
            vision.drop_path_rate = rate
    return schedule
