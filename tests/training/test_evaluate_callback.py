"""EvaluateBenchmark under a real Trainer fit: scores logged at the right steps, train mode back."""

from __future__ import annotations

import csv

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from internvl_lightning.data.collate import PackingCollator
from internvl_lightning.evaluation import evaluate
from internvl_lightning.training.evaluate_callback import EvaluateBenchmark
from tests.helpers.batches import make_module, make_sample
from tests.helpers.evalgen import write_mmbench


class ModeProbe(L.Callback):
    """Records, before each training batch, whether every module the fit trains is in train mode."""

    def __init__(self) -> None:
        self.modes: list[tuple[int, bool]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.modes.append((trainer.global_step, all(m.training for m in pl_module.model.modules())))


def _batches(model, n: int) -> list[dict]:
    collate = PackingCollator(image_size=model.config.vision_config.image_size[0])
    return [collate([[make_sample(f"s{i}", 10, 1, model, i)]]) for i in range(n)]


def test_scores_are_logged_every_n_steps_and_at_the_end(tiny_components, tmp_path):
    module = make_module(tiny_components)
    data = write_mmbench(tmp_path / "mmbench_dev_en.tsv", n=2)
    callback = EvaluateBenchmark(
        "mmbench", data, every_n_steps=2, tokenizer=str(tiny_components[1]), max_new_tokens=2,
        batch_size=4, out_dir=tmp_path / "reports",
    )  # fmt: skip
    probe = ModeProbe()
    loader = torch.utils.data.DataLoader(_batches(module.model, 5), batch_size=None, collate_fn=lambda b: b)
    trainer = L.Trainer(
        max_steps=5, accelerator="cpu", devices=1, logger=CSVLogger(tmp_path, name="logs"),
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[callback, probe], log_every_n_steps=1,
    )  # fmt: skip
    trainer.fit(module, train_dataloaders=loader)

    # Steps 2 and 4 by the interval, step 5 at the end of the stage.
    assert [step for step, _ in callback.history] == [2, 4, 5]
    assert all(r.num_samples == 7 and r.num_scored == 2 for _, r in callback.history)  # 4 + 3 copies
    assert probe.modes == [(k, True) for k in range(5)]  # train mode back after each evaluation
    with open(trainer.logger.log_dir + "/metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("eval/mmbench_dev_en/score")]
    assert [int(r["step"]) for r in rows] == [2, 4, 5]
    logged = [float(r["eval/mmbench_dev_en/score"]) for r in rows]
    assert logged == pytest.approx([r.score for _, r in callback.history])
    assert all(r["eval/mmbench_dev_en/per_copy_accuracy"] for r in rows)
    # The last logged score is the trained model's: the same as evaluating it afterwards.
    module.model.eval()
    after = evaluate(
        module.model, "mmbench", data, str(tiny_components[1]), max_new_tokens=2, baseline="none"
    )
    assert [p["prediction"] for p in after.predictions] == [
        p["prediction"] for p in callback.history[-1][1].predictions
    ]
    assert sorted(p.name for p in (tmp_path / "reports").iterdir()) == [
        f"mmbench_dev_en_step{k}.{ext}" for k in (2, 4, 5) for ext in ("json", "md")
    ]


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="every_n_steps must be >= 1"):
        EvaluateBenchmark("mmbench", "x.tsv", every_n_steps=0)
    with pytest.raises(ValueError, match="never runs"):
        EvaluateBenchmark("mmbench", "x.tsv", at_stage_end=False)
    with pytest.raises(ValueError, match="unknown benchmark 'mmlu'"):
        EvaluateBenchmark("mmlu", "x.tsv", every_n_steps=1)
