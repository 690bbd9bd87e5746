"""One rank of a 2-process CPU fit of tiny InternVL components under one strategy.

Three fits, all with a NaN loss injected on rank 1 at step 1 (so both ranks must skip that step):
  R  uninterrupted, 5 steps, ends with the stage output (HF-native dir);
  A  same run stopped after step 3 (a checkpoint every step, `last.ckpt` a link);
  B  `fit(ckpt_path="last")` in A's directory, on to step 5;
  C  (ZeRO-3) one step of a fit that starts from R's stage output (`init_from`).
Writes what the test checks to OUT/result-rank<r>.json: per-step losses, skipped steps, parameters
equal across ranks, stage output equal to the gathered parameters, ZeRO-3 partition sizes,
checkpoint layout.

usage: fit_strategy.py STRATEGY VISION LLM SHARDS OUT   (launched by tests/launch.py)
"""

from __future__ import annotations

import os

os.environ.setdefault("DS_ACCELERATOR", "cpu")

import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import lightning as L  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from lightning.pytorch.strategies import DDPStrategy  # noqa: E402
from tests.helpers.fake_gpu import CpuZeroStrategy  # noqa: E402
from tiny_data import tiny_datamodule  # noqa: E402

from internvl_lightning.model.build import build_model  # noqa: E402
from internvl_lightning.model.load import load_pretrained_vlm  # noqa: E402
from internvl_lightning.training.checkpoint import AtomicModelCheckpoint, RngState  # noqa: E402
from internvl_lightning.training.fault import NonFiniteGuard  # noqa: E402
from internvl_lightning.training.freeze import FreezeSchedule  # noqa: E402
from internvl_lightning.training.module import InternVLChat  # noqa: E402
from internvl_lightning.training.stage_output import StageOutput  # noqa: E402
from internvl_lightning.training.strategy import Fsdp2Strategy, is_zero3  # noqa: E402

STEPS, STOP_AFTER, NAN_STEP = 5, 3, 1


def make_strategy(name: str):
    if name.startswith("zero"):
        stage = int(name[-1])
        # "100b": persistence threshold 1e4, so the tiny model's large tensors really get partitioned.
        return CpuZeroStrategy(stage=stage, size="100b", exclude_frozen_parameters=stage == 1)
    if name == "ddp":
        return DDPStrategy(process_group_backend="gloo")
    if name == "fsdp2":
        return Fsdp2Strategy()
    raise ValueError(name)


class NanOnRank1(InternVLChat):
    """A bad batch on one rank only: the skip decision must still be global."""

    def configure_model(self):
        super().configure_model()
        # Under ZeRO-3 the model must be partitioned as it is built (zero.Init), not afterwards.
        self.built_partitioned = all(hasattr(p, "ds_id") for p in self.model.parameters())

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        if self.global_step == NAN_STEP and self.global_rank == 1:
            loss = loss * float("nan")
        return loss


class Record(L.Callback):
    """Per-step losses of this rank, and the step a run started from."""

    def __init__(self) -> None:
        self.losses: dict[int, float] = {}
        self.start_step: int | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        self.start_step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses[trainer.global_step] = float(outputs["loss"])


class StopAfter(L.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            trainer.should_stop = True


def full_params(trainer, model) -> dict[str, torch.Tensor]:
    """Every parameter, whole, on this rank (a collective under ZeRO-3 / FSDP2)."""
    if is_zero3(trainer.strategy):
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(model.parameters())):
            return {n: p.detach().clone() for n, p in model.named_parameters()}
    return {
        n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
        for n, p in model.named_parameters()
    }


