"""Packed vs padded tokens/s on the GPU: what a trainer without packing gets on the same samples.

Packed: the library's greedy packs (``TOKENS`` / ``TILES``), restarting ``position_ids``, the LLM's
packed attention. Padded: consecutive samples batched while the padded batch stays within the same
budget (batch size x longest sample <= ``TOKENS`` tokens, <= ``TILES`` tiles; the memory a pack
takes), padded to the longest with an attention mask (``packed_vs_padded.padded_hidden_states``,
sdpa). Both train the same model eagerly (shapes change every padded batch, so compiled blocks
would recompile), forward + chunked loss + backward + AdamW, one epoch over the same samples.
"""

from __future__ import annotations

import time

import torch

from benchmarks.gpu import LOSS_CHUNK, TILES, mix_samples, sync, to_device
from benchmarks.packed_vs_padded import packed_hidden_states, padded_hidden_states
from internvl_lightning.data.collate import PackingCollator
from internvl_lightning.data.packing import EncodedSample, Packer
from internvl_lightning.training.loss import weighted_loss


def padded_groups(samples: list[EncodedSample], tokens: int, tiles: int) -> list[list[EncodedSample]]:
    """Consecutive samples, each group within ``tokens`` padded tokens and ``tiles`` tiles."""
    groups: list[list[EncodedSample]] = [[]]
    for s in samples:
        group = groups[-1] + [s]
        longest = max(x.num_tokens for x in group)
        if groups[-1] and (longest * len(group) > tokens or sum(x.num_tiles for x in group) > tiles):
            groups.append([s])
        else:
            groups[-1] = group
    return groups


def epoch_seconds(model, opt, batches: list[dict], forward, device, precision: str) -> float:
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed")
    sync(device)
    t0 = time.perf_counter()
    for b in batches:
        with autocast:
            loss, _ = weighted_loss(
                forward(model, b), model.lm_head, b["labels"], b["loss_weight"], None, LOSS_CHUNK
            )
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync(device)
    return time.perf_counter() - t0


def packed_vs_padded(model, opt, preset, n_samples: int, budget: int, device, precision: str) -> dict:
    """Real tokens/s of one epoch each way over the same ``n_samples`` (after one warm-up batch each)."""
    samples = [s for s in mix_samples(preset, n_samples, seed=1) if s.num_tokens <= budget]
    collate = PackingCollator(
        max_packed_tokens=budget, num_images_expected=TILES, image_size=preset.vision.image_size
    )
    packed = [to_device(collate([p]), device) for p in Packer(budget, TILES, 20).pack(iter(samples))]
    padded = [to_device(collate([[s] for s in g]), device) for g in padded_groups(samples, budget, TILES)]
    real = sum(s.num_tokens for s in samples)
    result = {"samples": len(samples), "real_tokens": real}
    llm, packed_attn = model.model.language_model, model.model.language_model.config._attn_implementation
    for name, batches, forward in (
        ("packed", packed, packed_hidden_states),
        ("padded", padded, padded_hidden_states),
    ):
        llm.set_attn_implementation(packed_attn if name == "packed" else "sdpa")
        epoch_seconds(model, opt, batches[:1], forward, device, precision)  # warm-up
        seconds = epoch_seconds(model, opt, batches, forward, device, precision)
        computed = sum(b["input_ids"].numel() for b in batches)
        result[name] = {
            "batches": len(batches), "seconds": seconds, "tokens_per_s": real / seconds,
            "computed_tokens_per_real": computed / real,
        }  # fmt: skip
    llm.set_attn_implementation(packed_attn)
    result["packed_over_padded"] = result["packed"]["tokens_per_s"] / result["padded"]["tokens_per_s"]
    return result
