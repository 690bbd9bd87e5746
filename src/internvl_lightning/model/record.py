"""The training record of a model directory: the data settings the model was trained with.

Stage outputs and HF-native exports carry ``internvl_lightning.json`` (template, normalisation,
tile budget); original-layout dirs keep the same facts in ``config.json`` (``template``,
``max_dynamic_patch``, ...), where InternVL's own tools read them. The next stage, the evaluator
and exports read them back here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RECORD_FILE = "internvl_lightning.json"


def write_training_record(directory: str | Path, **settings: Any) -> Path:
    """Write ``settings`` (template=..., normalization=..., max_dynamic_patch=...) beside a model."""
    path = Path(directory) / RECORD_FILE
    path.write_text(json.dumps(settings, indent=2) + "\n")
    return path


def read_training_record(directory: str | Path) -> dict[str, Any]:
    """The settings recorded in a model directory (empty when it records none)."""
    d = Path(directory)
    if (d / RECORD_FILE).is_file():
        return json.loads((d / RECORD_FILE).read_text())
    if (d / "config.json").is_file():
        config = json.loads((d / "config.json").read_text())
        if "template" in config:  # the original layout
            return config
    return {}
