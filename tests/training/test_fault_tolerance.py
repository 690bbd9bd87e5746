"""Fault tolerance: atomic checkpoints, exact resume after SIGKILL, skipping non-finite steps."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from internvl_lightning.data.collate import PackingCollator
from internvl_lightning.training import checkpoint as ckpt_mod
from internvl_lightning.training.checkpoint import AtomicModelCheckpoint, RngState, link, publish, recover
from internvl_lightning.training.fault import NonFiniteError, NonFiniteGuard
from internvl_lightning.training.module import InternVLChat
from tests.helpers.batches import make_module, make_sample

# ---- helpers ------------------------------------------------------------------------------------


def packed_batches(module: InternVLChat, n: int, nan_at: tuple[int, ...] = ()) -> list[dict]:
    """n packed batches of 2 samples; batches in `nan_at` carry NaN loss weights (corrupt data)."""
    size = module.model.config.vision_config.image_size[0]
    collate = PackingCollator(loss_reduction="square", image_size=size)
    out = []
    for i in range(n):
        b = collate(
            [
                [
                    make_sample(f"a{i}", 12, 1, module.model, 2 * i),
                    make_sample(f"b{i}", 9, 0, module.model, 2 * i + 1),
                ]
            ]
        )
        if i in nan_at:
            b["loss_weight"] = b["loss_weight"] * float("nan")
        out.append(b)
    return out


def loader(batches: list[dict]) -> DataLoader:
    return DataLoader(batches, batch_size=None, collate_fn=lambda b: b)


def trainer(tmp_path: Path, steps: int, callbacks: list, **kw) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=str(tmp_path), callbacks=callbacks, **kw,
    )  # fmt: skip


class Snapshots(L.Callback):
    """Parameters and AdamW state before and after every batch."""

    def __init__(self) -> None:
        self.before: list[dict] = []
        self.after: list[dict] = []

    @staticmethod
    def _take(pl_module, trainer) -> dict:
        opt = trainer.optimizers[0]
        state = {
            id(p): {k: v.clone() if torch.is_tensor(v) else v for k, v in s.items()}
            for p, s in opt.state.items()
        }
        return {"params": {n: p.detach().clone() for n, p in pl_module.named_parameters()}, "opt": state}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.before.append(self._take(pl_module, trainer))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.after.append(self._take(pl_module, trainer))


class StartStep(L.Callback):
    step: int | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        self.step = trainer.global_step


def same_state(a: dict, b: dict) -> bool:
    if a["params"].keys() != b["params"].keys() or a["opt"].keys() != b["opt"].keys():
        return False
    if not all(torch.equal(a["params"][k], b["params"][k]) for k in a["params"]):
        return False
    return all(
        all(torch.equal(x[k], y[k]) if torch.is_tensor(x[k]) else x[k] == y[k] for k in x)
        for x, y in ((a["opt"][i], b["opt"][i]) for i in a["opt"])
    )


@pytest.fixture(scope="module")
def tiny_module_batches(tiny_components):
    module = make_module(tiny_components)
    return module, packed_batches(module, 6, nan_at=(2,))


def fresh(tiny_components, **kw) -> InternVLChat:
    return InternVLChat(vision=str(tiny_components[0]), llm=str(tiny_components[1]), lr=1e-3, **kw)


# ---- (c) non-finite steps -------------------------------------------------------------------------


def test_nonfinite_loss_skips_the_step(tiny_components, tiny_module_batches, tmp_path):
    _, batches = tiny_module_batches
    snaps, guard = Snapshots(), NonFiniteGuard(max_consecutive_nonfinite=3)
    t = trainer(tmp_path, 5, [snaps, guard], enable_checkpointing=False, gradient_clip_val=1.0)
    t.fit(fresh(tiny_components), train_dataloaders=loader(batches[:5]))
    # Batch 2 (NaN loss weights) changed neither parameters nor AdamW state (moments, step count),
    # although weight decay and momentum would have moved them with zeroed gradients.
    assert same_state(snaps.before[2], snaps.after[2])
    for i in (1, 3):
        assert not same_state(snaps.before[i], snaps.after[i])
    assert guard.skipped == 1 and guard.consecutive == 0
    assert t.callback_metrics["train/skipped_steps"] == 1
    assert all(torch.isfinite(p).all() for p in snaps.after[-1]["params"].values())
    assert t.global_step == 5  # the skipped step still counts as a step (LR schedule advances)


def test_nonfinite_gradient_skips_the_step(tiny_components, tiny_module_batches, tmp_path):
    _, batches = tiny_module_batches

    class InfGradAtStep1(L.Callback):
        def on_after_backward(self, trainer, pl_module) -> None:
            if trainer.global_step == 1:
                next(p for p in pl_module.parameters() if p.grad is not None).grad[0] = float("inf")

    snaps, guard = Snapshots(), NonFiniteGuard()
    t = trainer(tmp_path, 3, [InfGradAtStep1(), snaps, guard], enable_checkpointing=False)
    t.fit(fresh(tiny_components), train_dataloaders=loader([batches[i] for i in (0, 1, 3)]))
    assert same_state(snaps.before[1], snaps.after[1])
    assert not same_state(snaps.before[2], snaps.after[2])
    assert guard.skipped == 1


def test_too_many_nonfinite_steps_in_a_row_abort(tiny_components, tiny_module_batches, tmp_path):
    module, _ = tiny_module_batches
    bad = packed_batches(module, 5, nan_at=(1, 2, 3, 4))
    snaps = Snapshots()
    t = trainer(tmp_path, 5, [snaps, NonFiniteGuard(max_consecutive_nonfinite=3)], enable_checkpointing=False)
    with pytest.raises(NonFiniteError) as err:
        t.fit(fresh(tiny_components), train_dataloaders=loader(bad))
    text = str(err.value)
    assert "stopping at step 4" in text and "3 optimizer steps in a row" in text
    for hint in ("learning rate", "data", "precision", "bf16"):
        assert hint in text
    assert same_state(snaps.after[0], snaps.after[-1])  # nothing changed after the first good step


def test_skip_count_is_checkpointed():
    guard = NonFiniteGuard()
    guard.skipped, guard.consecutive = 4, 2
    other = NonFiniteGuard()
    other.load_state_dict(guard.state_dict())
    assert (other.skipped, other.consecutive) == (4, 2)
    with pytest.raises(ValueError):
        NonFiniteGuard(max_consecutive_nonfinite=0)


# ---- (a) atomic checkpoints -----------------------------------------------------------------------


def test_crash_during_save_keeps_last_on_the_previous_checkpoint(
    tiny_components, tiny_module_batches, tmp_path, monkeypatch
):
    _, batches = tiny_module_batches
    good = [batches[i] for i in (0, 1, 3, 4, 5)]
    ckpt_dir = tmp_path / "ckpt"

    def make_trainer(steps: int) -> L.Trainer:
        cb = AtomicModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=1, save_top_k=-1, save_last="link")
        return trainer(tmp_path, steps, [cb, RngState()])

    t = make_trainer(4)
    real_save = t.strategy.checkpoint_io.save_checkpoint

    def dying_save(checkpoint, path, storage_options=None):
        if checkpoint["global_step"] == 3:  # write half a checkpoint, then the node dies
            real_save(checkpoint, path)
            data = Path(path).read_bytes()
            Path(path).write_bytes(data[: len(data) // 2])
            raise OSError("simulated crash in the middle of a checkpoint write")
        return real_save(checkpoint, path, storage_options)

    monkeypatch.setattr(t.strategy.checkpoint_io, "save_checkpoint", dying_save)
    with pytest.raises(OSError, match="simulated crash"):
        t.fit(fresh(tiny_components), train_dataloaders=loader(good))

    last = ckpt_dir / "last.ckpt"
    assert last.is_symlink() and os.readlink(last) == "epoch=0-step=2.ckpt"
    assert (ckpt_dir / ".staging-epoch=0-step=3.ckpt").exists()  # the torn write, never published
    assert not (ckpt_dir / "epoch=0-step=3.ckpt").exists()
    state = torch.load(last, map_location="cpu", weights_only=True)
    assert state["global_step"] == 2

    # Resuming from "last" cleans the torn save and continues from step 2.
    t2 = make_trainer(4)
    start = StartStep()
    t2.callbacks.append(start)
    t2.fit(fresh(tiny_components), train_dataloaders=loader(good[2:]), ckpt_path="last")
    assert start.step == 2 and t2.global_step == 4
    assert os.readlink(last).endswith("-step=4.ckpt")
    assert not [p for p in ckpt_dir.iterdir() if p.name.startswith(".")]


def test_last_link_never_dangles_and_covers_the_final_step(
    tiny_components, tiny_module_batches, tmp_path, monkeypatch
):
    """Top-k rotation deletes old checkpoints only after "last" moved on; the end of training is saved."""
    _, batches = tiny_module_batches
    ckpt_dir = tmp_path / "ckpt"
    cb = AtomicModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=2, save_top_k=1, save_last="link")
    removed = []

    def remove(trainer, filepath):
        assert (ckpt_dir / "last.ckpt").resolve() != Path(filepath).resolve(), "removing the target of last"
        removed.append(Path(filepath).name)
        trainer.strategy.remove_checkpoint(filepath)

    monkeypatch.setattr(cb, "_remove_checkpoint", remove)
    t = trainer(tmp_path, 5, [cb])
    t.fit(fresh(tiny_components), train_dataloaders=loader([batches[i] for i in (0, 1, 3, 4, 5)]))
    assert removed == ["epoch=0-step=2.ckpt", "epoch=0-step=4.ckpt"]
    assert os.readlink(ckpt_dir / "last.ckpt") == "epoch=0-step=5.ckpt"
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["epoch=0-step=5.ckpt", "last.ckpt"]


def test_publish_and_link_directories(tmp_path, monkeypatch):
    """DeepSpeed / FSDP2 checkpoints are directories: same guarantees, including a crash mid-replace."""

    def write_dir(path: Path, tag: str) -> Path:
        (path / "checkpoint").mkdir(parents=True)
        (path / "checkpoint" / "shard_0.pt").write_text(tag)
        (path / "latest").write_text("checkpoint")
        return path

    publish(write_dir(tmp_path / ".staging-a.ckpt", "a"), tmp_path / "a.ckpt")
    link(tmp_path / "a.ckpt", tmp_path / "last.ckpt")
    publish(write_dir(tmp_path / ".staging-b.ckpt", "b"), tmp_path / "b.ckpt")
    link(tmp_path / "b.ckpt", tmp_path / "last.ckpt")
    assert os.readlink(tmp_path / "last.ckpt") == "b.ckpt"
    assert (tmp_path / "last.ckpt" / "checkpoint" / "shard_0.pt").read_text() == "b"

    # Replacing a directory of the same name (copy-mode "last") dies between its two renames:
    # recover() puts the old complete directory back and drops the unpublished one.
    write_dir(tmp_path / ".staging-b.ckpt", "b2")
    real_rename, calls = os.rename, []

    def dying_rename(src, dst):
        calls.append(src)
        if len(calls) == 2:
            raise OSError("killed between renames")
        return real_rename(src, dst)

    monkeypatch.setattr(ckpt_mod.os, "rename", dying_rename)
    with pytest.raises(OSError):
        publish(tmp_path / ".staging-b.ckpt", tmp_path / "b.ckpt")
    monkeypatch.setattr(ckpt_mod.os, "rename", real_rename)
    assert not (tmp_path / "b.ckpt").exists()
    notes = recover(tmp_path)
    assert (tmp_path / "b.ckpt" / "checkpoint" / "shard_0.pt").read_text() == "b"
    assert any("restored" in n for n in notes) and any("unfinished" in n for n in notes)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.ckpt", "b.ckpt", "last.ckpt"]


def test_rng_state_round_trip(tmp_path):
    import random

    state = ckpt_mod.rng_state()
    want = (torch.rand(3), np.random.rand(3), random.random())
    torch.rand(5), np.random.rand(7), random.random()
    # the state survives the weights-only loader that checkpoints are read with
    torch.save(state, tmp_path / "rng.pt")
    loaded = torch.load(tmp_path / "rng.pt", weights_only=True)
    ckpt_mod.set_rng_state(loaded)
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(got[0], want[0]) and np.array_equal(got[1], want[1]) and got[2] == want[2]


# ---- (b) exact resume after SIGKILL ---------------------------------------------------------------
