"""Lightning checkpoints: crash-safe saves (`AtomicModelCheckpoint`), exact resume (`RngState`), and
reading a `.ckpt` back into a model (`load_checkpoint`, which also takes every other checkpoint kind).

A checkpoint is written under a hidden staging name and renamed into place only once every rank
has finished writing, so a save killed midway never becomes a checkpoint, let alone "last".
Renaming works the same for a single file (DDP, one device) and a directory (DeepSpeed, FSDP2
distributed checkpoints). With `save_last="link"` (the stage recipes), `last.ckpt` is a symlink
swapped atomically to the newest complete checkpoint; no state is written twice. Each checkpoint
carries SHA-256 checksums (`integrity.py`) that resume verifies; `ckpt_path="last"` resumes the
newest intact checkpoint of the run, and SIGTERM saves one before the process exits (`preempt.py`).

Lightning does not checkpoint RNG states; `RngState` saves every rank's (torch, CUDA, numpy,
Python) and restores them just before the first resumed batch, so dropout / drop path draw the
same numbers as an uninterrupted run.
"""

from __future__ import annotations

import os
import random
import shutil
import warnings
from pathlib import Path
from typing import Any
from weakref import proxy

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from transformers import InternVLForConditionalGeneration, PreTrainedTokenizerBase

from .. import logs as console
from ..model.load import load_vlm_and_tokenizer
from ..tokenizer import TokenizerSource, load_tokenizer
from . import preempt, self_contained
from .integrity import SUFFIX, VERIFY_LEVELS, newest_intact, record, verify
from .preempt import Preempted, SigtermStop
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
    for p in sorted(dirpath.glob("*" + SUFFIX)):  # the checksums of a save that was never published
        if not p.with_name(p.name[: -len(SUFFIX)]).exists():
            p.unlink()
            notes.append(f"removed the checksums of an unpublished save ({p.name})")
    return notes


