"""Pixel shuffle: merge each f x f block of ViT patches into one token (f = 1 / scale_factor).

InternVL trades spatial resolution for channels before the projector: a 32x32 patch grid of C
channels becomes a 16x16 grid of 4C channels (256 tokens per 448px tile).
"""

from __future__ import annotations

import functools

import torch
from torch import nn

PS_VERSIONS = ("v1", "v2")


def pixel_shuffle(x: torch.Tensor, scale_factor: float = 0.5, version: str = "v2") -> torch.Tensor:
    """(N, H, W, C) -> (N, H*s, W*s, C/s^2).

    v2: output token (r, c) holds, along channels, the input patches (f*r + i, f*c + j) for
    i, j in 0..f-1 with j varying fastest; tokens in row-major order.
    v1: the same f x f groups, but the output grid is transposed (the reference's old behaviour,
    kept so checkpoints trained with ``ps_version='v1'`` still see what they were trained on).
    """
    if version not in PS_VERSIONS:
        raise ValueError(f"unknown pixel shuffle version {version!r}; choose one of {PS_VERSIONS}")
    f = round(1 / scale_factor)
    if abs(f * scale_factor - 1) > 1e-6:
        raise ValueError(f"scale_factor must be 1/integer, got {scale_factor}")
    n, h, w, c = x.shape
    if h % f or w % f:
        raise ValueError(f"patch grid {h}x{w} is not divisible by {f} (scale_factor {scale_factor})")
    # (N, H/f, f, W/f, f, C) -> (N, H/f, W/f, f_row, f_col, C) -> (N, H/f, W/f, f*f*C)
    out = x.reshape(n, h // f, f, w // f, f, c).permute(0, 1, 3, 2, 4, 5)
    out = out.reshape(n, h // f, w // f, f * f * c)
    if version == "v1":
        out = out.transpose(1, 2)
    return out.contiguous()


def patch_pixel_shuffle(model: nn.Module, version: str) -> None:
    """Make ``model``'s InternVL pixel shuffle use ``version`` (this instance only).

    transformers' ``InternVLModel.pixel_shuffle`` is always v2; for v1 we shadow the method with an
    instance attribute, so the class (and every other instance) stays native. ``model`` may be the
    ``InternVLForConditionalGeneration`` or its inner ``InternVLModel``.
    """
    inner = getattr(model, "model", model)
    if not hasattr(inner, "get_image_features"):
        raise TypeError(f"{type(model).__name__} has no InternVL vision path to patch")
    if version not in PS_VERSIONS:
        raise ValueError(f"unknown pixel shuffle version {version!r}; choose one of {PS_VERSIONS}")
    if version == "v2":
        inner.__dict__.pop("pixel_shuffle", None)  # back to the native (v2) method
    else:
        inner.pixel_shuffle = functools.partial(pixel_shuffle, version=version)
    model.config.ps_version = version
