"""Training setup in one place (``training/parallelize.py``): a fixed order, refusals before any change,
and a new strategy's wrapping as its own ``parallelize_model``."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.strategies import ModelParallelStrategy, SingleDeviceStrategy

from internvl_lightning.data.collate import PackingCollator
from internvl_lightning.model.build import build_model
from internvl_lightning.training import parallelize as steps
from internvl_lightning.training.freeze import FreezeSchedule
from internvl_lightning.training.parallelize import TrainingSetup, check_setup, parallelize
from tests.helpers.batches import fit_batches, make_module, make_sample


def test_steps_run_in_the_fixed_order(monkeypatch):
    calls: list[str] = []
    model = build_model(preset="tiny")
    monkeypatch.setattr(steps, "add_vlm_lora", lambda *a: calls.append("lora") or {"llm": 1})
    monkeypatch.setattr(steps, "enable_activation_checkpointing", lambda part: calls.append("checkpoint"))
    monkeypatch.setattr(steps, "compile_blocks", lambda m: calls.append("compile"))

    class Wrapping:
        def parallelize_model(self, root, m):
            assert root == "root" and m is model
            calls.append("wrap")

    setup = TrainingSetup(llm_lora_rank=2, checkpoint_vision=True, checkpoint_llm=True, compile_blocks=True)
    scope = parallelize(model, setup, Wrapping(), freeze=lambda m: calls.append("freeze"), root="root")
    assert calls == ["lora", "freeze", "checkpoint", "checkpoint", "compile", "wrap"]
    assert scope(lambda x: x + 1, 1) == 2  # no ZeRO-3: a plain call


def test_impossible_combinations_are_refused_before_any_change():
    from lightning.pytorch.strategies import DeepSpeedStrategy

    zero3 = DeepSpeedStrategy.__new__(DeepSpeedStrategy)
    zero3.config = {"zero_optimization": {"stage": 3}}
    with pytest.raises(ValueError, match="LoRA adapters are not supported with ZeRO-3"):
        check_setup(TrainingSetup(vit_lora_rank=4), zero3)
    with pytest.raises(ValueError, match="compile_blocks does not work with ZeRO-3"):
        check_setup(TrainingSetup(compile_blocks=True), zero3)
    with pytest.raises(ValueError, match="no tensor-parallel plan"):
        check_setup(TrainingSetup(), ModelParallelStrategy.__new__(ModelParallelStrategy))
    model = build_model(preset="tiny")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError):
        parallelize(model, TrainingSetup(vit_lora_rank=4), zero3)
    assert model.state_dict().keys() == before.keys()  # no adapters were added


class RecordingStrategy(SingleDeviceStrategy):
    """docs/ARCHITECTURE.md, "add a strategy": a strategy class with its own ``parallelize_model``."""

    def __init__(self) -> None:
        super().__init__(device=torch.device("cpu"))
        self.wrapped: list[tuple[str, bool]] = []

    def parallelize_model(self, root: L.LightningModule, model) -> None:
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        self.wrapped.append(
            (type(root).__name__, all(n.startswith("model.multi_modal_projector") for n in trainable))
        )


def test_a_new_strategy_brings_its_own_wrapping(tiny_components, tmp_path):
    probe = make_module(tiny_components)
    collate = PackingCollator(0, "square", 4096, 8, image_size=64)
    batch = collate([[make_sample("a", 12, 1, probe.model, 1), make_sample("b", 9, 0, probe.model, 2)]])
    vision, llm = tiny_components
    from internvl_lightning.training.module import InternVLChat

    module = InternVLChat(vision=str(vision), llm=str(llm))
    strategy = RecordingStrategy()
    freeze = FreezeSchedule(freeze_llm=True, freeze_backbone=True)
    trainer = fit_batches(module, [batch], callbacks=[freeze], strategy=strategy, default_root_dir=tmp_path)
    # called once, on the LightningModule root, after the stage's freezing (only the MLP trains)
    assert strategy.wrapped == [("InternVLChat", True)] and trainer.global_step == 1
