"""Packing collator: a list of packs (lists of `EncodedSample`) -> one batch dict (the batch contract of docs/ARCHITECTURE.md).

Per pack, samples are concatenated in order; the batch is right-padded to the longest pack (or to
`max_packed_tokens` with `pad_to_budget`). Conventions:

- `labels`: the first token of every packed sample is set to IGNORE_INDEX. It can never be
  predicted from inside its sample, and with the shifted loss (position t predicts t+1) this is
  what keeps the previous sample's last position from being trained on the next sample's first
  token. `n_s` (trained labels of sample s) is counted after that.
- `loss_weight`: `len2weight(n_s)` on the trained tokens of s (token 1, sample 1/n_s, square
  1/sqrt(n_s)), 0 wherever the label is IGNORE_INDEX (InternVL's `len2weight`, internvl_chat/internvl/train/).
- `position_ids` restart at 0 for every sample; a padding run is its own segment and counts
  0, 1, ... like a sample (as the reference does), so it never extends a real sample's positions.
- `sample_index`: the sample's index within the whole batch (0..samples-1, in pack order), -1 on
  padding; use it to scatter per-token losses to samples over the flattened (B*L) tokens.
- `datasets`: the dataset name of each packed sample (`datasets[k]` for `sample_index == k`), for
  the per-dataset loss and token counts of a mixture.
- `cu_seqlens` (int32) are boundaries over the flattened B*L tokens of every sample and every
  padding run, so one varlen attention call over the flattened batch is exact; `max_seqlen` is
  the longest segment.
- `pixel_values`/`image_flags`: tiles of all samples of all packs in order (uint8 tiles from the
  encoder are normalised here, straight into the batch tensor); a pack with
  `pad_tiles_to` (packer strict mode) gets zero tiles with flag 0 up to that count; a batch with
  no tile at all gets ONE zero dummy tile (flag 0) so every rank runs the vision tower.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from ..constants import IGNORE_INDEX
from .image import normalize_tiles

LossReduction = Literal["token", "sample", "square"]


def len2weight(n: int, reduction: LossReduction) -> float:
    """Per-token weight of a sample with `n` trained labels; 0 if it has none."""
    if n <= 0:
        return 0.0
    if reduction == "token":
        return 1.0
    if reduction == "sample":
        return 1.0 / n
    if reduction == "square":
        return 1.0 / math.sqrt(n)
    raise ValueError(f"loss_reduction must be token, sample or square, got {reduction!r}")


@dataclass
class PackingCollator:
    """Collate B packs into the batch dict of docs/ARCHITECTURE.md (see module docstring for conventions)."""

    pad_token_id: int = 0
    loss_reduction: LossReduction = "square"
    max_packed_tokens: int = 16384
    num_images_expected: int = 48
    pad_to_budget: bool = False
    image_size: int = 448

    def __post_init__(self) -> None:
        len2weight(1, self.loss_reduction)  # validate early

    def __call__(self, packs: Sequence[Sequence[Any]]) -> dict[str, Any]:
        if packs and hasattr(packs[0], "input_ids"):  # a single pack given directly
            packs = [packs]
        if not packs or any(len(p) == 0 for p in packs):
            raise ValueError("need at least one non-empty pack")
        lengths = [sum(s.num_tokens for s in p) for p in packs]
        width = max(lengths)
        if self.pad_to_budget:
            if width > self.max_packed_tokens:
                raise ValueError(f"pack of {width} tokens exceeds pad_to_budget {self.max_packed_tokens}")
            width = self.max_packed_tokens

        ids, labels, pos, index, weight = [], [], [], [], []
        datasets: list[str] = []  # datasets[k]: the dataset of packed sample k (sample_index == k)
        cu, tiles, flags = [0], [], []
        real_tiles = trained = k = 0
        for pack, length in zip(packs, lengths):
            for s in pack:
                n = s.num_tokens
                if n < 1 or s.labels.shape[0] != n:
                    raise ValueError(f"sample {s.id}: {n} tokens but {s.labels.shape[0]} labels")
                lab = s.labels.to(torch.long).clone()  # never edit the caller's sample
                lab[0] = IGNORE_INDEX
                trained_mask = lab != IGNORE_INDEX
                n_s = int(trained_mask.sum())
                trained += n_s
                ids.append(s.input_ids.to(torch.long))
                labels.append(lab)
                pos.append(torch.arange(n))
                index.append(torch.full((n,), k))
                datasets.append(s.dataset)
                weight.append(trained_mask.float() * len2weight(n_s, self.loss_reduction))
                cu.append(cu[-1] + n)
                k += 1
                if s.num_tiles:
                    tiles.append((s.pixel_values, getattr(s, "normalization", "imagenet")))
                    flags.append(s.image_flags.to(torch.long))
                    real_tiles += int((s.image_flags == 1).sum())
            pad = width - length
            if pad:  # the padding run is its own attention segment
                ids.append(torch.full((pad,), self.pad_token_id))
                labels.append(torch.full((pad,), IGNORE_INDEX))
                pos.append(torch.arange(pad))
                index.append(torch.full((pad,), -1))
                weight.append(torch.zeros(pad))
                cu.append(cu[-1] + pad)
            n_pack_tiles = sum(s.num_tiles for s in pack)
            extra = getattr(pack, "pad_tiles_to", 0) - n_pack_tiles
            if extra > 0:  # strict mode: zero tiles up to the tile budget
                tiles.append(extra)
                flags.append(torch.zeros(extra, dtype=torch.long))
        if not tiles:  # no tile anywhere: one dummy so the vision tower still runs
            tiles.append(1)
            flags.append(torch.zeros(1, dtype=torch.long))

        b = len(packs)
        cu_seqlens = torch.tensor(cu, dtype=torch.int32)
        real = sum(lengths)
        return {
            "input_ids": torch.cat(ids).view(b, width),
            "labels": torch.cat(labels).view(b, width),
            "position_ids": torch.cat(pos).view(b, width),
            "sample_index": torch.cat(index).view(b, width),
            "cu_seqlens": cu_seqlens,
            "max_seqlen": int((cu_seqlens[1:] - cu_seqlens[:-1]).max()),
            "loss_weight": torch.cat(weight).view(b, width).to(torch.float32),
            "pixel_values": self._tiles(tiles),
            "image_flags": torch.cat(flags),
            "datasets": datasets,
            "stats": {
                "packs": b,
                "samples": k,
                "real_tokens": real,
                "padding_tokens": b * width - real,
                "trained_tokens": trained,
                "tiles": real_tiles,
                "token_fill": real / (b * self.max_packed_tokens),
                "tile_fill": real_tiles / (b * self.num_images_expected) if self.num_images_expected else 0.0,
            },
        }

    def _tiles(self, parts: list[tuple[torch.Tensor, str] | int]) -> torch.Tensor:
        """One (N, 3, S, S) tensor from samples' tiles and counts of zero tiles, written in place.

        uint8 (T, S, S, 3) tiles are normalised straight into the output, so each pixel becomes
        float once per batch (no per-sample float tensors to concatenate).
        """
        real = [p[0] for p in parts if not isinstance(p, int)]
        size = next((_tile_side(t) for t in real), self.image_size)
        dtype = next((t.dtype for t in real if t.is_floating_point()), torch.float32)
        n = sum(p if isinstance(p, int) else p[0].shape[0] for p in parts)
        out = torch.empty((n, 3, size, size), dtype=dtype)
        row = 0
        for p in parts:
            if isinstance(p, int):  # zero tiles: the mean colour once normalised
                out[row : row + p].zero_()
                row += p
                continue
            t, normalization = p
            if _tile_side(t) != size:
                raise ValueError(f"tiles of {_tile_side(t)} px and {size} px in one batch")
            if t.dtype == torch.uint8 and t.shape[-1] == 3 and dtype == torch.float32:
                normalize_tiles(t.numpy(), normalization, out=out[row : row + t.shape[0]].numpy())
            elif t.dtype == torch.uint8 and t.shape[-1] == 3:  # a batch of bf16/fp16 tiles too
                out[row : row + t.shape[0]].copy_(torch.from_numpy(normalize_tiles(t.numpy(), normalization)))
            else:
                out[row : row + t.shape[0]].copy_(t)
            row += t.shape[0]
        return out


def _tile_side(t: torch.Tensor) -> int:
    """S of uint8 (T, S, S, 3) or float (T, 3, S, S) tiles."""
    return int(t.shape[1] if t.dtype == torch.uint8 and t.shape[-1] == 3 else t.shape[-1])
