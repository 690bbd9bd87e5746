"""Figure 5: step time of ``InternVLChat`` under the Lightning Trainer vs a plain PyTorch loop.

Same small model (benchmarks/small_model.py, built from the same component directories with the
same seed), same packed batches (one 1024-token pack per step, from a DataLoader over pre-collated
batches), same optimizer: the module's own parameter groups, AdamW and cosine schedule.

- Lightning: ``Trainer(accelerator="cpu", max_steps=N)`` fitting ``InternVLChat`` as shipped (its
  logging of loss, lr, grad norm, fills and throughput included; CSV logger; no checkpointing,
  progress bar or model summary, which only run at the edges of a real run anyway);
- plain: ``for batch in loader``: ``vlm_hidden_states`` -> ``weighted_loss`` -> backward ->
  ``optimizer.step()`` -> ``scheduler.step()`` -> ``zero_grad``.

Step time = time between the ends of consecutive steps (a callback in Lightning, the loop itself in
plain), so data fetching and every hook count. The first ``warmup`` steps are dropped; the runs
alternate; we compare medians. Target: Lightning overhead <= 5%.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger

from internvl_lightning.data.collate import PackingCollator
from internvl_lightning.model.forward import vlm_hidden_states
from internvl_lightning.training.loss import weighted_loss
from internvl_lightning.training.module import InternVLChat
from internvl_lightning.training.optim import cosine_with_warmup, param_groups

from .common import cpu_settings, median, print_result, row, save
from .small_model import mix_samples, pack_budget, packs_of, small_components, small_model

TARGET_OVERHEAD = 0.05
LR, WEIGHT_DECAY = 2e-4, 0.05


class StepClock(L.Callback):
    """Timestamps at the end of every training batch."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.stamps.append(time.perf_counter())


def loader(batches: list[dict]) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(batches, batch_size=None, collate_fn=lambda b: b)


def lightning_steps(components, batches: list[dict], log_dir: Path) -> list[float]:
    module = InternVLChat(vision=str(components[0]), llm=str(components[1]), lr=LR, weight_decay=WEIGHT_DECAY)
    clock = StepClock()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=len(batches),
        logger=CSVLogger(str(log_dir)),
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[clock],
    )
    trainer.fit(module, train_dataloaders=loader(batches))
    return [b - a for a, b in zip(clock.stamps, clock.stamps[1:])]


def plain_steps(components, batches: list[dict]) -> list[float]:
    model = small_model(components)
    opt = torch.optim.AdamW(param_groups(model, WEIGHT_DECAY), lr=LR, betas=(0.9, 0.999), eps=1e-8)
    total = len(batches)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: cosine_with_warmup(step, 0, total, 0.0))
    stamps = []
    for batch in loader(batches):
        hidden = vlm_hidden_states(
            model, batch["input_ids"], batch["position_ids"], batch["pixel_values"], batch["image_flags"]
        )
        loss, _ = weighted_loss(hidden, model.lm_head, batch["labels"], batch["loss_weight"])
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        stamps.append(time.perf_counter())
    return [b - a for a, b in zip(stamps, stamps[1:])]


def run(quick: bool = False) -> dict:
    with cpu_settings(threads=1):
        return _run(quick)


def _run(quick: bool) -> dict:
    steps, warmup, rounds = (20, 3, 2) if quick else (30, 5, 2)
    with tempfile.TemporaryDirectory() as tmp:
        components = small_components(Path(tmp) / "components")
        model = small_model(components)
        budget = pack_budget(model)
        collate = PackingCollator(
            max_packed_tokens=budget, image_size=model.config.vision_config.image_size[0]
        )
        batches = []
        seed = 0
        while len(batches) < steps:
            batches += [collate([p]) for p in packs_of(mix_samples(model, 64, seed), budget)]
            seed += 1
        batches = batches[:steps]
        del model
        times = {"lightning": [], "plain": []}
        for r in range(rounds):
            times["plain"] += plain_steps(components, batches)[warmup:]
            times["lightning"] += lightning_steps(components, batches, Path(tmp) / f"logs{r}")[warmup:]
    med = {k: median(v) for k, v in times.items()}
    overhead = med["lightning"] / med["plain"] - 1
    tokens = sum(b["stats"]["real_tokens"] for b in batches) / len(batches)
    rows = [
        row(
            "Lightning step time overhead",
            f"<= {TARGET_OVERHEAD:.0%}",
            f"{overhead:+.1%} ({med['lightning'] * 1e3:.0f} vs {med['plain'] * 1e3:.0f} ms/step, median)",
            overhead <= TARGET_OVERHEAD,
        ),
        row(
            "absolute overhead per step",
            "info",
            f"{(med['lightning'] - med['plain']) * 1e3:+.1f} ms at {tokens:.0f} tokens/step",
            None,
        ),
    ]
    return {
        "figure": "framework_overhead",
        "title": "InternVLChat + Lightning Trainer vs plain PyTorch loop, CPU small model, AdamW",
        "rows": rows,
        "details": {
            "steps_per_run": steps,
            "warmup_dropped": warmup,
            "rounds": rounds,
            "step_seconds": times,
            "median_seconds": med,
            "overhead": overhead,
            "mean_real_tokens_per_step": tokens,
        },
    }


if __name__ == "__main__":
    result = run()
    save(result)
    print_result(result)
