"""Fine-tuning a released InternVL checkpoint end to end, as the README's section runs it.

The checkpoint is a tiny one in the original layout (the form InternVL releases); the recipes are
conf/finetune.yaml and conf/finetune_lora.yaml with only the hardware and the run length changed.
What comes out in the original layout must have the form of what came in: the same weight keys,
config keys and tokenizer files.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from internvl_lightning.cli import main
from internvl_lightning.data.encode import EncodeConfig
from internvl_lightning.data.shard import shard_dataset
from internvl_lightning.export import export_original
from internvl_lightning.model.build import build_model
from internvl_lightning.model.load import load_vlm
from internvl_lightning.tokenizer import load_tokenizer
from tests.helpers.batches import model_logits, vlm_inputs
from tests.helpers.datagen import write_dataset
from tests.helpers.recipes import cpu_recipe


@pytest.fixture(scope="module")
def released(tiny_components, tmp_path_factory):
    """(an original-layout checkpoint, shards made with its tokenizer)."""
    root = tmp_path_factory.mktemp("finetune")
    vision, llm = tiny_components
    checkpoint = export_original(
        build_model(vision=vision, llm=llm), root / "InternVL-tiny", load_tokenizer(llm)
    )
    data = write_dataset(root / "raw")
    cfg = EncodeConfig(image_size=64, tokens_per_tile=16, max_dynamic_patch=4, max_length=1024)
    shard_dataset(data.meta, load_tokenizer(checkpoint), root / "shards", cfg, progress=False)
    return checkpoint, root / "shards"


def _form(directory):
    config = json.loads((directory / "config.json").read_text())
    return (
        set(load_file(str(directory / "model.safetensors"))),
        set(config),
        {part: set(config[part]) for part in ("llm_config", "vision_config")},
        {p.name for p in directory.iterdir()},
    )


@pytest.mark.parametrize("recipe", ["finetune", "finetune_lora"])
def test_finetune_a_released_checkpoint_and_export_it_back(recipe, released, tmp_path):
    checkpoint, shards = released
    main(["fit", "--config", str(cpu_recipe(recipe, tmp_path, max_steps=3)),
          f"--model.init_from={checkpoint}", f"--data.shards={shards}", "--model.lr=1e-3", "--model.warmup=0"])  # fmt: skip
    tuned = tmp_path / recipe / "hf"
    out = tmp_path / "export"
    main(["export", f"--checkpoint={tuned}", f"--out_dir={out}", "--layout=original"])
    assert _form(out) == _form(checkpoint)

    before, after = load_vlm(checkpoint), load_vlm(out)
    changed = {
        part: any(not torch.equal(a, b) for (k, a), b in zip(before.state_dict().items(), after.state_dict().values())
                  if k.startswith(prefix))
        for part, prefix in (("vision", "model.vision_tower."), ("mlp", "model.multi_modal_projector."),
                             ("llm", "model.language_model."))
    }  # fmt: skip
    # Full: the ViT frozen, MLP + LLM trained. LoRA: adapters on the LLM only, merged into it on export.
    assert changed == {"vision": False, "mlp": recipe == "finetune", "llm": True}
    ids, pixels = vlm_inputs(after)
    assert torch.isfinite(model_logits(after, ids, pixels)).all()
