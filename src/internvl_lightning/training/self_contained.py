"""What a Lightning ``.ckpt`` of ``InternVLChat`` carries besides its weights, so that ``export``,
``evaluate`` and ``chat`` read it from any directory after the component dirs moved or are gone.

Under the key ``internvl_lightning`` (plain types only: the file still loads weights-only):
- ``config``: the composite model's config (``InternVLConfig.to_dict()``), to build the model
  without reading the component dirs;
- ``tokenizer``: the run's tokenizer files, VLM tokens included (as an export writes them);
- ``record``: the data settings it trained with (template, normalisation, tile range), the same
  training record a stage output carries in ``internvl_lightning.json``;
- ``components``: where each component came from (absolute path) and a digest of its config, to
  name them in an error when a checkpoint without its frozen weights cannot be completed.

A checkpoint saved with ``exclude_frozen_parameters`` (ZeRO stage 1) holds only the trained
weights; its frozen ones still come from the components.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

import torch
from transformers import InternVLConfig, InternVLForConditionalGeneration, PreTrainedTokenizerBase
from transformers.initialization import no_init_weights

from ..hub import is_hub_id
from ..model.record import read_training_record
from ..tokenizer import load_tokenizer

KEY = "internvl_lightning"


def tokenizer_files(tokenizer: PreTrainedTokenizerBase) -> dict[str, bytes]:
    """The tokenizer as the files an export writes, by name."""
    from ..export.tokenizer import save_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        save_tokenizer(tokenizer, tmp)
        return {p.name: p.read_bytes() for p in sorted(Path(tmp).iterdir()) if p.is_file()}


def tokenizer_from_files(files: dict[str, bytes], trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in files.items():
            (Path(tmp) / Path(name).name).write_bytes(data)
        return load_tokenizer(tmp, trust_remote_code)  # read whole into memory before tmp goes


def _component(source: str | None) -> dict[str, Any] | None:
    if not source:
        return None
    if is_hub_id(source):
        return {"path": source}
    path = Path(source).resolve()
    config = path / "config.json"
    digest = hashlib.sha256(config.read_bytes()).hexdigest()[:16] if config.is_file() else None
    return {"path": str(path), "config_sha256": digest}


def contents(model: InternVLForConditionalGeneration, hparams: Any, tokenizer: Any, record: dict) -> dict:
    """The ``internvl_lightning`` entry of a checkpoint."""
    out: dict[str, Any] = {
        "config": json.loads(model.config.to_json_string()),  # plain JSON types only
        "record": dict(record),
        "components": {k: _component(hparams.get(k)) for k in ("vision", "llm", "mlp", "init_from")},
    }
    if isinstance(tokenizer, PreTrainedTokenizerBase):
        out["tokenizer"] = tokenizer_files(tokenizer)
    return out


def model_from_config(config: dict[str, Any]) -> InternVLForConditionalGeneration:
    """The composite model's architecture (weights uninitialised: a state dict fills them)."""
    cfg = InternVLConfig.from_dict(config)
    cfg._attn_implementation = "sdpa"  # reading a checkpoint: the training kernel may not exist here
    with no_init_weights():
        model = InternVLForConditionalGeneration(cfg)
    return model.to(torch.float32)


def stored(path: str | Path) -> dict[str, Any]:
    """The ``internvl_lightning`` entry of a ``.ckpt`` ({} for checkpoints written before it)."""
    ckpt = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    return ckpt.get(KEY) or {}


def training_record(source: Any) -> dict[str, Any]:
    """The data settings a checkpoint trained with: a model dir's record, or a ``.ckpt``'s."""
    if not isinstance(source, str | Path):
        return {}
    path = Path(source)
    if path.is_dir():
        return read_training_record(path)
    if path.is_file() and path.suffix == ".ckpt":
        return dict(stored(path).get("record") or {})
    return {}
