"""Export round trips: HF-native (loaded by transformers alone) and the original InternVL layout."""

from __future__ import annotations

import json
import random
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

from internvl_lightning.constants import IGNORE_INDEX, NORMALIZATION
from internvl_lightning.data.datamodule import InternVLDataModule
from internvl_lightning.data.encode import EncodeConfig, encode_sample
from internvl_lightning.data.image import normalize_tiles
from internvl_lightning.data.shard import shard_dataset
from internvl_lightning.export import export_hf, export_original
from internvl_lightning.model.build import build_model
from internvl_lightning.model.load import load_original
from internvl_lightning.model.record import read_training_record
from internvl_lightning.tokenizer import load_tokenizer
from internvl_lightning.training.stage_output import StageOutput
from tests.helpers import IMAGES
from tests.helpers.batches import model_logits, vlm_inputs
from tests.helpers.datagen import write_dataset

ASSET = IMAGES / "image1.jpg"


@pytest.fixture(scope="module")
def tiny(tiny_components):
    vision, llm = tiny_components
    return build_model(vision=vision, llm=llm), load_tokenizer(llm)


def test_hf_export_loads_natively_with_identicalmodel_logits(tiny, tmp_path):
    model, tok = tiny
    out = export_hf(model, tmp_path / "hf", tok, max_dynamic_patch=6)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json",
                 "processor_config.json", "preprocessor_config.json", "chat_template.jinja"):  # fmt: skip
        assert (out / name).exists(), name
    loaded = AutoModelForImageTextToText.from_pretrained(out)
    assert type(loaded).__name__ == "InternVLForConditionalGeneration"
    ids, pixels = vlm_inputs(model)
    assert torch.equal(model_logits(loaded, ids, pixels), model_logits(model, ids, pixels))


def _processor_inputs(out: Path, image: Image.Image, question: str, **kwargs) -> dict:
    """What `AutoProcessor` gives for one image + question (the project's environment has the
    torchvision build that lets transformers construct `InternVLProcessor`)."""
    processor = AutoProcessor.from_pretrained(out, **kwargs)
    assert type(processor).__name__ == "InternVLProcessor"
    prompt = processor.apply_chat_template(_messages(question), add_generation_prompt=True)
    return dict(processor(images=[image], text=[prompt], return_tensors="pt"))


def _messages(question: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]


def _tokenizer_route_inputs(out: Path, image: Image.Image, question: str) -> dict:
    """The same inputs without torchvision, as the export's module doc says: the tokenizer's chat
    template, the image processor's tiling, and each `<IMG_CONTEXT>` placeholder expanded to
    `image_seq_length` context tokens per tile."""
    tok = AutoTokenizer.from_pretrained(out)
    image_processor = AutoImageProcessor.from_pretrained(out, backend="pil")
    seq = json.loads((out / "processor_config.json").read_text())["image_seq_length"]
    pixels = image_processor(images=[image], crop_to_patches=True, return_tensors="pt")["pixel_values"]
    prompt = tok.apply_chat_template(_messages(question), tokenize=False, add_generation_prompt=True)
    image_text = (
        tok.start_image_token + tok.context_image_token * (seq * pixels.shape[0]) + tok.end_image_token
    )
    assert prompt.count(tok.context_image_token) == 1
    text = prompt.replace(tok.context_image_token, image_text, 1)
    ids = tok(text, add_special_tokens=False, return_tensors="pt")
    return {"input_ids": ids["input_ids"], "attention_mask": ids["attention_mask"], "pixel_values": pixels}


def _training_inputs(tok, image_size: int, tokens: int, tiles: tuple[int, int], question: str):
    """Prompt ids and normalised tiles of a one-image sample as training encodes it (data/encode)."""
    cfg = EncodeConfig(
        image_size=image_size, tokens_per_tile=tokens, min_dynamic_patch=tiles[0], max_dynamic_patch=tiles[1]
    )
    record = {
        "id": "q",
        "image": ASSET.name,
        "conversations": [{"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": "A."}],
    }
    sample = encode_sample(record, {"img0.jpg": ASSET.read_bytes()}, cfg, tok, random.Random(0), "d")
    start = int((sample.labels != IGNORE_INDEX).nonzero()[0])  # the answer starts here
    return sample.input_ids[:start], torch.from_numpy(normalize_tiles(sample.pixel_values.numpy()))


def test_exported_processor_reproduces_training_inputs_and_generates(tiny, tmp_path):
    """The exported files turn an image + question into exactly the training-time tensors, with
    the tile range of the source's training record (a stage output trained with 2..6 tiles)."""
    model, tok = tiny
    stage = export_hf(model, tmp_path / "stage", tok, max_dynamic_patch=6, min_dynamic_patch=2)
    out = export_hf(stage, tmp_path / "hf")  # settings from the stage output's record
    processor_config = json.loads((out / "preprocessor_config.json").read_text())
    assert (processor_config["min_patches"], processor_config["max_patches"]) == (2, 6)
    record = read_training_record(out)
    assert (record["min_dynamic_patch"], record["max_dynamic_patch"]) == (2, 6)

    question = "What is in the picture?"
    image = Image.open(ASSET).convert("RGB")
    size = model.config.vision_config.image_size[0]
    ids, tiles = _training_inputs(tok, size, model.config.image_seq_length, (2, 6), question)
    assert tiles.shape[0] == 7  # 6 tiles + thumbnail: the budget matters for this photo
    # Bit for bit where the image processor is the PIL one training's tiling matches.
    pil = AutoImageProcessor.from_pretrained(out, backend="pil")
    for route in (
        _processor_inputs(out, image, question, image_processor=pil),
        _tokenizer_route_inputs(out, image, question),
    ):
        torch.testing.assert_close(route["pixel_values"], tiles, atol=1e-6, rtol=0)
        assert route["input_ids"][0].tolist() == ids.tolist()
    # AutoProcessor's default (torchvision) backend: the same ids; its bicubic resize rounds a few
    # values to the neighbouring 8-bit level (one level is 1/255 of the channel's std).
    inputs = _processor_inputs(out, image, question)
    assert inputs["input_ids"][0].tolist() == ids.tolist()
    std = json.loads((out / "preprocessor_config.json").read_text())["image_std"]
    one_level = 1 / 255 / min(std)
    diff = (inputs["pixel_values"] - tiles).abs()
    assert diff.max() <= one_level + 1e-5
    assert (diff > 1e-6).float().mean() < 0.01
    loaded = AutoModelForImageTextToText.from_pretrained(out)
    generated = loaded.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert generated.shape[1] > inputs["input_ids"].shape[1]
    stop = set(loaded.generation_config.eos_token_id)
    assert tok.convert_tokens_to_ids("<|im_end|>") in stop


