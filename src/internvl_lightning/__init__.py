"""internvl-lightning: train InternVL-style vision-language models in stages with PyTorch Lightning.

Public names are imported lazily so that `import internvl_lightning` stays cheap (tools such as
the shard command must not pay for importing the training stack).
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "InternVLChat": "internvl_lightning.training.module",
    "FreezeSchedule": "internvl_lightning.training.freeze",
    "InternVLDataModule": "internvl_lightning.data.datamodule",
    "build_model": "internvl_lightning.model.build",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'internvl_lightning' has no attribute {name!r}")
