"""Where one training step's milliseconds go: ViT, LLM blocks, output layer + loss, optimizer.

One step is split into the parts of ``model/forward.py::vlm_hidden_states`` plus the loss and
the optimizer, with CUDA events (wall clock on the CPU) between them. The ViT's features are
detached before they enter the LLM, so the LLM's backward and the ViT's backward run as two calls
(``loss.backward()``, then ``features.backward(grad)``): the same work as one backward, timed
apart. The fused loss computes its gradients in the forward pass, so "output layer + loss" holds
both directions of the head; "LLM backward" the blocks' backward (with any recomputation).
"""

from __future__ import annotations

import statistics
import time

import torch

from benchmarks.gpu import LOSS_CHUNK, sync, train_steps
from internvl_lightning.model.forward import image_features
from internvl_lightning.training.loss import weighted_loss

PARTS = ("vit_forward", "llm_forward", "output_layer_and_loss", "llm_backward", "vit_backward", "optimizer")


class Clock:
    """Marks between parts: CUDA events on a GPU, ``perf_counter`` after a sync on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.marks: list = []

    def mark(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def intervals_ms(self) -> list[float]:
        if self.cuda:
            torch.cuda.synchronize()
            return [a.elapsed_time(b) for a, b in zip(self.marks, self.marks[1:])]
        return [(b - a) * 1e3 for a, b in zip(self.marks, self.marks[1:])]


def split_step(model, opt, b: dict, device: torch.device, precision: str) -> dict[str, float]:
    """One training step on pack ``b``; milliseconds per part of :data:`PARTS`."""
    clock = Clock(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed")
    sync(device)
    clock.mark()
    with autocast:
        keep = b["image_flags"].to(torch.bool)
        feats = image_features(model, b["pixel_values"])[keep]
        clock.mark()
        detached = feats.detach().requires_grad_(feats.requires_grad)
        embeds = model.get_input_embeddings()(b["input_ids"])
        mask = (b["input_ids"] == model.config.image_token_id).unsqueeze(-1)
        embeds = embeds.masked_scatter(mask, detached.reshape(-1, detached.shape[-1]).to(embeds.dtype))
        hidden = model.model.language_model(
            inputs_embeds=embeds, position_ids=b["position_ids"], attention_mask=None, use_cache=False
        ).last_hidden_state
        clock.mark()
        loss, _ = weighted_loss(hidden, model.lm_head, b["labels"], b["loss_weight"], None, LOSS_CHUNK)
        clock.mark()
    loss.backward()
    clock.mark()
    if feats.requires_grad:
        feats.backward(detached.grad)
    clock.mark()
    opt.step()
    opt.zero_grad(set_to_none=True)
    clock.mark()
    if not torch.isfinite(loss):
        raise FloatingPointError("loss is not finite")
    return dict(zip(PARTS, clock.intervals_ms()))


def profile(model, opt, packs: list[dict], device: torch.device, precision: str) -> dict:
    """Median milliseconds per part over ``packs`` (after one whole, unsplit step per pack as a
    reference), their shares of the split step, and the split step against the whole one."""
    whole_ms = [1e3 * t for t in train_steps(model, opt, packs, device, precision)]
    split = [split_step(model, opt, b, device, precision) for b in packs]
    parts = {p: statistics.median(s[p] for s in split) for p in PARTS}
    total = sum(parts.values())
    return {
        "parts_ms": parts,
        "shares": {p: ms / total for p, ms in parts.items()},
        "split_step_ms": total,
        "whole_step_ms": statistics.median(whole_ms),
        "split_over_whole": total / statistics.median(whole_ms),
    }


def format_profile(result: dict) -> str:
    lines = [f"{'part':24s} {'ms':>9s} {'share':>7s}"]
    for part, ms in result["parts_ms"].items():
        lines.append(f"{part:24s} {ms:9.1f} {result['shares'][part]:7.1%}")
    lines.append(
        f"{'split step':24s} {result['split_step_ms']:9.1f} (whole step {result['whole_step_ms']:.1f} ms)"
    )
    return "\n".join(lines)
