"""Distributed strategies for a stage: DeepSpeed ZeRO-1/2/3 (the reference), DDP, or FSDP2.

The reference trains with DeepSpeed JSON files (`zero_stage{1,2,3}_config*.json`); the values
below are theirs: AdamW from the trainer, bf16, gradient clipping 1.0, overlap_comm,
contiguous gradients, and per-stage bucket sizes. Larger models only lower the ZeRO-3
parameter-persistence threshold (so fewer small tensors stay replicated).

The model code knows nothing of parallelism. `parallelize.py` applies a strategy's wrapping to
the built model (FSDP2 sharding; the `ParamScope` in which ZeRO-3 gathers the output layer for the
logits-free loss). `consolidated` gives the whole model on rank 0 for export, whatever the strategy.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies import DeepSpeedStrategy, ModelParallelStrategy

from ..model.lora import adapter_scalings, fold_adapters
from .safe_load import make_loads_safe

# ZeRO-3 persistence threshold per model size in the reference configs (34b/70b: 1e5, 100b: 1e4).
PERSISTENCE_THRESHOLD = {"default": int(1e7), "34b": int(1e5), "70b": int(1e5), "100b": int(1e4)}


def zero_config(
    stage: int, size: str = "default", bucket_size: int | None = None, offload: bool = False
) -> dict[str, Any]:
    """The `zero_optimization` block of a DeepSpeed config, as in the reference JSONs.

    Args:
        stage: 1, 2 or 3.
        size: ZeRO-3 variant: "default", "34b", "70b" or "100b" (persistence threshold).
        bucket_size: override the bucket sizes (reference: 1e9 for ZeRO-1/3, 1e8 for ZeRO-2 and "100b_1e8").
        offload: ZeRO-3 CPU offload of parameters and optimizer states (the reference's 1e7_offload variant).
    """
    if stage not in (1, 2, 3):
        raise ValueError(f"ZeRO stage must be 1, 2 or 3, got {stage}")
    if size not in PERSISTENCE_THRESHOLD:
        raise ValueError(
            f"unknown ZeRO-3 size variant {size!r}; choose one of {sorted(PERSISTENCE_THRESHOLD)}"
        )
    bucket = int(bucket_size or (1e8 if stage == 2 else 1e9))
    cfg: dict[str, Any] = {"stage": stage, "overlap_comm": True, "contiguous_gradients": True}
    if stage in (1, 2):
        cfg.update(
            allgather_partitions=True,
            allgather_bucket_size=bucket,
            reduce_scatter=True,
            reduce_bucket_size=bucket,
        )
    else:
        cfg.update(
            sub_group_size=bucket,
            reduce_bucket_size=bucket,
            stage3_prefetch_bucket_size=bucket,
            stage3_param_persistence_threshold=PERSISTENCE_THRESHOLD[size],
            stage3_max_live_parameters=bucket,
            stage3_max_reuse_distance=bucket,
            stage3_gather_16bit_weights_on_model_save=True,
        )
        if offload:
            cfg["offload_param"] = {"device": "cpu", "pin_memory": True}
            cfg["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
            cfg["overlap_comm"] = False
    return cfg


def deepspeed_config(
    stage: int,
    size: str = "default",
    bucket_size: int | None = None,
    offload: bool = False,
    gradient_clipping: float = 1.0,
) -> dict[str, Any]:
    """A DeepSpeed config for Lightning: clipping and the ZeRO block.

    Precision is left to the Trainer (`precision: bf16-mixed` writes the bf16 block), and batch
    sizes / accumulation to Lightning, so one recipe runs in fp32 in CPU tests too.
    """
    return {
        "zero_optimization": zero_config(stage, size, bucket_size, offload),
        "gradient_clipping": gradient_clipping,
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2000,
        "wall_clock_breakdown": False,
    }


class ZeroStrategy(DeepSpeedStrategy):
    """Lightning's DeepSpeedStrategy configured like the reference recipe of a stage.

    Use in YAML as `trainer.strategy: {class_path: internvl_lightning.training.strategy.ZeroStrategy,
    init_args: {stage: 1}}`. `exclude_frozen_parameters` keeps frozen weights out of checkpoints
    (stage 1 then saves only the projector and its optimizer state). With gradient accumulation
    the loss is divided by the accumulation steps once (by Lightning), as under DDP; Lightning's
    plain `DeepSpeedStrategy` lets the engine divide it a second time.

    ZeRO-3: the model is built under `deepspeed.zero.Init`, so each rank only ever holds its
    partition; rank 0 alone reads the component files and its weights are written into everyone's
    partitions one parameter at a time (`model/zero3.py`); a stage output (`init_from`) loads
    through transformers' own ZeRO-3 path. `sharded_init=False` builds the whole model on every
    rank first instead (host memory: one full copy per rank).

    Resuming reads DeepSpeed's checkpoint files weights-only (`safe_load.py`): a tampered file
    cannot run code, it is refused with the name of what it references.
    """

    def __init__(
        self,
        stage: int = 1,
        size: str = "default",
        bucket_size: int | None = None,
        offload: bool = False,
        gradient_clipping: float = 1.0,
        exclude_frozen_parameters: bool = False,
        sharded_init: bool = True,
        **kwargs: Any,
    ) -> None:
        config = deepspeed_config(stage, size, bucket_size, offload, gradient_clipping)
        super().__init__(config=config, exclude_frozen_parameters=exclude_frozen_parameters, **kwargs)
        self.sharded_init = sharded_init

    def load_checkpoint(self, checkpoint_path, weights_only=None):
        if getattr(self.deepspeed_engine, "checkpoint_engine", None) is not None:
            make_loads_safe(self.deepspeed_engine)  # before DeepSpeed reads any file
        # A checkpoint saved with exclude_frozen_parameters lacks the frozen weights by design (they
        # come from the components again in configure_model): load the rest non-strictly.
        module = self.lightning_module
        strict = module.strict_loading
        if self.exclude_frozen_parameters:
            module.strict_loading = False
        try:
            return super().load_checkpoint(checkpoint_path, weights_only)
        finally:
            module.strict_loading = strict

    def backward(self, closure_loss, optimizer, *args: Any, **kwargs: Any):
        # Lightning already divides each micro-batch loss by accumulate_grad_batches; the engine's
        # backward would divide it again (scale_wrt_gas), halving the gradient at accumulation 2
        # against DDP and the exact accumulation of InternVLChat (which expects one division).
        kwargs.setdefault("scale_wrt_gas", False)
        return super().backward(closure_loss, optimizer, *args, **kwargs)

    @contextlib.contextmanager
    def model_sharded_context(self):
        if not (self.zero_stage_3 and self.sharded_init):
            yield  # built whole; deepspeed.initialize partitions it (ZeRO-3) right after
            return
        from transformers.integrations import HfDeepSpeedConfig
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        self._init_config_if_needed()
        # While the model is built, from_pretrained (init_from) sees ZeRO-3 and loads into
        # partitioned parameters too. Only then: afterwards a from_pretrained on one rank (an
        # evaluation, the next stage of a pipeline) must stay an ordinary local load.
        hf_config = HfDeepSpeedConfig(self.config)  # transformers keeps a weak reference
        try:
            with super().model_sharded_context():
                yield
        finally:
            unset_hf_deepspeed_config()
            del hf_config


class Fsdp2Strategy(ModelParallelStrategy):
    """FSDP2 (`fully_shard`) over all ranks, no tensor parallelism: an alternative to ZeRO-3.

    Lightning's `ModelParallelStrategy` defaults to data parallel across nodes and tensor parallel
    within a node; InternVL has no tensor-parallel plan, so every rank is one data-parallel shard.
    `parallelize_model` shards the model in `configure_model` (see `shard_fsdp2`). Checkpoints are
    distributed (one file per rank) unless `save_distributed_checkpoint=False`.

    Args:
        param_dtype, reduce_dtype: FSDP2 mixed precision, e.g. "bfloat16" / "float32" (use with
            `precision: 32-true`: FSDP2 casts, not autocast); None keeps the parameters' dtype.
        reshard_after_forward: free each layer's gathered weights after its forward (less memory,
            one more all-gather in backward).
    """

    def __init__(
        self,
        save_distributed_checkpoint: bool = True,
        param_dtype: str | None = None,
        reduce_dtype: str | None = None,
        reshard_after_forward: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            data_parallel_size="auto",
            tensor_parallel_size=1,
            save_distributed_checkpoint=save_distributed_checkpoint,
            **kwargs,
        )
        self.param_dtype, self.reduce_dtype = param_dtype, reduce_dtype
        self.reshard_after_forward = reshard_after_forward

    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes  # all ranks shard the model
        super().setup_environment()

    def parallelize_model(self, pl_module: L.LightningModule, model) -> None:
        """Step 5 of `parallelize.parallelize`: shard `model` (blocks, then `pl_module` as the root)."""
        from torch.distributed.fsdp import MixedPrecisionPolicy

        dtype = lambda name: getattr(torch, name) if name else None  # noqa: E731
        policy = MixedPrecisionPolicy(
            param_dtype=dtype(self.param_dtype), reduce_dtype=dtype(self.reduce_dtype)
        )
        shard_fsdp2(pl_module, model, self.device_mesh["data_parallel"], self.reshard_after_forward, policy)


def shard_fsdp2(
    pl_module: L.LightningModule, model, mesh, reshard_after_forward: bool = True, mp_policy=None
) -> None:
    """Apply FSDP2 to an InternVL model: one unit per ViT layer, one per LLM decoder layer, and the
    LightningModule as root for the rest (embeddings, projector, norms, output layer).

    The root is the LightningModule, not the VLM, because training calls the VLM's parts rather
    than its `forward`; the root stays unsharded from its forward through the loss and backward.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    opts = {"mesh": mesh, "mp_policy": mp_policy or MixedPrecisionPolicy()}
    for layer in model.model.vision_tower.encoder.layer:
        fully_shard(layer, reshard_after_forward=reshard_after_forward, **opts)
    for layer in model.model.language_model.layers:
        fully_shard(layer, reshard_after_forward=reshard_after_forward, **opts)
    fully_shard(pl_module, reshard_after_forward=False, **opts)


