"""Component loading under DeepSpeed ZeRO-3's ``zero.Init``: no rank ever holds the whole model.

Under ``zero.Init`` every parameter keeps only its rank's partition from the moment its module is
built. The component weights then go in one parameter at a time: gathered whole (briefly), written
by rank 0 from the checkpoint it alone has read, and partitioned again with rank 0's values on
every rank (``GatheredParameters(modifier_rank=0)``). Other ranks never read the weight files, so
host memory holds one copy of the checkpoint (rank 0's, while it loads) plus each rank's
partition, where building the model whole would put a full fp32 copy (104 GB for 26B) in every
GPU's process.

Every rank must take the same path through the collectives, so what rank 0 learns from the files
(shapes, errors) is broadcast before anyone acts on it.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.distributed as dist
from torch import nn


def zero3_init_active() -> bool:
    """True while a ``deepspeed.zero.Init`` context partitions parameters as they are created."""
    try:
        from deepspeed.runtime.zero import partition_parameters
    except ImportError:
        return False
    return partition_parameters.zero_init_context > 0


def is_partitioned(p: torch.Tensor) -> bool:
    return hasattr(p, "ds_id")


def full_shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    """Whole shapes of ``module``'s state (partitioned parameters report their full ``ds_shape``)."""
    params = {n: tuple(p.ds_shape) for n, p in module.named_parameters() if is_partitioned(p)}
    return {k: params.get(k, tuple(v.shape)) for k, v in module.state_dict().items()}


def is_reader() -> bool:
    """Whether this rank reads checkpoint files: rank 0 under ``zero.Init``, every rank otherwise."""
    return not zero3_init_active() or not dist.is_initialized() or dist.get_rank() == 0


def from_reader(value):
    """Rank 0's ``value`` on every rank (a picklable object) under ``zero.Init``; else ``value``."""
    if not zero3_init_active() or not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def raise_together(error: Exception | None) -> None:
    """Raise rank 0's loading error on every rank (others would wait in the next collective)."""
    message = from_reader(None if error is None else f"{type(error).__name__}: {error}")
    if error is not None:
        raise error
    if message is not None:
        raise RuntimeError(f"rank 0 could not load the components: {message}")


def load_partitioned(module: nn.Module, sd: Mapping[str, torch.Tensor] | None) -> None:
    """Write rank 0's ``sd`` into ``module`` (keys already checked); ``sd`` is None on other ranks.

    Parameters go one at a time through a gather on every rank; persistent buffers (never
    partitioned) are broadcast from rank 0.
    """
    import deepspeed

    rank0 = dist.get_rank() == 0
    params = dict(module.named_parameters(remove_duplicate=False))
    with torch.no_grad():
        for name, p in module.named_parameters():
            with deepspeed.zero.GatheredParameters([p], modifier_rank=0):
                if rank0:
                    p.data.copy_(sd[name].to(p.dtype))  # type: ignore[index]
        for name, buf in module.state_dict().items():
            if name in params:
                continue
            # On the buffer's device: NCCL broadcasts GPU tensors only, and files load on the CPU.
            value = sd[name].to(buf.device, buf.dtype) if rank0 else torch.empty_like(buf)  # type: ignore[index]
            dist.broadcast(value, src=0)
            module.get_buffer(name).copy_(value)