class Checks(L.Callback):
    """Run R: the weights loaded equal a plain single-process build (at train start); at the end
    (after StageOutput): sharding, cross-rank equality, stage output."""

    def __init__(self, hf_dir: Path, reference: dict[str, torch.Tensor]) -> None:
        self.hf_dir, self.reference = hf_dir, reference
        self.result: dict = {}

    def on_train_start(self, trainer, pl_module) -> None:
        loaded = full_params(trainer, pl_module.model)
        self.result["built_partitioned"] = pl_module.built_partitioned
        self.result["loaded_keys_match"] = loaded.keys() == self.reference.keys()
        self.result["loaded_max_diff"] = max(
            float((loaded[k].float() - self.reference[k].float()).abs().max()) for k in self.reference
        )

    def on_train_end(self, trainer, pl_module) -> None:
        model, res = pl_module.model, self.result
        if is_zero3(trainer.strategy):
            parts = [(p.ds_numel, p.ds_tensor.numel(), p.data.numel()) for p in model.parameters()]
            res["zero3"] = {
                "full": sum(f for f, _, _ in parts),
                "local": sum(loc for _, loc, _ in parts),
                "partitioned": sum(loc < f for f, loc, _ in parts),
                "released": sum(d == 0 for _, _, d in parts),  # not gathered outside forward
                "params": len(parts),
            }
        if isinstance(trainer.strategy, Fsdp2Strategy):
            res["fsdp2_dtensors"] = sum(hasattr(p, "full_tensor") for p in model.parameters())
        params = full_params(trainer, model)
        everyone: list = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, params)
        res["same_across_ranks"] = all(
            other.keys() == params.keys() and all(torch.equal(other[k], params[k]) for k in params)
            for other in everyone
        )
        if trainer.is_global_zero and self.hf_dir is not None:
            exported = dict(load_pretrained_vlm(self.hf_dir).named_parameters())
            res["export_keys_match"] = exported.keys() == params.keys()
            res["export_max_diff"] = max(
                float((exported[k].float() - params[k].float()).abs().max()) for k in params
            )
        trainer.strategy.barrier("checks")


def fit(
    strategy: str,
    vision: str,
    llm: str,
    shards: str,
    root: Path,
    ckpt_path=None,
    stop=None,
    hf=None,
    ref=None,
    init_from=None,
):
    L.seed_everything(0, workers=True)
    freeze = (
        FreezeSchedule(freeze_llm=True, freeze_backbone=True) if strategy == "zero1" else FreezeSchedule()
    )
    record, guard = Record(), NonFiniteGuard(max_consecutive_nonfinite=3)
    ckpt = AtomicModelCheckpoint(
        dirpath=root / "ckpt",
        every_n_train_steps=1,
        save_top_k=-1,
        save_last="link",
        save_on_train_epoch_end=False,
    )
    callbacks = [freeze, record, guard, RngState(), ckpt]
    checks = None
    if ref is not None:
        checks = Checks(hf, ref)
        callbacks += ([StageOutput(str(hf))] if hf is not None else []) + [checks]
    if stop is not None:
        callbacks.append(StopAfter(stop))
    dm = tiny_datamodule(shards, llm)
    parts = {"init_from": init_from} if init_from else {"vision": vision, "llm": llm}
    module = NanOnRank1(**parts, lr=1e-3, weight_decay=0.05, drop_path_rate=0.1)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy=make_strategy(strategy),
        precision="32-true",
        max_steps=STEPS,
        gradient_clip_val=1.0,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(root),
        callbacks=callbacks,
    )
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    out = {"losses": record.losses, "start_step": record.start_step, "skipped": guard.skipped}
    norm = trainer.callback_metrics.get("train/grad_norm")
    out["grad_norm"] = None if norm is None else float(norm)
    if checks is not None:
        out.update(checks.result)
    last = root / "ckpt" / "last.ckpt"
    if last.is_symlink():
        out["last_target"] = os.readlink(last)
        target = last.resolve()
        out["ckpt_files"] = (
            sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())
            if target.is_dir()
            else []
        )
    out["staging_left"] = [p.name for p in (root / "ckpt").iterdir() if p.name.startswith(".")]
    return out


def main() -> None:
    strategy, vision, llm, shards, out = sys.argv[1:6]
    torch.set_num_threads(1)
    out = Path(out)
    # What every strategy must load: the plain build (before any strategy touches transformers).
    reference = {n: p.detach().clone() for n, p in build_model(vision=vision, llm=llm).named_parameters()}
    result = {
        "R": fit(strategy, vision, llm, shards, out / "R", hf=out / "R" / "hf", ref=reference),
        "A": fit(strategy, vision, llm, shards, out / "A", stop=STOP_AFTER),
        "B": fit(strategy, vision, llm, shards, out / "A", ckpt_path="last"),
    }
    if strategy == "zero3":  # C: the next stage starts from R's output (transformers' loader)
        hf = out / "R" / "hf"
        stage = {n: p.detach().clone() for n, p in load_pretrained_vlm(hf).named_parameters()}
        result["C"] = fit(strategy, vision, llm, shards, out / "C", ref=stage, init_from=str(hf), stop=1)
    rank = int(os.environ["RANK"])
    (out / f"result-rank{rank}.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    from internvl_lightning.training.fit import release_process_group

    try:
        main()
    finally:
        release_process_group()  # an exit with the group up can abort (status -6)
