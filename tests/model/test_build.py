"""build_model: parity with transformers' own InternVL, layouts, vocabulary, options, stage outputs."""

import dataclasses
import json
import shutil

import pytest
import torch
from safetensors.torch import save_file
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    InternVLConfig,
    InternVLForConditionalGeneration,
    InternVLVisionConfig,
    InternVLVisionModel,
)

from internvl_lightning.constants import IMG_CONTEXT_TOKEN
from internvl_lightning.model import build_model, pixel_shuffle, write_components
from internvl_lightning.model.components import convert_llm_dir, convert_vision_dir
from internvl_lightning.model.load import read_weights
from internvl_lightning.model.presets import LLM_PRESETS, get_preset
from internvl_lightning.tokenizer import load_tokenizer

TILES = 2


def _inputs(llm_dir, tiles=TILES):
    tok = load_tokenizer(llm_dir)
    text = (
        "<|im_start|>user\n"
        + ("<img>" + IMG_CONTEXT_TOKEN * 16 + "</img>") * tiles
        + "\nwhat is red?<|im_end|>"
    )
    ids = tok(text, return_tensors="pt").input_ids
    return ids, torch.randn(tiles, 3, 64, 64, generator=torch.Generator().manual_seed(1))


@torch.no_grad()
def test_matches_transformers_internvl(tiny_components):
    vision_dir, llm_dir = tiny_components
    ours = build_model(vision_dir, llm_dir)
    tok = load_tokenizer(llm_dir)
    text_cfg = AutoConfig.from_pretrained(llm_dir)
    text_cfg.vocab_size = len(tok)
    config = InternVLConfig(
        vision_config=InternVLVisionConfig.from_pretrained(vision_dir),
        text_config=text_cfg,
        image_token_id=tok.convert_tokens_to_ids(IMG_CONTEXT_TOKEN),
        image_seq_length=16,
        tie_word_embeddings=text_cfg.tie_word_embeddings,
    )
    ref = InternVLForConditionalGeneration(config).eval()
    ref.load_state_dict(ours.state_dict())
    ids, px = _inputs(llm_dir)
    out, want = ours(input_ids=ids, pixel_values=px), ref(input_ids=ids, pixel_values=px)
    torch.testing.assert_close(out.logits, want.logits, rtol=0, atol=0)
    # the images really reach the LLM
    other = ours(input_ids=ids, pixel_values=px.flip(-1)).logits
    assert (other - out.logits).abs().max() > 1e-4

    # the parts are the downloaded components: vision tower and LLM (on old-vocabulary text)
    vision = InternVLVisionModel.from_pretrained(vision_dir).eval()
    torch.testing.assert_close(ours.model.vision_tower(px).last_hidden_state, vision(px).last_hidden_state)
    llm = AutoModelForCausalLM.from_pretrained(llm_dir).eval()
    text = tok("what is red? a circle", return_tensors="pt").input_ids
    n_old = llm.config.vocab_size
    torch.testing.assert_close(
        ours(input_ids=text).logits[..., :n_old], llm(input_ids=text).logits, rtol=0, atol=1e-6
    )


@torch.no_grad()
def test_original_layouts_match_hf_twins(tiny_components_original, tmp_path):
    vision_dir, llm_dir = tiny_components_original
    ours = build_model(vision_dir, llm_dir)
    ids, px = _inputs(llm_dir)
    logits = ours(input_ids=ids, pixel_values=px).logits
    # twin 1: the directories converted to HF layout
    twin_v, twin_l = convert_vision_dir(vision_dir, tmp_path / "v"), convert_llm_dir(llm_dir, tmp_path / "l")
    torch.testing.assert_close(
        build_model(twin_v, twin_l)(input_ids=ids, pixel_values=px).logits, logits, atol=1e-5, rtol=0
    )
    # twin 2: the same preset and seed written directly in HF layout
    hf_v, hf_l = write_components("tiny-internlm2", tmp_path / "hf", seed=0)
    assert AutoConfig.from_pretrained(hf_l).architectures == ["LlamaForCausalLM"]
    torch.testing.assert_close(
        build_model(hf_v, hf_l)(input_ids=ids, pixel_values=px).logits, logits, atol=1e-5, rtol=0
    )