class ParamScope(torch.nn.Module):
    """Runs `fn(*args)` as its own forward, with `params` gathered under ZeRO-3 for forward and backward.

    ZeRO-3 gathers a parameter only inside the forward/backward of its owning module or of
    modules it is registered with as "external". The chunked loss reads `lm_head.weight` directly
    (never calling `lm_head`), so the loss runs inside this scope. Elsewhere it is a plain call.
    """

    def __init__(self, params: list[torch.nn.Parameter] | None = None) -> None:
        super().__init__()
        if params:
            import deepspeed

            for p in params:
                deepspeed.zero.register_external_parameter(self, p)

    def forward(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)


def is_zero3(strategy: Any) -> bool:
    return isinstance(strategy, DeepSpeedStrategy) and strategy.zero_stage_3


def deepspeed_grad_norm(strategy: Any) -> float | None:
    """The global gradient norm of DeepSpeed's last optimizer step (inf if it was skipped), else None.

    Under ZeRO the gradients live in DeepSpeed's partitions, not in `param.grad`.
    """
    if not isinstance(strategy, DeepSpeedStrategy) or strategy.model is None:
        return None
    norm = strategy.deepspeed_engine.get_global_grad_norm()
    return None if norm is None else float(norm)


@contextlib.contextmanager
def consolidated(trainer: L.Trainer, model) -> Iterator[Any]:
    """Yield the whole, unsharded model on global rank 0 (None elsewhere); collective on all ranks.

    ZeRO-3: parameters are gathered in place for the duration. FSDP2: the full state dict is
    gathered to rank 0 and loaded into a plain copy of the model. Other strategies: the model.
    """
    strategy = trainer.strategy
    if is_zero3(strategy):
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
            yield model if trainer.is_global_zero else None
    elif isinstance(strategy, ModelParallelStrategy):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        plain = None
        if trainer.is_global_zero:
            state = fold_adapters(state, adapter_scalings(model))  # LoRA: the plain copy has none
            with torch.device("meta"):
                plain = type(model)._from_config(model.config)
            plain.load_state_dict(state, assign=True)
            plain.tie_weights()
        yield plain
    else:
        yield model if trainer.is_global_zero else None