def test_export_settings_come_from_arguments_then_record_then_defaults(tiny, tmp_path):
    model, tok = tiny
    defaults = read_training_record(export_hf(model, tmp_path / "a", tok))
    cfg = EncodeConfig()
    assert defaults == {
        "template": cfg.template,
        "normalization": cfg.normalization,
        "max_dynamic_patch": cfg.max_dynamic_patch,
        "min_dynamic_patch": cfg.min_dynamic_patch,
    }
    stage = export_hf(model, tmp_path / "b", tok, max_dynamic_patch=6, normalization="clip")
    again = read_training_record(export_hf(stage, tmp_path / "c", max_dynamic_patch=4))
    assert (again["max_dynamic_patch"], again["normalization"]) == (4, "clip")
    processor = json.loads((tmp_path / "c" / "preprocessor_config.json").read_text())
    assert (processor["image_mean"], processor["image_std"]) == tuple(map(list, NORMALIZATION["clip"]))
    assert processor["max_patches"] == 4
    with pytest.raises(ValueError, match="min_dynamic_patch=5, max_dynamic_patch=4"):
        export_hf(model, tmp_path / "d", tok, max_dynamic_patch=4, min_dynamic_patch=5)


@pytest.mark.parametrize("which", ["hf", "original"])
def test_original_layout_round_trip(which, tiny_components, tiny_components_original, tmp_path):
    vision, llm = tiny_components if which == "hf" else tiny_components_original
    model, tok = build_model(vision=vision, llm=llm), load_tokenizer(llm)
    llm_arch = None if which == "hf" else "internlm2"
    out = export_original(model, tmp_path / "orig", tok, llm_arch=llm_arch)
    keys = set(load_file(str(out / "model.safetensors")))
    assert any(k.startswith("vision_model.encoder.layers.0.attn.qkv") for k in keys)
    assert {"mlp1.0.weight", "mlp1.1.weight", "mlp1.3.weight"} <= keys
    assert any(k.startswith("language_model.") for k in keys)
    back = load_original(out)
    ids, pixels = vlm_inputs(model)
    torch.testing.assert_close(
        model_logits(back, ids, pixels), model_logits(model, ids, pixels), atol=1e-5, rtol=1e-5
    )
    # ... and from there to HF-native again
    hf = export_hf(out, tmp_path / "hf")
    again = AutoModelForImageTextToText.from_pretrained(hf)
    torch.testing.assert_close(
        model_logits(again, ids, pixels), model_logits(model, ids, pixels), atol=1e-5, rtol=1e-5
    )


def test_export_rejects_unknown_source(tmp_path):
    with pytest.raises(ValueError, match="cannot export"):
        export_hf(tmp_path, tmp_path / "out")


def test_stage_output_records_the_meta_files_tile_budget(tiny, tiny_components, tmp_path):
    """A meta file's per-dataset ``max_dynamic_patch`` (not the run's global 12) reaches the export."""
    model, tok = tiny
    data = write_dataset(tmp_path / "raw", max_dynamic_patch={"single": 6, "multi": 6, "video": 6, "text": 6})
    cfg = EncodeConfig(image_size=64, tokens_per_tile=16, max_length=4096)
    shard_dataset(data.meta, tok, tmp_path / "shards", cfg, progress=False)
    dm = InternVLDataModule(
        shards=str(tmp_path / "shards"), tokenizer=str(tiny_components[1]), image_size=64, tokens_per_tile=16
    )
    dm.setup("fit")
    assert dm.encode_config.max_dynamic_patch == 12  # the run's global default
    trainer = SimpleNamespace(
        datamodule=dm,
        default_root_dir=str(tmp_path / "run"),
        strategy=SimpleNamespace(barrier=lambda name: None),
        is_global_zero=True,
        global_step=1,
    )
    StageOutput().on_train_end(trainer, SimpleNamespace(hparams={}, model=model))
    out = tmp_path / "run" / "hf"
    assert read_training_record(out)["max_dynamic_patch"] == 6
    assert json.loads((out / "preprocessor_config.json").read_text())["max_patches"] == 6


def test_an_export_counts_tokens_as_the_llm_it_came_from(tiny_vlm_dir, tiny_components):
    """The export declares <video> for transformers' processor; the shard index's tokenizer hash
    ignores it, so shards made with the LLM are not reported stale for a run from a stage output."""
    from internvl_lightning.tokenizer import load_tokenizer, tokenizer_info

    exported, llm = load_tokenizer(tiny_vlm_dir), load_tokenizer(tiny_components[1])
    assert "<video>" in exported.get_vocab() and "<video>" not in llm.get_vocab()
    assert tokenizer_info(exported)["sha256"] == tokenizer_info(llm)["sha256"]