def test_new_token_rows_are_mean_of_old_rows(tiny_components):
    vision_dir, llm_dir = tiny_components
    model = build_model(vision_dir, llm_dir)
    sd = read_weights(llm_dir)
    old = sd["lm_head.weight"].shape[0]
    tok = load_tokenizer(llm_dir)
    assert len(tok) == old + 9 == model.config.text_config.vocab_size
    out, emb = model.lm_head.weight.detach(), model.model.language_model.embed_tokens.weight.detach()
    torch.testing.assert_close(out[:old], sd["lm_head.weight"], rtol=0, atol=0)
    torch.testing.assert_close(out[old:], sd["lm_head.weight"].mean(0).expand(9, -1))
    torch.testing.assert_close(emb[old:], sd["model.embed_tokens.weight"].mean(0).expand(9, -1))
    assert model.config.image_token_id == tok.convert_tokens_to_ids(IMG_CONTEXT_TOKEN) == old + 2


def test_padded_vocabulary_shrinks_to_tokenizer(tiny_components, tmp_path):
    # Like Qwen2.5 (151936 embedding rows, 151665 tokens): InternVL resizes to len(tokenizer) + 9.
    vision_dir, llm_dir = tiny_components
    padded = tmp_path / "llm"
    shutil.copytree(llm_dir, padded)
    sd = read_weights(llm_dir)
    old = sd["lm_head.weight"].shape[0]
    for key in ("lm_head.weight", "model.embed_tokens.weight"):
        sd[key] = torch.cat([sd[key], torch.randn(1024 - old, sd[key].shape[1])])
    save_file(sd, str(padded / "model.safetensors"))
    cfg = json.loads((padded / "config.json").read_text())
    (padded / "config.json").write_text(json.dumps(cfg | {"vocab_size": 1024}))
    model = build_model(vision_dir, padded)
    assert model.config.text_config.vocab_size == old + 9 == model.lm_head.weight.shape[0]
    torch.testing.assert_close(
        model.lm_head.weight[:old].detach(), sd["lm_head.weight"][:old], rtol=0, atol=0
    )
    torch.testing.assert_close(
        model.lm_head.weight[old:].detach(), sd["lm_head.weight"][:old].mean(0).expand(9, -1)
    )


def test_tie_word_embeddings_follows_llm_config(tiny_components, tmp_path):
    untied = build_model(*tiny_components)
    assert untied.config.tie_word_embeddings is False
    assert untied.lm_head.weight.data_ptr() != untied.model.language_model.embed_tokens.weight.data_ptr()
    tiny = get_preset("tiny")
    tied_preset = dataclasses.replace(
        tiny, llm=dataclasses.replace(LLM_PRESETS["tiny"], tie_word_embeddings=True)
    )
    vision_dir, llm_dir = write_components(tied_preset, tmp_path, seed=0)
    assert "lm_head.weight" not in read_weights(llm_dir)
    tied = build_model(vision_dir, llm_dir)
    assert tied.config.tie_word_embeddings is True and tied.config.text_config.tie_word_embeddings is True
    assert tied.lm_head.weight is tied.model.language_model.embed_tokens.weight
    forced = build_model(*tiny_components, tie_word_embeddings=True)
    assert forced.lm_head.weight is forced.model.language_model.embed_tokens.weight


def _manual_features(model, px, layer, version):
    hidden = model.model.vision_tower(px, output_hidden_states=True).hidden_states[layer][:, 1:]  # drop CLS
    grid = hidden.reshape(len(px), 8, 8, -1)
    return model.model.multi_modal_projector(pixel_shuffle(grid, 0.5, version).reshape(len(px), 16, -1))


@torch.no_grad()
def test_select_layer_and_ps_version(tiny_components):
    _, px = _inputs(tiny_components[1])
    base = build_model(*tiny_components)
    feats = base.get_image_features(px).pooler_output
    torch.testing.assert_close(feats, _manual_features(base, px, -1, "v2"))
    second = build_model(*tiny_components, select_layer=-2)
    assert second.config.vision_feature_layer == -2
    feats2 = second.get_image_features(px).pooler_output
    torch.testing.assert_close(feats2, _manual_features(second, px, -2, "v2"))
    assert not torch.allclose(feats2, feats)
    v1 = build_model(*tiny_components, ps_version="v1")
    assert v1.config.ps_version == "v1"
    feats_v1 = v1.get_image_features(px).pooler_output
    torch.testing.assert_close(feats_v1, _manual_features(v1, px, -1, "v1"))
    assert not torch.allclose(feats_v1, feats)
    assert type(v1.model).pixel_shuffle is type(base.model).pixel_shuffle  # class untouched
    torch.testing.assert_close(base.get_image_features(px).pooler_output, feats)
    with pytest.raises(ValueError, match="select_layer 5 out of range"):
        build_model(*tiny_components, select_layer=5)


