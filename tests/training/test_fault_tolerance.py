"""Fault tolerance: atomic checkpoints, exact resume after SIGKILL, skipping non-finite steps."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from internvl_lightning.data.collate import PackingCollator
from internvl_lightning.training import checkpoint as ckpt_mod
from internvl_lightning.training.checkpoint import AtomicModelCheckpoint, RngState, link, publish, recover
from internvl_lightning.training.fault import NonFiniteError, NonFiniteGuard, NonFiniteMonitor
from internvl_lightning.training.integrity import verify
from internvl_lightning.training.module import InternVLChat
from internvl_lightning.training.safe_load import SafeCheckpointEngine, UnsafeCheckpointError
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
    monitor = NonFiniteMonitor()
    monitor.skipped, monitor.consecutive, monitor.skipped_steps = 4, 2, [(3, "loss"), (7, "labels")]
    other = NonFiniteMonitor()
    other.load_state_dict(monitor.state_dict())
    assert (other.skipped, other.consecutive, other.skipped_steps) == (4, 2, [(3, "loss"), (7, "labels")])
    with pytest.raises(ValueError):
        NonFiniteGuard(max_consecutive_nonfinite=0)
    with pytest.raises(ValueError):
        NonFiniteMonitor(max_consecutive_nonfinite=0)


def test_the_guard_is_on_without_the_callback_and_says_each_skip(
    tiny_components, tiny_module_batches, tmp_path, capsys
):
    """A plain Trainer (the README's Python example) skips a NaN-weight batch: one line for the
    step, one summary line at the end of fit."""
    _, batches = tiny_module_batches
    snaps, module = Snapshots(), fresh(tiny_components)
    t = trainer(tmp_path, 4, [snaps], enable_checkpointing=False)
    t.fit(module, train_dataloaders=loader(batches[:4]))
    assert same_state(snaps.before[2], snaps.after[2]) and not same_state(snaps.before[3], snaps.after[3])
    assert module.nonfinite.skipped == 1 and t.callback_metrics["train/skipped_steps"] == 1
    err = capsys.readouterr().err.splitlines()
    skips = [line for line in err if "optimizer step skipped" in line]
    # step 3: the third optimizer step (global_step after it, as in checkpoint names)
    bad = "loss, gradients, loss_weight"
    assert skips == [f"WARNING: step 3: optimizer step skipped, non-finite {bad} (1 skipped so far)"]
    assert f"non-finite steps: 1 of 4 optimizer steps skipped: steps 3 ({bad})" in err


def test_the_callback_configures_the_module_guard_without_double_counting(
    tiny_components, tiny_module_batches, tmp_path
):
    _, batches = tiny_module_batches
    module, guard = fresh(tiny_components), NonFiniteGuard(max_consecutive_nonfinite=3)
    t = trainer(tmp_path, 4, [guard], enable_checkpointing=False)
    t.fit(module, train_dataloaders=loader(batches[:4]))
    assert module.nonfinite.max_consecutive_nonfinite == 3
    assert guard.skipped == module.nonfinite.skipped == 1
    assert t.callback_metrics["train/skipped_steps"] == 1


@pytest.mark.parametrize("fault", ["label_out_of_vocabulary", "nan_label"])
def test_bad_labels_make_a_nonfinite_step(tiny_components, tiny_module_batches, tmp_path, capsys, fault):
    module, _ = tiny_module_batches
    batches = packed_batches(module, 3)
    labels = batches[1]["labels"]
    trained = (labels != -100).nonzero()[0].tolist()
    if fault == "nan_label":
        labels = labels.float()
        labels[tuple(trained)] = float("nan")
    else:
        labels[tuple(trained)] = module.model.lm_head.out_features + 5
    batches[1]["labels"] = labels
    snaps, fit_module = Snapshots(), fresh(tiny_components)
    t = trainer(tmp_path, 3, [snaps], enable_checkpointing=False)
    t.fit(fit_module, train_dataloaders=loader(batches))
    assert same_state(snaps.before[1], snaps.after[1]) and not same_state(snaps.before[2], snaps.after[2])
    assert fit_module.nonfinite.skipped_steps == [(2, "loss, gradients, labels")]
    line = "WARNING: step 2: optimizer step skipped, non-finite loss, gradients, labels (1 skipped so far)"
    assert line in capsys.readouterr().err.splitlines()


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
        original(trainer, filepath)

    original = cb._remove_checkpoint
    monkeypatch.setattr(cb, "_remove_checkpoint", remove)
    t = trainer(tmp_path, 5, [cb])
    t.fit(fresh(tiny_components), train_dataloaders=loader([batches[i] for i in (0, 1, 3, 4, 5)]))
    assert removed == ["epoch=0-step=2.ckpt", "epoch=0-step=4.ckpt"]
    assert os.readlink(ckpt_dir / "last.ckpt") == "epoch=0-step=5.ckpt"
    assert sorted(p.name for p in ckpt_dir.iterdir()) == [
        "epoch=0-step=5.ckpt",
        "epoch=0-step=5.ckpt.sha256.json",  # the checksums went with the checkpoints they describe
        "last.ckpt",
    ]


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


# ---- (d) checkpoint checksums and what "last" resumes from ----------------------------------------


def ckpt_trainer(tmp_path: Path, steps: int, extra: list | None = None, **kw) -> L.Trainer:
    cb = AtomicModelCheckpoint(every_n_train_steps=1, save_top_k=-1, save_last="link", **kw)
    return trainer(tmp_path, steps, [cb, *(extra or [])])


@pytest.fixture(scope="module")
def three_checkpoints(tiny_components, tiny_module_batches, tmp_path_factory):
    """A run dir whose checkpoints/ (the default dirpath) holds steps 1-3, last -> step 3."""
    _, batches = tiny_module_batches
    root = tmp_path_factory.mktemp("three_checkpoints")
    ckpt_trainer(root, 3).fit(fresh(tiny_components), train_dataloaders=loader(batches[:2] + batches[3:4]))
    return root


def resume(root: Path, tiny_components, batches, steps: int = 4) -> int:
    start = StartStep()
    ckpt_trainer(root, steps, [start]).fit(
        fresh(tiny_components), train_dataloaders=loader(batches[4:6]), ckpt_path="last"
    )
    return start.step


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst / "checkpoints"


def warnings_in(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("WARNING:")]


def test_checkpoints_carry_checksums_in_the_default_dir(three_checkpoints):
    ckpt_dir = three_checkpoints / "checkpoints"
    names = sorted(p.name for p in ckpt_dir.iterdir())
    steps = [f"epoch=0-step={i}.ckpt" for i in (1, 2, 3)]
    assert names == sorted([*steps, *(n + ".sha256.json" for n in steps), "last.ckpt"])
    sums = json.loads((ckpt_dir / "epoch=0-step=2.ckpt.sha256.json").read_text())["files"]
    data = (ckpt_dir / "epoch=0-step=2.ckpt").read_bytes()
    assert sums == {"": {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}}
    assert verify(ckpt_dir / "last.ckpt").intact and not verify(ckpt_dir / "last.ckpt").unverified


@pytest.mark.parametrize("fault", ["corrupted", "truncated", "dangling"])
def test_a_broken_last_falls_back_to_the_newest_intact_checkpoint(
    fault, three_checkpoints, tiny_components, tiny_module_batches, tmp_path, capsys
):
    _, batches = tiny_module_batches
    ckpt_dir = copy_run(three_checkpoints, tmp_path / "run")
    newest = ckpt_dir / "epoch=0-step=3.ckpt"
    data = bytearray(newest.read_bytes())
    if fault == "corrupted":  # same size, one byte flipped in the middle
        data[len(data) // 2] ^= 0xFF
        newest.write_bytes(bytes(data))
    elif fault == "truncated":
        newest.write_bytes(bytes(data[: len(data) - 100]))
    else:
        newest.unlink()
    capsys.readouterr()
    assert resume(tmp_path / "run", tiny_components, batches) == 2
    problem = {
        "corrupted": "corrupted (its SHA-256 does not match)",
        "truncated": f"truncated ({len(data) - 100} of {len(data)} bytes)",
        "dangling": "a dangling link to epoch=0-step=3.ckpt",
    }[fault]
    assert warnings_in(capsys.readouterr().err) == [
        f"WARNING: --ckpt_path=last: last.ckpt (-> epoch=0-step=3.ckpt) is {problem}; "
        "resuming from epoch=0-step=2.ckpt, the newest intact checkpoint"
    ]


def test_no_intact_checkpoint_is_an_error_not_a_fresh_start(
    three_checkpoints, tiny_components, tiny_module_batches, tmp_path
):
    _, batches = tiny_module_batches
    ckpt_dir = copy_run(three_checkpoints, tmp_path / "run")
    for i in (1, 2, 3):
        path = ckpt_dir / f"epoch=0-step={i}.ckpt"
        path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(RuntimeError) as err:
        resume(tmp_path / "run", tiny_components, batches)
    text = str(err.value)
    assert (
        f"no intact checkpoint in {ckpt_dir} (found 4: last.ckpt (-> epoch=0-step=3.ckpt) is truncated"
        in text
    )
    assert "epoch=0-step=2.ckpt is truncated (1000 of" in text and "epoch=0-step=1.ckpt is truncated" in text
    assert "Not starting from step 0" in text


def test_an_explicit_corrupt_checkpoint_is_refused(
    three_checkpoints, tiny_components, tiny_module_batches, tmp_path
):
    _, batches = tiny_module_batches
    ckpt_dir = copy_run(three_checkpoints, tmp_path / "run")
    path = ckpt_dir / "epoch=0-step=2.ckpt"
    data = bytearray(path.read_bytes())
    data[-50] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(
        RuntimeError, match=r"cannot resume from .*step=2.ckpt: it is corrupted \(its SHA-256"
    ):
        ckpt_trainer(tmp_path / "run", 3).fit(
            fresh(tiny_components), train_dataloaders=loader(batches[3:5]), ckpt_path=str(path)
        )


def test_last_without_any_checkpoint_starts_from_scratch_with_one_warning(
    tiny_components, tiny_module_batches, tmp_path, capsys, recwarn
):
    _, batches = tiny_module_batches
    capsys.readouterr()
    assert resume(tmp_path, tiny_components, batches, steps=1) == 0
    assert warnings_in(capsys.readouterr().err) == [
        f"WARNING: --ckpt_path=last: no checkpoint in {tmp_path / 'checkpoints'} yet; starting from scratch"
    ]
    assert not [w for w in recwarn if "no last checkpoint" in str(w.message)]  # not said twice
    assert (tmp_path / "checkpoints" / "last.ckpt").is_symlink()


def test_checkpoints_stay_in_one_place_when_a_logger_versions_its_runs(
    tiny_components, tiny_module_batches, tmp_path
):
    """With a logger (new version_N per run) the default dirpath is still <default_root_dir>/checkpoints,
    so the same command run again resumes."""
    from lightning.pytorch.loggers import CSVLogger

    _, batches = tiny_module_batches

    def run(steps: int, batches_: list, ckpt_path=None) -> int:
        start = StartStep()
        cb = AtomicModelCheckpoint(every_n_train_steps=1, save_last="link")
        t = L.Trainer(
            accelerator="cpu", max_steps=steps, logger=CSVLogger(tmp_path), enable_progress_bar=False,
            enable_model_summary=False, default_root_dir=str(tmp_path), callbacks=[cb, start],
        )  # fmt: skip
        t.fit(fresh(tiny_components), train_dataloaders=loader(batches_), ckpt_path=ckpt_path)
        return start.step

    run(2, batches[:2], ckpt_path="last")
    assert os.readlink(tmp_path / "checkpoints" / "last.ckpt") == "epoch=0-step=2.ckpt"
    assert run(3, batches[3:4], ckpt_path="last") == 2
    assert sorted(p.name for p in (tmp_path / "lightning_logs").iterdir()) == ["version_0", "version_1"]


# ---- (e) DeepSpeed files are read weights-only -----------------------------------------------------


class OpensAFile:
    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_deepspeed_files_are_read_weights_only(tmp_path):
    """What ZeRO-1/2/3 optimizer files hold loads; a pickle that would create a file is refused unrun
    (the same through a full ZeRO resume: tests/integration/test_faults_training.py)."""
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    engine = SafeCheckpointEngine(TorchCheckpointEngine())
    genuine = {
        "loss_scaler": LossScaler(1.0),
        "zero_stage": ZeroStageEnum.gradients,
        "param_slice_mappings": [{"w": fragment_address(numel=4, start=0)}],
        "fp32": torch.ones(4),
    }
    torch.save(genuine, tmp_path / "optim_states.pt")
    loaded = engine.load(str(tmp_path / "optim_states.pt"), map_location="cpu")
    assert loaded["zero_stage"] is ZeroStageEnum.gradients and torch.equal(loaded["fp32"], torch.ones(4))
    assert loaded["param_slice_mappings"][0]["w"] == fragment_address(numel=4, start=0)

    marker = tmp_path / "payload-ran"
    torch.save({"optimizer_state_dict": OpensAFile(marker)}, tmp_path / "planted.pt")
    with pytest.raises(UnsafeCheckpointError, match=r"planted.pt: it references io.open, which a DeepSpeed"):
        engine.load(str(tmp_path / "planted.pt"))
    assert not marker.exists()


def test_a_fresh_run_does_not_overwrite_another_runs_checkpoints(tiny_components, tmp_path):
    """Starting from step 0 where another run left checkpoints is refused before any step."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "epoch=0-step=100.ckpt").write_bytes(b"an earlier run's")
    module = make_module(tiny_components)
    fit = trainer(run, 2, [AtomicModelCheckpoint(every_n_train_steps=1)])
    with pytest.raises(RuntimeError, match=r"holds checkpoints of an earlier run \(epoch=0-step=100.ckpt\)"):
        fit.fit(module, train_dataloaders=loader(packed_batches(module, 2)))
    assert fit.global_step == 0
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch=0-step=100.ckpt"]
