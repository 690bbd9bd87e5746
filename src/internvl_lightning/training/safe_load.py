"""Read DeepSpeed (ZeRO) checkpoints without unpickling arbitrary objects.

DeepSpeed's own checkpoint engine reads every file with `torch.load(weights_only=False)`, so a
planted or tampered `*_states.pt` could run any code on resume. `SafeCheckpointEngine` wraps the
engine a `DeepSpeedEngine` uses and reads with `weights_only=True`, allowing, besides tensors and
plain containers, only the few DeepSpeed types its ZeRO-1/2/3 checkpoints hold (found by saving
real ZeRO checkpoints of a tiny model and listing what they reference). Saving is unchanged.
"""

from __future__ import annotations

import pickle
from typing import Any

import torch


class UnsafeCheckpointError(RuntimeError):
    """A checkpoint file references objects a weights-only load refuses to build."""


def deepspeed_safe_types() -> list[type]:
    """The non-tensor types DeepSpeed's ZeRO-1/2/3 checkpoints reference (fp32, bf16 and fp16)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def safe_load(path: str, map_location: Any = None) -> Any:
    """`torch.load` with `weights_only=True` and DeepSpeed's safe types; a clear error otherwise."""
    try:
        with torch.serialization.safe_globals(deepspeed_safe_types()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        try:
            names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:  # noqa: BLE001 - the listing is only for the message
            names = []
        allowed = {f"{t.__module__}.{t.__qualname__}" for t in deepspeed_safe_types()}
        refused = [n for n in names if n not in allowed] or ["(see below)"]
        raise UnsafeCheckpointError(
            f"refusing to resume from {path}: it references {', '.join(refused)}, which a DeepSpeed "
            "checkpoint written by this library never holds. It was tampered with or comes from "
            "elsewhere; nothing in it was run. Resume from another checkpoint.\n"
            f"torch: {str(err).splitlines()[0]}"
        ) from None


class SafeCheckpointEngine:
    """A DeepSpeed checkpoint engine whose `load` is `safe_load`; everything else is the wrapped one's."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def load(self, path: str, map_location: Any = None) -> Any:
        return safe_load(path, map_location)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def make_loads_safe(engine: Any) -> None:
    """Make a `DeepSpeedEngine` read its checkpoints with `safe_load` (idempotent)."""
    current = engine.checkpoint_engine
    if not isinstance(current, SafeCheckpointEngine):
        engine.checkpoint_engine = SafeCheckpointEngine(current)