@torch.no_grad()
def test_stage_output_round_trip(tiny_components, tmp_path):
    model = build_model(*tiny_components, ps_version="v1", drop_path_rate=0.1, select_layer=-2)
    model.save_pretrained(tmp_path / "stage")
    load_tokenizer(tiny_components[1]).save_pretrained(tmp_path / "stage")
    ids, px = _inputs(tiny_components[1])
    want = model(input_ids=ids, pixel_values=px).logits
    for loaded in (build_model(init_from=tmp_path / "stage"), build_model(tmp_path / "stage")):
        assert loaded.config.ps_version == "v1" and loaded.config.vision_feature_layer == -2
        assert loaded.model.vision_tower.encoder.layer[1].drop_path.p == pytest.approx(0.1)
        torch.testing.assert_close(loaded(input_ids=ids, pixel_values=px).logits, want, rtol=0, atol=0)
    assert len(load_tokenizer(tmp_path / "stage")) == model.config.text_config.vocab_size


def test_projector_file_and_seed(tiny_components, tmp_path):
    a, b = build_model(*tiny_components, seed=0), build_model(*tiny_components, seed=0)
    c = build_model(*tiny_components, seed=1)
    pa = a.model.multi_modal_projector.state_dict()
    assert all(torch.equal(pa[k], b.model.multi_modal_projector.state_dict()[k]) for k in pa)
    assert not torch.equal(
        pa["linear_1.weight"], c.model.multi_modal_projector.state_dict()["linear_1.weight"]
    )
    # original names (InternVL's extract_mlp.py / --mlp_path) in a torch file, HF names in safetensors
    names = {"layer_norm": "mlp1.0", "linear_1": "mlp1.1", "linear_2": "mlp1.3"}
    torch.save(
        {names[k.split(".")[0]] + "." + k.split(".")[1]: v for k, v in pa.items()}, tmp_path / "mlp.pth"
    )
    save_file(dict(pa), str(tmp_path / "mlp.safetensors"))
    for f in ("mlp.pth", "mlp.safetensors"):
        loaded = build_model(
            *tiny_components, mlp=tmp_path / f, seed=1
        ).model.multi_modal_projector.state_dict()
        assert all(torch.equal(loaded[k], pa[k]) for k in pa)


def test_dtype_and_attn_implementation(tiny_components):
    model = build_model(*tiny_components, dtype=torch.bfloat16, attn_implementation="eager")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.config.text_config._attn_implementation == "eager"
    assert model.config.vision_config._attn_implementation == "eager"


def test_flex_attention_is_for_the_llm_only(tiny_components, tmp_path):
    """Flex attention serves packed LLM masks; the ViT's fixed unmasked tiles keep sdpa, on every path."""
    built = build_model(*tiny_components, attn_implementation="flex_attention")
    built.save_pretrained(tmp_path)
    for model in (built, build_model(init_from=tmp_path, attn_implementation="flex_attention")):
        assert model.model.language_model.config._attn_implementation == "flex_attention"
        assert model.model.vision_tower.config._attn_implementation == "sdpa"
    preset = build_model(preset="tiny", attn_implementation="flex_attention")
    assert preset.model.vision_tower.config._attn_implementation == "sdpa"


def testrandom_projector_ignores_the_default_device():
    """Lightning builds under `torch.device(<accelerator>)`; the seeded projector must still be drawn
    on the CPU (same values on every device) and leave the global RNG alone."""
    from internvl_lightning.model.build import random_projector

    plain = random_projector(64, 32, 0.5, seed=3)
    state = torch.get_rng_state()
    with torch.device("meta"):
        scoped = random_projector(64, 32, 0.5, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert plain.keys() == scoped.keys()
    for k in plain:
        assert scoped[k].device.type == "cpu" and torch.equal(plain[k], scoped[k]), k
