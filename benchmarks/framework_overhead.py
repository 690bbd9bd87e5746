"""Figure 5: step time of ``InternVLChat`` under the Lightning Trainer vs a plain PyTorch loop.

Same small model (benchmarks/small_model.py, built from the same component directories with the
same seed), same packed batches (one 1024-token pack per step, from a DataLoader over pre-collated
batches), same optimizer: the module's own parameter groups, AdamW and cosine schedule.

- Lightning: ``Trainer(accelerator="cpu", max_steps=N)`` fitting ``InternVLChat`` as shipped (its
  logging of loss, lr, grad norm, fills and throughput included; CSV logger; no checkpointing,
  progress bar or model summary, which only run at the edges of a real run anyway);
- plain: ``next(batches)``: ``vlm_hidden_states`` -> ``weighted_loss`` -> backward ->
  ``optimizer.step()`` -> ``scheduler.step()`` -> ``zero_grad``, on its own copy of the model.

The two alternate step by step in one process: after each Lightning step a callback runs one
plain step on the same batch, so every Lightning step k has a plain step k right beside it.
Lightning step time = from the end of plain step k-1 to the end of Lightning step k (data fetching
and every hook count); plain step time = that plain step. Both are read on two clocks: the
process's CPU time (the figure: with one torch thread it counts the work done, not the time the
scheduler gave to other processes on a shared machine) and the wall clock (shown beside it). The
first ``warmup`` pairs are dropped; the figure is sum(Lightning_k) / sum(plain_k) - 1 over the
pairs, with a bootstrap standard error over pairs (``paired``). Separate runs compared by wall-clock medians swung from +0.6% to
+4.9% with the load of the shared 2-core machine. Target: Lightning overhead <= 5%.
"""

from __future__ import annotations

import random
import statistics
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


class PlainLoop:
    """The plain PyTorch training loop, one step per :meth:`step`."""

    def __init__(self, components, batches: list[dict]) -> None:
        self.model = small_model(components)
        self.opt = torch.optim.AdamW(
            param_groups(self.model, WEIGHT_DECAY), lr=LR, betas=(0.9, 0.999), eps=1e-8
        )
        total = len(batches)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda step: cosine_with_warmup(step, 0, total, 0.0)
        )
        self.batches = iter(loader(batches))

    def step(self) -> None:
        batch = next(self.batches)
        hidden = vlm_hidden_states(
            self.model, batch["input_ids"], batch["position_ids"], batch["pixel_values"], batch["image_flags"]
        )
        loss, _ = weighted_loss(hidden, self.model.lm_head, batch["labels"], batch["loss_weight"])
        loss.backward()
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)


CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}


class Alternate(L.Callback):
    """After every Lightning step, one plain step; each clock's reading at the end of each."""

    def __init__(self, plain: PlainLoop | None) -> None:
        self.plain = plain
        # per clock: (end of Lightning step k, end of plain step k)
        self.stamps: dict[str, list[tuple[float, float]]] = {name: [] for name in CLOCKS}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        lightning_end = {name: clock() for name, clock in CLOCKS.items()}
        with torch.enable_grad():
            self.plain.step()
        for name, clock in CLOCKS.items():
            self.stamps[name].append((lightning_end[name], clock()))

    def step_seconds(self, clock: str) -> dict[str, list[float]]:
        """Paired step times on ``clock`` from the second pair on (the first Lightning step has no start)."""
        stamps = self.stamps[clock]
        pairs = list(zip(stamps, stamps[1:]))
        return {
            "lightning": [cur[0] - prev[1] for prev, cur in pairs],
            "plain": [cur[1] - cur[0] for _, cur in pairs],
        }


def loader(batches: list[dict]) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(batches, batch_size=None, collate_fn=lambda b: b)


def alternating_steps(components, batches: list[dict], log_dir: Path) -> dict[str, dict[str, list[float]]]:
    """Lightning and plain steps, alternating: {clock: {variant: seconds per step}}, paired by index."""
    module = InternVLChat(vision=str(components[0]), llm=str(components[1]), lr=LR, weight_decay=WEIGHT_DECAY)
    alternate = Alternate(PlainLoop(components, batches))
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=len(batches),
        logger=CSVLogger(str(log_dir)),
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[alternate],
    )
    trainer.fit(module, train_dataloaders=loader(batches))
    return {clock: alternate.step_seconds(clock) for clock in CLOCKS}


def paired(times: dict[str, list[float]], warmup: int, resamples: int = 1000) -> dict:
    """Overhead = sum(Lightning_k) / sum(plain_k) - 1 over the pairs after ``warmup`` (each step
    weighs by its length, as in a run's total time), its bootstrap standard error over pairs, the
    mean extra seconds per step, the quartiles of the per-pair overheads and the median step times."""
    lightning, plain = times["lightning"][warmup:], times["plain"][warmup:]
    rng = random.Random(0)
    boot = []
    for _ in range(resamples):
        pick = [rng.randrange(len(plain)) for _ in plain]
        boot.append(sum(lightning[i] for i in pick) / sum(plain[i] for i in pick) - 1)
    quartiles = statistics.quantiles([a / b for a, b in zip(lightning, plain)], n=4)
    return {
        "overhead": sum(lightning) / sum(plain) - 1,
        "mean_extra_seconds": (sum(lightning) - sum(plain)) / len(plain),
        "standard_error": statistics.pstdev(boot),
        "quartiles": [quartiles[0] - 1, quartiles[2] - 1],
        "pairs": len(plain),
        "median_seconds": {"lightning": median(lightning), "plain": median(plain)},
    }


def run(quick: bool = False) -> dict:
    with cpu_settings(threads=1):
        return _run(quick)


def _run(quick: bool) -> dict:
    steps, warmup = (20, 3) if quick else (80, 5)
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
        times = alternating_steps(components, batches, Path(tmp) / "logs")
    stats = {clock: paired(t, warmup) for clock, t in times.items()}
    cpu, wall = stats["cpu"], stats["wall"]
    ms = {clock: {k: v * 1e3 for k, v in st["median_seconds"].items()} for clock, st in stats.items()}
    tokens = sum(b["stats"]["real_tokens"] for b in batches) / len(batches)
    rows = [
        row(
            "Lightning step time overhead (CPU time)",
            f"<= {TARGET_OVERHEAD:.0%}",
            f"{cpu['overhead']:+.1%} +- {cpu['standard_error']:.1%} ({cpu['pairs']} paired steps, per-pair "
            f"quartiles {cpu['quartiles'][0]:+.1%} / {cpu['quartiles'][1]:+.1%}; "
            f"median {ms['cpu']['lightning']:.0f} vs {ms['cpu']['plain']:.0f} ms/step)",
            cpu["overhead"] <= TARGET_OVERHEAD,
        ),
        row(
            "same on the wall clock",
            "info",
            f"{wall['overhead']:+.1%} +- {wall['standard_error']:.1%} (per-pair quartiles "
            f"{wall['quartiles'][0]:+.1%} / {wall['quartiles'][1]:+.1%}; "
            f"median {ms['wall']['lightning']:.0f} vs {ms['wall']['plain']:.0f} ms/step)",
            None,
        ),
        row(
            "absolute overhead per step (CPU time)",
            "info",
            f"{cpu['mean_extra_seconds'] * 1e3:+.1f} ms (mean over the pairs) at {tokens:.0f} tokens/step",
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
            "step_seconds": times,
            "paired": stats,
            "mean_real_tokens_per_step": tokens,
        },
    }


if __name__ == "__main__":
    result = run()
    save(result)
    print_result(result)
