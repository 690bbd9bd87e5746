"""Lightning checkpoints: crash-safe saves (`AtomicModelCheckpoint`), exact resume (`RngState`), and
reading a `.ckpt` back into a model (`load_checkpoint`, which also takes every other checkpoint kind).

A checkpoint is written under a hidden staging name and renamed into place only once every rank
has finished writing, so a save killed midway never becomes a checkpoint, let alone "last".
Renaming works the same for a single file (DDP, one device) and a directory (DeepSpeed, FSDP2
distributed checkpoints). With `save_last="link"` (the stage recipes), `last.ckpt` is a symlink
swapped atomically to the newest complete checkpoint; no state is written twice.

Lightning does not checkpoint RNG states; `RngState` saves every rank's (torch, CUDA, numpy,
Python) and restores them just before the first resumed batch, so dropout / drop path draw the
same numbers as an uninterrupted run.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any
from weakref import proxy

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_warn
from transformers import InternVLForConditionalGeneration, PreTrainedTokenizerBase

from ..model.load import load_vlm_and_tokenizer
from ..tokenizer import TokenizerSource, load_tokenizer
from .wiring import tokenizer_dir

STAGING = ".staging-"  # a save in progress (never matches Lightning's "last*.ckpt" pattern)
TRASH = ".replaced-"  # a checkpoint being replaced by a newer one of the same name


def _fsync_tree(path: Path) -> None:
    """Flush a file, or every file under a directory, to stable storage."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for f in files:
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def publish(staged: str | Path, final: str | Path) -> None:
    """Move a completely written checkpoint (file or directory) to its final name.

    A new name is one atomic rename. Replacing a file is one atomic `os.replace`. Replacing a
    directory takes two renames; `recover` undoes a crash between them.
    """
    staged, final = Path(staged), Path(final)
    _fsync_tree(staged)
    if final.is_dir() and not final.is_symlink():
        trash = final.with_name(TRASH + final.name)
        _remove(trash)
        os.rename(final, trash)
        os.rename(staged, final)
        shutil.rmtree(trash)
    else:
        os.replace(staged, final)
    _fsync_dir(final.parent)


def link(target: str | Path, linkpath: str | Path) -> None:
    """Point `linkpath` at `target` (relative symlink), replacing any old link atomically."""
    target, linkpath = Path(target), Path(linkpath)
    tmp = linkpath.with_name(STAGING + linkpath.name)
    _remove(tmp)
    os.symlink(os.path.relpath(target, linkpath.parent), tmp)
    if linkpath.is_dir() and not linkpath.is_symlink():  # a real "last" directory from a copy-mode run
        publish(tmp, linkpath)
    else:
        os.replace(tmp, linkpath)
        _fsync_dir(linkpath.parent)


def recover(dirpath: str | Path) -> list[str]:
    """Clean a checkpoint directory after a crash: drop unfinished saves, restore half-replaced ones."""
    dirpath, notes = Path(dirpath), []
    if not dirpath.is_dir():
        return notes
    for p in sorted(dirpath.iterdir()):
        if p.name.startswith(STAGING):
            _remove(p)
            notes.append(f"removed unfinished save {p.name}")
        elif p.name.startswith(TRASH):
            final = p.with_name(p.name[len(TRASH) :])
            if final.exists() or final.is_symlink():
                _remove(p)
            else:
                os.rename(p, final)
                notes.append(f"restored {final.name}")
    return notes


class AtomicModelCheckpoint(ModelCheckpoint):
    """`ModelCheckpoint` whose saves are all-or-nothing (same arguments).

    Every save goes to `.staging-<name>`; after all ranks have written, global rank 0 renames it
    to `<name>` and, for `save_last="link"`, swaps the `last.ckpt` symlink. A crash at any point
    leaves `last.ckpt` on the previous complete checkpoint; leftovers are cleaned at the next start.
    Assumes checkpoints go to a filesystem every rank shares (as DeepSpeed's sharded saves do).

    Two more guarantees for `save_last="link"`: the link moves to a new checkpoint before top-k
    rotation deletes the old one (never dangling), and a state newer than the newest checkpoint
    (the end of training) is saved as a checkpoint rather than linking "last" to an older one.
    """

    def _links_last(self) -> bool:
        return self.save_last == "link" and self.save_top_k != 0

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if trainer.is_global_zero and self.dirpath:
            for note in recover(self.dirpath):
                rank_zero_warn(f"checkpoint directory {self.dirpath}: {note}")
        trainer.strategy.barrier("atomic_checkpoint_setup")

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        staged = os.path.join(os.path.dirname(filepath), STAGING + os.path.basename(filepath))
        if trainer.is_global_zero:
            _remove(Path(staged))  # left by a crash of this very run (names repeat after a resume)
        trainer.strategy.barrier("atomic_checkpoint_stage")
        trainer.save_checkpoint(staged, self.save_weights_only)  # every rank writes, then a barrier
        if trainer.is_global_zero:
            publish(staged, filepath)
        trainer.strategy.barrier("atomic_checkpoint_publish")
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if self._links_last() and not os.path.basename(filepath).startswith(self.CHECKPOINT_NAME_LAST):
            # Move "last" now: Lightning deletes the checkpoint it pointed to right after this save.
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        if trainer.is_global_zero:  # loggers see the checkpoint only once it exists
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))

    def _save_last_checkpoint(self, trainer: L.Trainer, monitor_candidates: dict) -> None:
        if self._links_last() and self._last_global_step_saved != trainer.global_step:
            self._save_topk_checkpoint(trainer, monitor_candidates)  # links "last" when it saves
            if self._last_global_step_saved == trainer.global_step:
                return
        super()._save_last_checkpoint(trainer, monitor_candidates)

    @staticmethod
    def _link_checkpoint(trainer: L.Trainer, filepath: str, linkpath: str) -> None:
        if trainer.is_global_zero and os.path.abspath(filepath) != os.path.abspath(linkpath):
            link(filepath, linkpath)
        trainer.strategy.barrier("atomic_checkpoint_link")


