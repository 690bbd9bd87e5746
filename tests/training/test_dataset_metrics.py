"""Per-dataset loss and token counts: from the loss's own per-token CE, logged by the module."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from internvl_lightning.data.collate import PackingCollator
from internvl_lightning.training.dataset_metrics import per_dataset
from internvl_lightning.training.loss import per_sample_losses, weighted_loss, weighted_loss_with_token_ce
from tests.helpers.batches import fit_batches, make_module, make_sample


def test_per_dataset_groups_tokens_by_their_sample():
    ce = torch.tensor([1.0, 2.0, 3.0, 4.0, 6.0])
    sample_index = torch.tensor([[0, 0, 0, 1, 1, 2, 2]])  # shifted: positions 0..5 predict 1..6
    positions = torch.tensor([0, 1, 2, 3, 5])  # targets in samples 0, 0, 1, 1, 2
    got = per_dataset(ce, positions, sample_index, ["a", "b", "a"])
    assert got == {"a": (pytest.approx((1 + 2 + 6) / 3), 3), "b": (pytest.approx(3.5), 2)}
    assert per_dataset(ce[:0], positions[:0], sample_index, ["a"]) == {}


def test_the_loss_returns_the_per_token_ce_it_trained_with(tiny_components):
    module = make_module(tiny_components)
    model = module.model
    samples = [make_sample(f"s{i}", 12 + i, 1, model, i) for i in range(3)]
    batch = PackingCollator(pad_token_id=0, max_packed_tokens=4096, num_images_expected=8)([samples])
    hidden = module(batch)
    loss, wsum, ce, positions = weighted_loss_with_token_ce(hidden, model.lm_head, batch["labels"])
    assert torch.equal(loss, weighted_loss(hidden, model.lm_head, batch["labels"])[0])
    assert loss.item() == pytest.approx(float(ce.mean()), rel=1e-6) and positions.numel() == int(wsum)
    by_sample = per_sample_losses(hidden, model.lm_head, batch["labels"], batch["sample_index"])
    mixed = per_dataset(ce, positions, batch["sample_index"], ["x", "y", "x"])
    n = {k: int((batch["labels"][0, 1:] != -100)[batch["sample_index"][0, 1:] == k].sum()) for k in range(3)}
    want_x = (by_sample[0] * n[0] + by_sample[2] * n[2]) / (n[0] + n[2])
    assert mixed["x"][0] == pytest.approx(float(want_x), rel=1e-5) and mixed["x"][1] == n[0] + n[2]
    assert mixed["y"] == (pytest.approx(float(by_sample[1]), rel=1e-5), n[1])


def test_the_module_logs_loss_and_tokens_per_dataset(tiny_components, tmp_path):
    module = make_module(tiny_components)
    collate = PackingCollator(pad_token_id=0, max_packed_tokens=4096, num_images_expected=8)
    batches = []
    for step in range(2):
        samples = [make_sample(f"{step}-{i}", 10 + i, 1, module.model, 10 * step + i) for i in range(3)]
        samples = [dataclasses.replace(s, dataset=d) for s, d in zip(samples, ["coco", "ocr", "coco"])]
        batches.append(collate([samples]))
    fit_batches(module, batches, max_steps=2, logger=CSVLogger(tmp_path), log_every_n_steps=1)
    header = (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text().splitlines()[0]
    for key in ("train/loss/coco", "train/loss/ocr", "train/tokens/coco", "train/tokens/ocr"):
        assert key in header.split(","), header
