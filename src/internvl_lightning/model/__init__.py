"""Model assembly: composite InternVL from separate component checkpoints.

Names are imported lazily, so that importing one helper does not pay for the model classes.
"""

from __future__ import annotations

import importlib

# Eager (cheap, torch only): the function shares its module's name, and a lazy lookup would
# hand out the submodule once something imported it.
from .pixel_shuffle import patch_pixel_shuffle, pixel_shuffle

_LAZY = {
    "build_model": "build",
    "check_state_dict": "load",
    "load_pretrained_vlm": "load",
    "load_vlm": "load",
    "write_components": "components",
    "internvl_config": "config",
    "tokens_per_tile": "config",
    "LLM_FAMILIES": "families",
    "VISION_FAMILIES": "families",
    "llm_family": "families",
    "PARTS": "parts",
    "vlm_parts": "parts",
    "enable_activation_checkpointing": "checkpointing",
    "compile_blocks": "compile",
    "add_vlm_lora": "lora",
    "merged_state_dict": "lora",
    "drop_path_schedule": "drop_path",
    "install_drop_path": "drop_path",
    "LLM_PRESETS": "presets",
    "VISION_PRESETS": "presets",
    "VLM_PRESETS": "presets",
    "get_preset": "presets",
    "meta_model": "presets",
    "parameter_counts": "presets",
}

__all__ = [
    "LLM_FAMILIES",
    "LLM_PRESETS",
    "PARTS",
    "VISION_FAMILIES",
    "VISION_PRESETS",
    "VLM_PRESETS",
    "add_vlm_lora",
    "build_model",
    "check_state_dict",
    "compile_blocks",
    "drop_path_schedule",
    "enable_activation_checkpointing",
    "get_preset",
    "install_drop_path",
    "internvl_config",
    "llm_family",
    "load_pretrained_vlm",
    "load_vlm",
    "merged_state_dict",
    "meta_model",
    "parameter_counts",
    "patch_pixel_shuffle",
    "pixel_shuffle",
    "tokens_per_tile",
    "vlm_parts",
    "write_components",
]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
