"""Benchmark scores during training: ``EvaluateBenchmark`` runs ``evaluation.evaluate`` on a held-out
file every N optimizer steps and/or when the stage ends, and logs the scores to the trainer's loggers.

Every rank answers its share of the questions (``evaluation.runner.predict`` gathers them), so it
runs under DDP and DeepSpeed ZeRO-1/2, where every rank holds the whole model. Strategies that
shard the parameters (ZeRO-3, FSDP) would need every rank to generate in lockstep; the callback
refuses them at setup. The model is put in eval mode for generation and every module's mode is
restored afterwards (frozen parts stay as the freeze schedule left them).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_info

from ..evaluation.generate import EVAL_MAX_NUM, EvalSettings, read_settings
from ..evaluation.result import EvalResult
from ..evaluation.runner import evaluate, get_benchmark
from ..tokenizer import TokenizerSource, load_tokenizer


class EvaluateBenchmark(L.Callback):
    """Score the model being trained on a benchmark file; logs ``eval/<name>/score`` and each extra
    metric (e.g. ``eval/mmbench_dev_en/per_copy_accuracy``) at the trainer's global step.

    Args:
        benchmark: mmbench, mmmu, mathvista or vqa.
        data: the held-out benchmark file, directory or glob.
        every_n_steps: evaluate after every N optimizer steps (None: never during the stage).
        at_stage_end: evaluate when training ends (unless the last step was just evaluated).
        name: the metric group (default: the data file's stem, e.g. ``mmbench_dev_en``).
        tokenizer: tokenizer dir or object (default: the datamodule's ``tokenizer``).
        limit: the first N questions only (circular copies kept together).
        batch_size, max_new_tokens, circular, vqa_metric, image_root: as ``evaluate``.
        out_dir: where to write each evaluation's JSON/Markdown report (``<name>_step<N>``).
    """

    def __init__(
        self,
        benchmark: str,
        data: str | Path,
        every_n_steps: int | None = None,
        at_stage_end: bool = True,
        name: str | None = None,
        tokenizer: TokenizerSource | None = None,
        limit: int | None = None,
        batch_size: int = 8,
        max_new_tokens: int | None = None,
        circular: bool = True,
        vqa_metric: str = "vqa",
        image_root: str | Path | None = None,
        out_dir: str | Path | None = None,
    ) -> None:
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1 or None, got {every_n_steps}")
        if every_n_steps is None and not at_stage_end:
            raise ValueError("EvaluateBenchmark never runs: give every_n_steps or at_stage_end=True")
        get_benchmark(benchmark, **({"metric": vqa_metric} if benchmark == "vqa" else {}))  # fail now
        self.benchmark, self.data = benchmark, str(data)
        self.every_n_steps, self.at_stage_end = every_n_steps, at_stage_end
        self.name = name or Path(self.data).stem
        self.tokenizer_source = tokenizer
        self.options: dict[str, Any] = dict(
            limit=limit,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            circular=circular,
            vqa_metric=vqa_metric,
            image_root=image_root,
            baseline="none",
        )
        self.out_dir = out_dir
        self.history: list[tuple[int, EvalResult]] = []  # (global step, result) of each run
        self._tokenizer: Any = None
        self._last_step: int | None = None

    # ---- Lightning hooks ------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        strategy = trainer.strategy
        shards = getattr(strategy, "zero_stage_3", False) or type(strategy).__name__ in (
            "FSDPStrategy",
            "ModelParallelStrategy",
        )
        if shards:
            raise ValueError(
                f"EvaluateBenchmark cannot generate under {type(strategy).__name__} with sharded "
                "parameters (ZeRO-3 / FSDP): evaluate the stage output with the evaluate command"
            )

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if self.every_n_steps and step > 0 and step % self.every_n_steps == 0 and step != self._last_step:
            self.run(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.at_stage_end and trainer.global_step != self._last_step:
            self.run(trainer, pl_module)

    # ---- evaluation -----------------------------------------------------------------------
    def run(self, trainer: L.Trainer, pl_module: L.LightningModule) -> EvalResult:
        """Evaluate the current model now, log the scores and restore every module's mode."""
        step = trainer.global_step
        self._last_step = step
        model = pl_module.model
        modes = {m: m.training for m in model.modules()}
        model.eval()
        try:
            result = evaluate(
                model,
                self.benchmark,
                self.data,
                self._tokenizer_for(trainer),
                settings=self._settings(trainer, model),
                **self.options,
            )
        finally:
            for module, mode in modes.items():
                module.train(mode)
        self.history.append((step, result))
        metrics = {f"eval/{self.name}/score": result.score}
        metrics |= {f"eval/{self.name}/{k}": v for k, v in result.metrics.items()}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
        rank_zero_info(f"step {step}: {self.name} {result.score:.2f} ({result.protocol.get('score', '')})")
        if self.out_dir is not None and trainer.is_global_zero:
            result.save(self.out_dir, f"{self.name}_step{step}")
        return result

    def _tokenizer_for(self, trainer: L.Trainer) -> Any:
        if self._tokenizer is None:
            source = self.tokenizer_source
            if source is None:
                source = getattr(trainer.datamodule, "tokenizer", None) if trainer.datamodule else None
            if source is None:
                raise ValueError(
                    "EvaluateBenchmark needs a tokenizer: pass tokenizer=<LLM dir> (no datamodule "
                    "tokenizer to take)"
                )
            self._tokenizer = load_tokenizer(source)
        return self._tokenizer

    @staticmethod
    def _settings(trainer: L.Trainer, model) -> EvalSettings:
        """The evaluation settings, with the template and tiling the datamodule trains with."""
        settings = read_settings(None, model)
        encode = getattr(trainer.datamodule, "encode_config", None) if trainer.datamodule else None
        if encode is None:
            return settings
        return dataclasses.replace(
            settings,
            template=encode.template,
            normalization=encode.normalization,
            min_num=encode.min_dynamic_patch,
            max_num=min(EVAL_MAX_NUM, encode.max_dynamic_patch),
            use_thumbnail=encode.use_thumbnail,
        )