class AtomicModelCheckpoint(ModelCheckpoint):
    """`ModelCheckpoint` whose saves are all-or-nothing, checksummed, and resumable by name.

    Same arguments as `ModelCheckpoint`, plus:
        verify: how `--ckpt_path` checkpoints are checked before resuming: "sha256" (sizes and
            contents; every rank reads the checkpoint once more), "size" (cheap: catches truncated
            and missing files, for very large sharded checkpoints) or "none".
        save_on_sigterm: on SIGTERM, save the current state (if newer than the last checkpoint),
            then exit with status 143 (see `preempt.py`).
        sigterm_grace: under several ranks, seconds the ranks may take to stop together after a
            SIGTERM before each exits with status 143 without saving (a rank whose loader never
            returns); default `$INTERNVL_SIGTERM_GRACE`, else 60.

    Every save goes to `.staging-<name>`; after all ranks have written, the ranks hash it (a
    `<name>.sha256.json` sidecar, `integrity.py`), then global rank 0 renames it to `<name>` and,
    for `save_last="link"`, swaps the `last.ckpt` symlink. A crash at any point leaves `last.ckpt`
    on the previous complete checkpoint; leftovers are cleaned at the next start. Assumes
    checkpoints go to a filesystem every rank shares (as DeepSpeed's sharded saves do).

    `dirpath` defaults to `<trainer.default_root_dir>/checkpoints` (not the logger's new
    `version_N` dir of each run), so the same command run again finds the run's checkpoints:
    `ckpt_path="last"` resumes from the newest intact one, falls back (with a warning) when
    `last` is corrupt, truncated or dangling, starts from scratch with a warning when there is
    none yet, and refuses to start when checkpoints exist but none is intact.

    Two more guarantees for `save_last="link"`: the link moves to a new checkpoint before top-k
    rotation deletes the old one (never dangling), and a state newer than the newest checkpoint
    (the end of training) is saved as a checkpoint rather than linking "last" to an older one.
    """

    def __init__(
        self,
        *args: Any,
        verify: str = "sha256",
        save_on_sigterm: bool = True,
        sigterm_grace: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if verify not in VERIFY_LEVELS:
            raise ValueError(f"verify must be one of {VERIFY_LEVELS}, got {verify!r}")
        self.verify = verify
        self.save_on_sigterm = save_on_sigterm
        self.sigterm_grace = preempt.sigterm_grace(sigterm_grace)
        self._sigterm = SigtermStop()
        self._verified: set[str] = set()  # resolved by "last": already checked
        self._start_step = 0
        self._resume_from: str | None = None  # the checkpoint this run started from

    def _links_last(self) -> bool:
        return self.save_last == "link" and self.save_top_k != 0

    def run_dirpath(self, trainer: L.Trainer) -> Path:
        """Where this run's checkpoints are: `dirpath`, else `<default_root_dir>/checkpoints`."""
        return Path(self.dirpath) if self.dirpath else Path(trainer.default_root_dir) / "checkpoints"

    def _refuse_another_runs_checkpoints(self, trainer: L.Trainer) -> None:
        """A run that starts afresh where another run's checkpoints are would overwrite them (and
        its stage output) step by step: two experiments never share a directory silently."""
        if trainer.ckpt_path is not None or self.save_top_k == 0:
            return
        found = sorted(
            p.name
            for p in self.run_dirpath(trainer).glob("*.ckpt")
            if not p.name.startswith((STAGING, TRASH))
        )
        if found:
            raise RuntimeError(
                f"{self.run_dirpath(trainer)} holds checkpoints of an earlier run ({', '.join(found[:3])}"
                f"{', ...' if len(found) > 3 else ''}) and this run starts from step 0: pass --ckpt_path=last "
                "to continue that run, or another --trainer.default_root_dir for a new experiment"
            )

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.dirpath is None:
            self.dirpath = str(self.run_dirpath(trainer))
        super().setup(trainer, pl_module, stage)
        self._verify_before_loading(trainer)
        if trainer.is_global_zero and self.dirpath:
            for note in recover(self.dirpath):
                rank_zero_warn(f"checkpoint directory {self.dirpath}: {note}")
        trainer.strategy.barrier("atomic_checkpoint_setup")

    def _ModelCheckpoint__warn_if_dir_not_empty(self, dirpath: Any) -> None:  # Lightning's, in setup
        if not self._verified:  # resuming the run's own checkpoints: of course they are there
            super()._ModelCheckpoint__warn_if_dir_not_empty(dirpath)

    # ---- resume ------------------------------------------------------------------------------
    def _find_last_checkpoints(self, trainer: L.Trainer) -> set[str]:
        """What `ckpt_path="last"` resumes from: the newest intact checkpoint of this run (or none)."""
        dirpath = self.run_dirpath(trainer)
        choice = newest_intact(dirpath, self.verify, self.CHECKPOINT_NAME_LAST)
        if choice.chosen is None and not choice.candidates:
            _quiet_lightning_no_last_warning()
            console.warning(f"--ckpt_path=last: no checkpoint in {dirpath} yet; starting from scratch")
            return set()
        if choice.chosen is None:
            found = "; ".join(f"{_named(v.path)} is {v.problem}" for v in choice.rejected)
            raise RuntimeError(
                f"--ckpt_path=last: no intact checkpoint in {dirpath} (found {len(choice.candidates)}: "
                f"{found}). Not starting from step 0 over them: restore a checkpoint, or move the "
                "directory away to start afresh."
            )
        chosen = choice.chosen.path
        if choice.rejected:
            why = "; ".join(f"{_named(v.path)} is {v.problem}" for v in choice.rejected)
            console.warning(
                f"--ckpt_path=last: {why}; resuming from {chosen.name}, the newest intact checkpoint"
            )
        if choice.chosen.unverified:
            console.warning(f"{chosen} has no checksum file: resuming from it unverified")
        self._verified.add(os.path.abspath(chosen))
        return {os.path.normpath(str(chosen))}

    def check_resumable(self, trainer: L.Trainer, path: str | Path) -> None:
        """Refuse to resume from a checkpoint that is not what was written (an explicit --ckpt_path)."""
        if os.path.abspath(path) in self._verified or not Path(path).exists():
            return  # resolved from "last" (checked there), or not a local path: the loader says
        verdict = verify(path, self.verify)
        if not verdict.intact:
            raise RuntimeError(f"cannot resume from {path}: it is {verdict.problem}")
        if verdict.unverified and Path(path).parent == self.run_dirpath(trainer):
            console.warning(f"{path} has no checksum file: resuming from it unverified")

    def _verify_before_loading(self, trainer: L.Trainer) -> None:
        """Have the strategy check a checkpoint before it reads it (any strategy, any path)."""
        strategy, load = trainer.strategy, trainer.strategy.load_checkpoint
        if getattr(load, "verifies_checkpoints", False):
            return

        def verified_load(checkpoint_path: Any, *args: Any, **kwargs: Any) -> Any:
            self.check_resumable(trainer, checkpoint_path)
            return load(checkpoint_path, *args, **kwargs)

        verified_load.verifies_checkpoints = True  # type: ignore[attr-defined]
        strategy.load_checkpoint = verified_load

    # ---- saving ------------------------------------------------------------------------------
    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        staged = os.path.join(os.path.dirname(filepath), STAGING + os.path.basename(filepath))
        if trainer.is_global_zero:
            _remove(Path(staged))  # left by a crash of this very run (names repeat after a resume)
        trainer.strategy.barrier("atomic_checkpoint_stage")
        trainer.save_checkpoint(staged, self.save_weights_only)  # every rank writes, then a barrier
        record(Path(staged), Path(filepath))  # every rank hashes its share; rank 0 writes the sidecar
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

    def _remove_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        super()._remove_checkpoint(trainer, filepath)
        if trainer.is_global_zero:
            Path(filepath).with_name(Path(filepath).name + SUFFIX).unlink(missing_ok=True)

    @staticmethod
    def _link_checkpoint(trainer: L.Trainer, filepath: str, linkpath: str) -> None:
        if trainer.is_global_zero and os.path.abspath(filepath) != os.path.abspath(linkpath):
            link(filepath, linkpath)
        trainer.strategy.barrier("atomic_checkpoint_link")

    def save_now(self, trainer: L.Trainer) -> None:
        """Save the current state as a checkpoint (and move "last"), unless it is already saved."""
        if self._last_global_step_saved == trainer.global_step or trainer.global_step == self._start_step:
            return  # nothing new since the last save (or since the resumed checkpoint)
        candidates = self._monitor_candidates(trainer)
        self._save_topk_checkpoint(trainer, candidates)
        if not self._links_last():
            super()._save_last_checkpoint(trainer, candidates)

    # ---- SIGTERM -----------------------------------------------------------------------------
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._refuse_another_runs_checkpoints(trainer)
        self._start_step = trainer.global_step
        self._resume_from = trainer.ckpt_path
        if self.save_on_sigterm:
            self._sigterm.install(
                trainer.world_size,
                trainer.global_rank,
                self.sigterm_grace,
                self._resume_hint,
                forward=lambda signum: _forward_to_launched(trainer, signum),
            )

    def _resume_hint(self) -> str | None:
        """The checkpoint a rerun with `--ckpt_path=last` would resume from, as far as this run knows."""
        return self._last_checkpoint_saved or self._resume_from

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kw: Any
    ) -> None:
        super().on_train_batch_end(trainer, pl_module, *args, **kw)
        if not self.save_on_sigterm:
            return
        asked = trainer.received_sigterm or self._sigterm.requested
        if trainer.world_size > 1:  # every rank stops (and saves, a collective) at the same batch
            asked = trainer.strategy.reduce_boolean_decision(asked, all=False)
        if asked:
            raise Preempted(f"after step {trainer.global_step}")  # on_exception saves

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._sigterm.restore()
        if self.save_on_sigterm and isinstance(exception, (Preempted, SIGTERMException)):
            self._sigterm.saving()
            self.save_now(trainer)
            saved = (
                self._last_checkpoint_saved if self._last_global_step_saved == trainer.global_step else None
            )
            self._sigterm.saved(saved)
            where = f"; checkpoint {saved}" if saved else "; no newer state to save"
            console.info(f"{exception or 'stopped by SIGTERM'} (step {trainer.global_step}){where}")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        self._sigterm.finish()


