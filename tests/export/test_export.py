"""Export round trips: HF-native (loaded by transformers alone) and the original InternVL layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

from internvl_lightning.data.templates import render
from internvl_lightning.data.tiling import pixel_values
from internvl_lightning.export import export_hf, export_original
from internvl_lightning.model.build import build_model
from internvl_lightning.model.load import load_original
from internvl_lightning.tokenizer import load_tokenizer
from tests.helpers import IMAGES
from tests.helpers.batches import model_logits, vlm_inputs

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


def _processorvlm_inputs(out: Path, image: Image.Image, question: str) -> dict:
    """What `AutoProcessor` gives for one image + question.

    `InternVLProcessor` can only be built where torchvision is installed (its video processor
    needs it); elsewhere the same steps run from the exported files: the chat template, the
    image processor, and the processor's expansion of `<image>` into 256-per-tile context tokens.
    """
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    try:
        import torchvision  # noqa: F401

        processor = AutoProcessor.from_pretrained(out)
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
        return dict(processor(images=[image], text=[prompt], return_tensors="pt"))
    except ImportError:
        tok = AutoTokenizer.from_pretrained(out)
        image_processor = AutoImageProcessor.from_pretrained(out)
        seq = json.loads((out / "processor_config.json").read_text())["image_seq_length"]
        pixels = image_processor(images=[image], crop_to_patches=True, return_tensors="pt")["pixel_values"]
        prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        image_text = (
            tok.start_image_token + tok.context_image_token * (seq * pixels.shape[0]) + tok.end_image_token
        )
        ids = tok(prompt.replace("<image>", image_text, 1), add_special_tokens=False, return_tensors="pt")
        return {
            "input_ids": ids["input_ids"],
            "attention_mask": ids["attention_mask"],
            "pixel_values": pixels,
        }


def test_exported_processor_reproduces_training_inputs_and_generates(tiny, tmp_path):
    """The exported files turn an image + question into exactly the training-time tensors."""
    model, tok = tiny
    out = export_hf(model, tmp_path / "hf", tok, max_dynamic_patch=6)
    image = Image.open(ASSET).convert("RGB")
    inputs = _processorvlm_inputs(out, image, "What is in the picture?")

    ours = pixel_values(image, max_num=6, image_size=model.config.vision_config.image_size[0])
    torch.testing.assert_close(inputs["pixel_values"], ours, atol=1e-6, rtol=0)
    conv = [{"from": "human", "value": "<image>\nWhat is in the picture?"}]
    n_tokens = ours.shape[0] * model.config.image_seq_length
    expected = tok(
        render(conv, "internvl2_5", [n_tokens], add_generation_prompt=True), add_special_tokens=False
    )
    assert inputs["input_ids"][0].tolist() == expected["input_ids"]

    loaded = AutoModelForImageTextToText.from_pretrained(out)
    generated = loaded.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert generated.shape[1] > inputs["input_ids"].shape[1]
    stop = set(loaded.generation_config.eos_token_id)
    assert tok.convert_tokens_to_ids("<|im_end|>") in stop


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
