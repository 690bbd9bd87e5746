"""A Lightning .ckpt carries its model config, tokenizer and data settings: export, chat and the
settings readers work from another directory after the component dirs are gone."""

from __future__ import annotations

import shutil

import pytest
import torch

from internvl_lightning.cli import main
from internvl_lightning.model.load import load_pretrained_vlm
from internvl_lightning.tokenizer import load_tokenizer
from internvl_lightning.training.chat import load_chatbot
from internvl_lightning.training.checkpoint import load_checkpoint
from internvl_lightning.training.self_contained import KEY, stored, training_record
from tests.helpers.recipes import cpu_recipe


def test_a_checkpoint_outlives_its_components(tiny_components, shards, tmp_path, monkeypatch):
    comp = tmp_path / "components"  # a copy, deleted after training
    vision, llm = (shutil.copytree(d, comp / d.name) for d in tiny_components)
    main(["fit", "--config", str(cpu_recipe("stage1", tmp_path, max_steps=2)), f"--model.vision={vision}",
          f"--model.llm={llm}", f"--data.shards={shards}", "--data.max_dynamic_patch=3"])  # fmt: skip
    ckpt = tmp_path / "stage1" / "checkpoints" / "last.ckpt"
    tokens = load_tokenizer(llm)("a photo of <image> and text")["input_ids"]
    shutil.rmtree(comp)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    entry = stored(ckpt)
    assert set(entry) == {"config", "record", "components", "tokenizer"}
    assert entry["components"]["vision"]["path"] == str(vision.resolve())
    assert training_record(ckpt) == {
        "template": "internvl2_5", "normalization": "imagenet", "max_dynamic_patch": 3, "min_dynamic_patch": 1,
    }  # fmt: skip
    model, tok = load_checkpoint(ckpt)
    final = load_pretrained_vlm(tmp_path / "stage1" / "hf")  # the stage output: the same step-2 weights
    for (name, a), (_, b) in zip(model.state_dict().items(), final.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert tok("a photo of <image> and text")["input_ids"] == tokens

    assert main(["export", "--checkpoint", str(ckpt), "--out_dir", "exported"]) == 0
    exported = load_pretrained_vlm(elsewhere / "exported")
    assert all(torch.equal(a, b) for a, b in zip(exported.state_dict().values(), final.state_dict().values()))
    assert load_chatbot(ckpt).settings.max_num == 3  # the tile budget it trained with, not a default


def test_without_its_frozen_weights_a_checkpoint_names_the_components(tiny_components, tmp_path):
    """A checkpoint holding only trained weights (ZeRO's exclude_frozen_parameters) needs its
    components: when they are gone, the error says which."""
    comp = tmp_path / "components"
    vision, llm = (shutil.copytree(d, comp / d.name) for d in tiny_components)
    from internvl_lightning.training.module import InternVLChat

    module = InternVLChat(vision=str(vision), llm=str(llm))
    module.configure_model()
    trained = {f"model.{k}": v for k, v in module.model.state_dict().items() if "projector" in k}
    from internvl_lightning.training import self_contained

    ckpt = tmp_path / "mlp_only.ckpt"
    entry = self_contained.contents(module.model, module.hparams, None, {})
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": trained, KEY: entry}, ckpt)
    model, _ = load_checkpoint(ckpt, tokenizer=llm)  # components present: completed from them
    assert torch.equal(model.state_dict()["model.multi_modal_projector.linear_1.weight"],
                       trained["model.model.multi_modal_projector.linear_1.weight"])  # fmt: skip
    shutil.rmtree(comp)
    with pytest.raises(FileNotFoundError, match="holds only the weights that trained.*components"):
        load_checkpoint(ckpt, tokenizer=tiny_components[1])