def _forward_to_launched(trainer: L.Trainer, signum: int) -> None:
    """Pass a signal on to the processes Lightning launched itself (as its own handler does)."""
    launcher = trainer.strategy.launcher
    if launcher is not None:
        launcher.kill(signum)


def _named(path: Path) -> str:
    """A checkpoint's name, with a link's target: `last.ckpt (-> epoch=0-step=4.ckpt)`."""
    return f"{path.name} (-> {os.readlink(path)})" if path.is_symlink() else path.name


def _quiet_lightning_no_last_warning() -> None:
    """Lightning repeats "no last checkpoint available" with a hint that does not apply here."""
    warnings.filterwarnings("ignore", message=r'.*ckpt_path="last"\) is set, but there is no last checkpoint')


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


def load_lightning_checkpoint(
    path: str | Path, trust_remote_code: bool = False
) -> tuple[InternVLForConditionalGeneration, TokenizerSource | None]:
    """Rebuild the model of an `InternVLChat` Lightning checkpoint; returns it (eval mode) and its
    tokenizer: the one stored in the checkpoint, else the tokenizer dir of its run.

    The model is built from the stored config when the checkpoint holds every weight (no component
    dir is read); one saved without its frozen weights is completed from the run's components."""
    from .module import InternVLChat
    from .parallelize import add_adapters

    ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    hparams = dict(ckpt.get("hyper_parameters") or {})
    module = InternVLChat(**{k: v for k, v in hparams.items() if not k.startswith("_")})
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()}
    stored = ckpt.get(self_contained.KEY) or {}
    model = None
    if stored.get("config"):
        model = self_contained.model_from_config(stored["config"])
        add_adapters(model, module.training_setup)  # the saved keys include the adapters
        if set(model.state_dict()) - set(state):  # frozen weights left out: the components have them
            model = None
    if model is None:
        try:
            model = module.build_vlm()
        except (FileNotFoundError, OSError) as e:
            sources = {k: v for k, v in (stored.get("components") or {}).items() if v}
            raise FileNotFoundError(
                f"checkpoint {path} holds only the weights that trained (exclude_frozen_parameters); the "
                f"frozen ones come from its components {sources or hparams}, which cannot be read: {e}"
            ) from None
        add_adapters(model, module.training_setup)
    _, unexpected = model.load_state_dict(state, strict=False)
    if unexpected:
        raise ValueError(f"checkpoint {path} has keys the model lacks: {unexpected[:10]}")
    if stored.get("tokenizer"):
        return model.eval(), self_contained.tokenizer_from_files(stored["tokenizer"], trust_remote_code)
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
            model, tok_dir = load_lightning_checkpoint(path, trust_remote_code)
            if tokenizer is None and tok_dir is None:
                raise ValueError(f"checkpoint {path} names no tokenizer dir: pass tokenizer=<LLM dir>")
            return model, load_tokenizer(tokenizer if tokenizer is not None else tok_dir, trust_remote_code)
    return load_vlm_and_tokenizer(source, tokenizer, trust_remote_code, **options)