# ---- RNG states ---------------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """This process's RNG states as tensors and plain Python values (loadable with weights_only)."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": list(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class RngState(L.Callback):
    """Save every rank's RNG states in checkpoints; restore them right before the first resumed batch.

    Restoring late (not at load time) matters: between loading and the first batch, Lightning and
    the DataLoader draw random numbers (e.g. a loader's base seed) that the uninterrupted run drew
    before the checkpoint was taken.
    """

    def __init__(self) -> None:
        self._pending: list[dict[str, Any]] | None = None

    def state_dict(self) -> dict[str, Any]:
        local = rng_state()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            ranks: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(ranks, local)  # the checkpoint is written by rank 0 only
        else:
            ranks = [local]
        return {"ranks": ranks}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict.get("ranks")

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx
    ) -> None:
        if self._pending is None:
            return
        if len(self._pending) == trainer.world_size:
            set_rng_state(self._pending[trainer.global_rank])
        else:
            rank_zero_warn(
                f"RNG states were saved by {len(self._pending)} ranks, this run has {trainer.world_size}: "
                "random draws (dropout, drop path) will differ from an uninterrupted run"
            )
        self._pending = None


# ---- reading checkpoints ------------------------------------------------------------------------


def load_lightning_checkpoint(path: str | Path) -> tuple[InternVLForConditionalGeneration, str | None]:
    """Rebuild the model of an `InternVLChat` Lightning checkpoint; returns it (eval mode) and the
    tokenizer dir of its run."""
    from .module import InternVLChat
    from .parallelize import add_adapters

    ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    hparams = dict(ckpt.get("hyper_parameters") or {})
    module = InternVLChat(**{k: v for k, v in hparams.items() if not k.startswith("_")})
    model = module.build_vlm()
    add_adapters(model, module.training_setup)  # the saved keys include the adapters
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()}
    # Keys absent from the checkpoint keep the weights build_vlm() loaded from the run's components:
    # checkpoints saved with exclude_frozen_parameters hold only what trained.
    _, unexpected = model.load_state_dict(state, strict=False)
    if unexpected:
        raise ValueError(f"checkpoint {path} has keys the model lacks: {unexpected[:10]}")
    return model.eval(), tokenizer_dir(hparams.get("llm"), hparams.get("init_from"))


def load_checkpoint(
    source: InternVLForConditionalGeneration | str | Path,
    tokenizer: TokenizerSource | None = None,
    trust_remote_code: bool = False,
    **options: Any,
) -> tuple[InternVLForConditionalGeneration, PreTrainedTokenizerBase]:
    """Any checkpoint kind and its tokenizer: a Lightning `.ckpt` of `InternVLChat`, a full VLM dir
    (a stage output, HF-native or original InternVL; `options` as `model.load.load_vlm`) or a model
    object (then pass `tokenizer`). `tokenizer` defaults to the one that goes with the checkpoint;
    `trust_remote_code` lets a tokenizer defined by its own code run it."""
    if not isinstance(source, InternVLForConditionalGeneration):
        path = Path(source)
        if path.is_file() and path.suffix == ".ckpt":
            model, tok_dir = load_lightning_checkpoint(path)
            if tokenizer is None and tok_dir is None:
                raise ValueError(f"checkpoint {path} names no tokenizer dir: pass tokenizer=<LLM dir>")
            return model, load_tokenizer(tokenizer if tokenizer is not None else tok_dir, trust_remote_code)
    return load_vlm_and_tokenizer(source, tokenizer, trust_remote_code, **options)
