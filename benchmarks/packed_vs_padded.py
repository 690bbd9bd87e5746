"""Figure 3: training tokens/s with packed sequences vs padded batches, on the same samples.

Model and samples: benchmarks/small_model.py (a small InternVL on CPU; the realistic mix scaled to
16 tokens per tile, i.e. a 1024-token / 48-tile pack budget). One epoch over the same samples:

- packed: greedy packs, ``PackingCollator``, one pack per step, ``position_ids`` restarting per
  sample and no attention mask (the library's path: ``model/forward.py::vlm_hidden_states``);
- padded: batches of ``batch`` consecutive samples padded to the longest, with an attention mask
  (the plain transformers way).

Each step is forward, the chunked loss, backward and AdamW. Both variants train copies of the same
initial model and see the same real tokens. Before training, per-sample losses of every sample are
computed both ways and must agree within 1e-4. Epochs alternate; we report the median.
Target: packed >= 1.5x the padded tokens/s.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import torch

from internvl_lightning.data.collate import PackingCollator
from internvl_lightning.model.forward import image_features, vlm_hidden_states
from internvl_lightning.training.loss import per_sample_losses, weighted_loss

from .common import cpu_settings, interleaved, median, print_result, row, save
from .small_model import mix_samples, pack_budget, packs_of, small_components, small_model

TARGET_SPEEDUP, LOSS_ATOL = 1.5, 1e-4


def padded_hidden_states(model, batch: dict) -> torch.Tensor:
    """Last hidden states of a padded batch (one sample per row) with an attention mask."""
    ids = batch["input_ids"]
    embeds = model.get_input_embeddings()(ids)
    keep = batch["image_flags"].bool()
    if keep.any():
        feats = image_features(model, batch["pixel_values"])[keep]
        mask = (ids == model.config.image_token_id).unsqueeze(-1)
        embeds = embeds.masked_scatter(mask, feats.reshape(-1, feats.shape[-1]).to(embeds.dtype))
    attention_mask = (batch["sample_index"] >= 0).long()
    out = model.model.language_model(inputs_embeds=embeds, attention_mask=attention_mask, use_cache=False)
    return out.last_hidden_state


def packed_hidden_states(model, batch: dict) -> torch.Tensor:
    return vlm_hidden_states(
        model, batch["input_ids"], batch["position_ids"], batch["pixel_values"], batch["image_flags"]
    )


def per_sample(model, batches: list[dict], forward) -> list[float]:
    """Token-mean loss of every sample, in sample order across the batches."""
    out = []
    with torch.no_grad():
        for b in batches:
            losses = per_sample_losses(forward(model, b), model.lm_head, b["labels"], b["sample_index"])
            out += [float(losses[k]) for k in sorted(losses)]
    return out


def train_epoch(model, optimizer, batches: list[dict], forward) -> None:
    for b in batches:
        hidden = forward(model, b)
        loss, _ = weighted_loss(hidden, model.lm_head, b["labels"], b["loss_weight"])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def run(quick: bool = False) -> dict:
    with cpu_settings(threads=1):
        return _run(quick)


def _run(quick: bool) -> dict:
    n, batch, repeats = (48, 8, 2) if quick else (96, 8, 3)
    with tempfile.TemporaryDirectory() as tmp:
        model = small_model(small_components(Path(tmp)))
    budget = pack_budget(model)
    samples = mix_samples(model, n)
    size = model.config.vision_config.image_size[0]
    collate = PackingCollator(loss_reduction="token", max_packed_tokens=budget, image_size=size)
    packs = packs_of(samples, budget)
    packed = [collate([p]) for p in packs]
    groups = [samples[i : i + batch] for i in range(0, n, batch)]
    padded = [collate([[s] for s in g]) for g in groups]

    # per-sample losses, both layouts, same weights
    model.eval()  # no drop path / dropout: the comparison must be deterministic
    order = {s.id: i for i, s in enumerate(samples)}
    packed_ids = [order[s.id] for p in packs for s in p]
    loss_packed = dict(zip(packed_ids, per_sample(model, packed, packed_hidden_states)))
    loss_padded = dict(zip(range(n), per_sample(model, padded, padded_hidden_states)))
    max_diff = max(abs(loss_packed[i] - loss_padded[i]) for i in range(n))
    model.train()

    real = sum(s.num_tokens for s in samples)
    computed = {
        "packed": sum(b["input_ids"].numel() for b in packed),
        "padded": sum(b["input_ids"].numel() for b in padded),
    }
    runs = {}
    for name, batches, fwd in (
        ("packed", packed, packed_hidden_states),
        ("padded", padded, padded_hidden_states),
    ):
        m = copy.deepcopy(model)
        opt = torch.optim.AdamW(m.parameters(), lr=1e-5)
        train_epoch(m, opt, batches[:1], fwd)  # warm-up step
        runs[name] = (m, opt, batches, fwd)
    times = interleaved({k: (lambda r=r: train_epoch(*r)) for k, r in runs.items()}, repeats)
    tps = {k: real / median(t) for k, t in times.items()}
    speedup = tps["packed"] / tps["padded"]
    rows = [
        row(
            "packed / padded tokens/s",
            f">= {TARGET_SPEEDUP:g}x",
            f"{speedup:.2f}x ({tps['packed']:.0f} vs {tps['padded']:.0f} real tokens/s)",
            speedup >= TARGET_SPEEDUP,
        ),
        row(
            "per-sample loss max |packed - padded|",
            f"<= {LOSS_ATOL:g}",
            f"{max_diff:.1e} over {n} samples",
            max_diff <= LOSS_ATOL,
        ),
        row(
            "tokens computed per real token",
            "info",
            f"packed {computed['packed'] / real:.2f}, padded {computed['padded'] / real:.2f} "
            f"({len(packed)} packs vs {len(padded)} batches of {batch})",
            None,
        ),
    ]
    return {
        "figure": "packed_vs_padded",
        "title": f"training tokens/s, packed ({budget}-token packs) vs padded batches of {batch}, CPU small model",
        "rows": rows,
        "details": {
            "model": "benchmarks/small_model.py SMALL_VLM (tiny ViT + Qwen2 256x4)",
            "samples": n,
            "real_tokens": real,
            "computed_tokens": computed,
            "seconds": times,
            "tokens_per_s": tps,
            "speedup": speedup,
            "per_sample_loss_max_abs_diff": max_diff,
            "pack_budget_tokens": budget,
        },
    }


if __name__ == "__main__":
    result = run()
    save(result)
    print_result(result)
