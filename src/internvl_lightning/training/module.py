"""`InternVLChat`: the LightningModule that trains a composite InternVL model on packed batches."""

from __future__ import annotations

import math
import time
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
from lightning.pytorch.strategies import DeepSpeedStrategy
from lightning.pytorch.utilities import rank_zero_warn

from .. import logs as console
from ..model.build import build_model
from ..model.forward import vlm_hidden_states
from . import self_contained
from .data_report import DataReport
from .dataset_metrics import per_dataset
from .fault import NonFiniteMonitor
from .flops import FlopsModel, peak_flops, trained_parts
from .freeze import FreezeSchedule, parameter_table
from .global_batch import apply_global_batch
from .loss import LossKernel, per_sample_losses, weighted_loss, weighted_loss_with_token_ce
from .loss_liger import check_liger
from .optim import cosine_with_warmup, param_groups, warmup_steps_from
from .parallelize import TrainingSetup, parallelize
from .progress import StepProgressBar
from .run_length import run_length
from .strategy import ParamScope, ZeroStrategy, deepspeed_grad_norm


class InternVLChat(L.LightningModule):
    """Train InternVL from a vision encoder dir + an LLM dir (stage 1) or a previous stage's output.

    Args:
        vision: vision encoder directory (HF-native or original InternViT layout).
        llm: language model directory (transformers-native causal LM, or InternLM2 layout).
        mlp: optional projector weights; random otherwise.
        init_from: a full VLM to start from (replaces vision/llm/mlp): a previous stage's output,
            an HF-native or original-layout InternVL directory (a released checkpoint), or a hub
            id such as ``OpenGVLab/InternVL2_5-1B`` (downloaded, or from the local cache offline).
        trust_remote_code: let a tokenizer defined by its own code (InternLM2's
            ``tokenization_internlm2.py``) run it; without it such a tokenizer is refused.
        preset: a named shape (e.g. "8b") to build with random weights, for planning and tests.
        select_layer, downsample_ratio, ps_version, drop_path_rate: model options; None keeps what an
            `init_from` checkpoint stored (fresh builds: -1, 0.5, "v2", 0.0).
        attn_implementation: "sdpa" (CPU and GPU), "eager", "flash_attention_2" or "flex_attention"
            (the LLM's; the ViT keeps sdpa with flex).
        lr, weight_decay, betas, eps: AdamW. Biases and norms get no weight decay.
        warmup: warmup steps (>= 1) or ratio of the total steps (< 1).
        min_lr_ratio: cosine floor as a fraction of lr.
        loss_reduction_all_gather: average the loss denominator over data-parallel ranks, so the
            gradient is the global weighted mean (reference `loss_reduction_all_gather`).
        loss_chunk_size: positions per chunk of the logits-free loss.
        loss_kernel: "chunked" (``loss.py``, every device) or "liger" (Liger-Kernel's Triton kernels,
            CUDA only, ``pip install 'internvl-lightning[liger]'``): the same loss and gradients,
            both computed in the forward pass; ``benchmarks/gpu_suite.py`` measures which is faster.
        gradient_checkpointing_vit, gradient_checkpointing_llm: recompute activations in backward.
        compile_blocks: ``torch.compile`` each ViT and LLM block (GPU speed; not with ZeRO-3).
        vit_lora_rank, llm_lora_rank: LoRA adapters of this rank on the ViT / the LLM (0 = none;
            the reference's use_backbone_lora / use_llm_lora): the adapted part trains its adapters
            only, and exports merge them (``model/lora.py``). Not with ZeRO-3.
        lora_alpha: adapter scale numerator (None = 2 x rank, the reference); lora_dropout: on the
            adapters' input.
        peak_flops: accelerator peak FLOP/s for MFU; detected for known GPUs when None.
        seed: initialisation seed of the new projector.
        max_consecutive_nonfinite: the non-finite guard, always on: an optimizer step whose loss,
            gradients, loss weights or labels are not finite is skipped (and printed, counted in
            ``train/skipped_steps``); this many in a row stop the run (``fault.py``).
        packs_per_step: the global batch in packs (the recipes: 512; stage 1.5: 1024); the gradient
            accumulation follows from the number of processes (``global_batch.py``), so a recipe
            keeps its batch on 512, 8 or 1 GPU. None: the trainer's ``accumulate_grad_batches``.

    The run's length (the schedule's total) is ``max_steps``, or what the data gives when the data
    module passes over it (``data.epochs``), whichever ends first (``run_length.py``). Unless the
    trainer has them, the module adds the step progress bar and the data report as callbacks.
    """

    def __init__(
        self,
        vision: str | None = None,
        llm: str | None = None,
        mlp: str | None = None,
        init_from: str | None = None,
        preset: str | None = None,
        trust_remote_code: bool = False,
        select_layer: int | None = None,
        downsample_ratio: float | None = None,
        ps_version: str | None = None,
        drop_path_rate: float | None = None,
        attn_implementation: str = "sdpa",
        lr: float = 2e-4,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        warmup: float = 0.0,
        min_lr_ratio: float = 0.0,
        loss_reduction_all_gather: bool = False,
        loss_chunk_size: int = 4096,
        loss_kernel: LossKernel = "chunked",
        gradient_checkpointing_vit: bool = False,
        gradient_checkpointing_llm: bool = False,
        compile_blocks: bool = False,
        vit_lora_rank: int = 0,
        llm_lora_rank: int = 0,
        lora_alpha: float | None = None,
        lora_dropout: float = 0.05,
        peak_flops: float | None = None,
        seed: int = 0,
        max_consecutive_nonfinite: int = 10,
        packs_per_step: int | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if not (init_from or preset or (vision and llm)):
            raise ValueError(
                "InternVLChat needs its components: pass --model.vision=DIR and --model.llm=DIR "
                "(stage 1), or --model.init_from=DIR (a previous stage's output, or any InternVL checkpoint)"
            )
        self.model = None
        self.lm_head_scope = ParamScope()  # replaced in configure_model (see prepare_for_strategy)
        self._flops: FlopsModel | None = None
        self._trained: dict = {}  # step_flops' keyword arguments: which parts train
        self._t_last: float | None = None
        self.nonfinite = NonFiniteMonitor(max_consecutive_nonfinite)

    def setup(self, stage: str) -> None:
        if stage == "fit":
            apply_global_batch(self.trainer, self.hparams.packs_per_step)  # before the strategy reads it
            if self.hparams.loss_kernel == "liger":
                check_liger(self.trainer.strategy.root_device)

    def configure_callbacks(self) -> list[L.Callback]:
        """The step progress bar (in place of Lightning's, when bars are on) and the data report."""
        callbacks: list[L.Callback] = []
        bar = self.trainer.progress_bar_callback
        if type(bar) in (TQDMProgressBar, RichProgressBar):  # Lightning's default, not one the user chose
            self.trainer.callbacks.remove(bar)  # Lightning replaces only callbacks of a parent type
            callbacks.append(StepProgressBar())
        if not any(isinstance(cb, DataReport) for cb in self.trainer.callbacks):
            callbacks.append(DataReport())
        return callbacks

    # ---- model ----------------------------------------------------------------------------
    @property
    def training_setup(self) -> TrainingSetup:
        """What ``parallelize`` applies to the built model (adapters, checkpointing, compilation)."""
        h = self.hparams
        return TrainingSetup(
            vit_lora_rank=h.vit_lora_rank,
            llm_lora_rank=h.llm_lora_rank,
            lora_alpha=h.lora_alpha,
            lora_dropout=h.lora_dropout,
            lora_seed=h.seed,
            checkpoint_vision=h.gradient_checkpointing_vit,
            checkpoint_llm=h.gradient_checkpointing_llm,
            compile_blocks=h.compile_blocks,
        )

    def build_vlm(self):
        """The VLM these hyperparameters describe, as built before training (no adapters yet)."""
        h = self.hparams
        return build_model(
            vision=h.vision,
            llm=h.llm,
            mlp=h.mlp,
            preset=h.preset,
            init_from=h.init_from,
            seed=h.seed,
            drop_path_rate=h.drop_path_rate,
            select_layer=h.select_layer,
            downsample_ratio=h.downsample_ratio,
            ps_version=h.ps_version,
            attn_implementation=h.attn_implementation,
            trust_remote_code=h.trust_remote_code,
        )

    def configure_model(self) -> None:
        """Build the VLM (lazily, so strategies like ZeRO-3 can wrap construction), then set it up
        for training in one place (``parallelize``: adapters, freezing, checkpointing, compile, sharding)."""
        if self.model is not None:
            return
        self.model = self.build_vlm()
        strategy = self.trainer.strategy if self._trainer is not None else None
        self.lm_head_scope = parallelize(
            self.model, self.training_setup, strategy, self._settle_trainable, self
        )
        # Loaders return eval mode and adapters start in train mode; Lightning keeps a module's
        # mode, and drop path needs train().
        self.model.train(self.training)

    def _settle_trainable(self, model) -> None:
        """Step 2 of ``parallelize``: the stage's freeze schedule, then what the MFU log needs to know
        about the parts that train (requires_grad is settled here for the whole fit)."""
        for cb in self.trainer.callbacks if self._trainer is not None else []:
            if isinstance(cb, FreezeSchedule):
                cb.apply(model)
        self._flops = FlopsModel.from_model(model)
        self._trained = trained_parts(model)

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        """Last hidden states (B, L, D) of a packed batch."""
        return vlm_hidden_states(
            self.model,
            batch["input_ids"],
            batch.get("position_ids"),
            batch.get("pixel_values"),
            batch.get("image_flags"),
        )

    # ---- loss ----------------------------------------------------------------------------
    def _denominator(self, batch: dict[str, Any], local_wsum: torch.Tensor) -> tuple[torch.Tensor, float]:
        """Loss denominator and the factor that undoes Lightning's division by accumulation steps.

        With `stats["step_weight_sum"]` (weights of every micro-batch of this optimizer step,
        provided by the data module), micro-batch losses add up exactly to the loss of the
        combined batch. Without it, each micro-batch is normalised on its own (reference).
        """
        stats = batch.get("stats") or {}
        accumulate = self.trainer.accumulate_grad_batches if self._trainer is not None else 1
        if "step_weight_sum" in stats:
            denom, scale = (
                torch.tensor(float(stats["step_weight_sum"]), device=local_wsum.device),
                float(accumulate),
            )
        else:
            denom, scale = local_wsum.detach().clone(), 1.0
        if self.hparams.loss_reduction_all_gather and dist.is_available() and dist.is_initialized():
            dist.all_reduce(denom, op=dist.ReduceOp.SUM)
            denom = denom / dist.get_world_size()
        return denom, scale

    def _checked_targets(
        self, labels: torch.Tensor, weights: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Labels and weights safe to compute a loss with, and whether the batch had bad ones.

        Non-finite weights and labels that are no token id (NaN, out of the vocabulary) are
        noted as a non-finite step; they are masked so the loss kernel never sees them. No host sync.
        """
        vocab = self.model.lm_head.out_features
        if labels.is_floating_point():
            finite = torch.isfinite(labels)
            labels = torch.where(finite, labels, -100).long()
            bad_labels = ~finite.all()
        else:
            bad_labels = torch.zeros((), dtype=torch.bool, device=labels.device)
        valid = (labels == -100) | ((labels >= 0) & (labels < vocab))
        bad_labels = bad_labels | ~valid.all()
        self.nonfinite.note("labels", bad_labels)
        bad = bad_labels
        labels = torch.where(valid, labels, -100)
        if weights is not None:
            finite = torch.isfinite(weights)
            bad_weights = ~finite.all()
            self.nonfinite.note("loss_weight", bad_weights)
            bad = bad | bad_weights
            weights = torch.where(finite, weights, 0.0)
        return labels, weights, bad

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        hidden = self(batch)
        labels, weights, bad = self._checked_targets(batch["labels"], batch.get("loss_weight"))
        local = (
            (weights[:, 1:] * (labels[:, 1:] != -100)).sum()
            if weights is not None
            else (labels[:, 1:] != -100).sum()
        )
        denom, scale = self._denominator(batch, local.float())
        loss, wsum, token_ce, positions = self.lm_head_scope(
            weighted_loss_with_token_ce, hidden, self.model.lm_head, labels, weights, denom,
            self.hparams.loss_chunk_size, self.hparams.loss_kernel,
        )  # fmt: skip
        # A bad batch gives NaN gradients everywhere, so that every strategy (DeepSpeed's overflow
        # check included) skips the step; otherwise this adds exactly zero.
        loss = loss + torch.where(bad, float("nan"), 0.0) * hidden.float().sum()
        # What we show is this micro-batch's own weighted mean, comparable across steps.
        shown = loss.detach() * denom / wsum.clamp_min(1e-12)
        self.log("train/loss", shown, prog_bar=True, on_step=True, batch_size=1)
        self._log_datasets(token_ce, positions, batch)
        return loss * scale

    def _log_datasets(self, token_ce: torch.Tensor, positions: torch.Tensor, batch: dict[str, Any]) -> None:
        """``train/loss/<dataset>`` and ``train/tokens/<dataset>`` when the batch mixes datasets'
        samples (only on steps Lightning logs; ``dataset_metrics.py``)."""
        names = batch.get("datasets")
        if not names or not self.trainer._logger_connector.should_update_logs:
            return
        for name, (mean, n) in per_dataset(token_ce, positions, batch["sample_index"], names).items():
            self.log(f"train/loss/{name}", mean, on_step=True, batch_size=1)
            self.log(f"train/tokens/{name}", float(n), on_step=True, batch_size=1)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        hidden = self(batch)
        loss, _ = self.lm_head_scope(
            weighted_loss, hidden, self.model.lm_head, batch["labels"], batch.get("loss_weight"), None
        )
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=1)
        return loss

    def sample_losses(self, batch: dict[str, Any]) -> dict[int, torch.Tensor]:
        """Token-mean loss of every packed sample in a batch (evaluation, tests)."""
        return self.lm_head_scope(
            per_sample_losses, self(batch), self.model.lm_head, batch["labels"], batch["sample_index"]
        )

    # ---- optimisation --------------------------------------------------------------------
    def configure_optimizers(self):
        h = self.hparams
        groups = param_groups(self.model, h.weight_decay)
        if not groups:
            raise ValueError("no trainable parameters: check the FreezeSchedule of this stage")
        opt = torch.optim.AdamW(groups, lr=h.lr, betas=tuple(h.betas), eps=h.eps)
        length = run_length(self.trainer)
        total = length.steps
        if total is None:
            estimated = self.trainer.estimated_stepping_batches  # inf for a stream of unknown length
            if not math.isfinite(estimated):
                raise ValueError(
                    "the learning-rate schedule needs the run's length: set --trainer.max_steps, or "
                    "--data.epochs=N with --trainer.max_epochs=N (the length is then read from the shard index)"
                )
            total = int(estimated)
        elif length.from_data:
            console.info(f"learning-rate schedule over {length.describe()}")
        warm = warmup_steps_from(h.warmup, total)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: cosine_with_warmup(step, warm, total, h.min_lr_ratio)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_before_backward(self, loss: torch.Tensor) -> None:
        self.nonfinite.before_backward(loss)

    def on_before_optimizer_step(self, optimizer) -> None:
        self.nonfinite.before_optimizer_step(self.trainer, optimizer)  # may drop the gradients
        if isinstance(self.trainer.strategy, DeepSpeedStrategy):
            return  # ZeRO keeps gradients out of param.grad: logged after the step (on_train_batch_end)
        norms = [
            p.grad.detach().norm(2) for g in optimizer.param_groups for p in g["params"] if p.grad is not None
        ]
        if norms:
            self.log(
                "train/grad_norm", torch.linalg.vector_norm(torch.stack(norms)), on_step=True, batch_size=1
            )

    # ---- metrics -------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        for name, trainable, frozen in parameter_table(self.model):
            self.logger_log_once(f"params/{name}_trainable", trainable)
            self.logger_log_once(f"params/{name}_frozen", frozen)
        strategy = self.trainer.strategy
        if (
            self.trainer.accumulate_grad_batches > 1
            and isinstance(strategy, DeepSpeedStrategy)
            and not isinstance(strategy, ZeroStrategy)
        ):
            rank_zero_warn(
                f"{type(strategy).__name__} with accumulate_grad_batches="
                f"{self.trainer.accumulate_grad_batches}: the DeepSpeed engine divides the loss by the "
                "accumulation steps again after Lightning has, so gradients come out that many times "
                "too small (clipping and the logged grad norm see it). Use "
                "internvl_lightning.training.strategy.ZeroStrategy, which divides once."
            )

    def logger_log_once(self, key: str, value: float) -> None:
        if self.logger is not None:
            self.logger.log_metrics({key: value}, step=0)

    def on_train_batch_start(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.nonfinite.batch_start(self.trainer)

    def on_train_end(self) -> None:
        line = self.nonfinite.summary(self.trainer.global_step)
        if line:
            console.info(line)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["nonfinite"] = self.nonfinite.state_dict()
        checkpoint[self_contained.KEY] = self._contents()

    def _contents(self) -> dict[str, Any]:
        """Config, tokenizer files, data settings and component identity (``self_contained.py``);
        made once per run (the tokenizer files do not change while it trains)."""
        if getattr(self, "_contents_cache", None) is None:
            dm = getattr(self.trainer, "datamodule", None)
            record = dm.training_record() if hasattr(dm, "training_record") else {}
            tokenizer = getattr(dm, "tokenizer_object", None)
            self._contents_cache = self_contained.contents(self.model, self.hparams, tokenizer, record)
        return self._contents_cache

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("nonfinite")
        if state is None:  # written when the count lived in the NonFiniteGuard callback
            state = next(
                (v for k, v in (checkpoint.get("callbacks") or {}).items() if "NonFiniteGuard" in k), {}
            )
        self.nonfinite.load_state_dict(state)

    def on_train_batch_end(self, outputs, batch: dict[str, Any], batch_idx: int) -> None:
        self.nonfinite.batch_end(self.trainer, self)  # counts a skipped step; may stop the run
        now = time.perf_counter()
        stats = batch.get("stats") or {}
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True, batch_size=1)
        ds_norm = deepspeed_grad_norm(self.trainer.strategy)
        if ds_norm is not None:
            self.log("train/grad_norm", ds_norm, on_step=True, batch_size=1)
        for key in ("token_fill", "tile_fill"):
            if key in stats:
                self.log(f"train/{key}", float(stats[key]), on_step=True, batch_size=1)
        if self._t_last is not None and stats:
            dt = max(now - self._t_last, 1e-9)
            self.log(
                "train/tokens_per_s", stats["real_tokens"] / dt, prog_bar=True, on_step=True, batch_size=1
            )
            self.log("train/samples_per_s", stats["samples"] / dt, on_step=True, batch_size=1)
            self.log("train/tiles_per_s", stats["tiles"] / dt, on_step=True, batch_size=1)
            peak = self.hparams.peak_flops or (
                peak_flops(torch.cuda.get_device_name()) if torch.cuda.is_available() else None
            )
            if peak and self._flops is not None and "sample_index" in batch:
                sid = batch["sample_index"]
                lengths = torch.bincount(sid[sid >= 0].flatten()).tolist()
                flops = self._flops.step_flops(stats["real_tokens"], lengths, stats["tiles"], **self._trained)
                self.log("train/mfu", flops / dt / peak, prog_bar=True, on_step=True, batch_size=1)
        self._t_last = now
