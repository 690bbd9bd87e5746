"""Key/config conversion: original InternViT / InternLM2 / full InternVL <-> HF-native.

The forward checks use small reference implementations written from the original models'
definitions (original key names), independent of the converter under test.
"""

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F
from transformers import InternVLVisionModel

from internvl_lightning.model import build_model
from internvl_lightning.model.components import write_vision
from internvl_lightning.model.convert import (
    internlm2_to_llama,
    llama_config_from_internlm2,
    llama_to_internlm2,
    vision_config_from_original,
    vision_original_to_hf,
)
from internvl_lightning.model.families import llm_family, vision_family
from internvl_lightning.model.layout import hf_to_original, original_to_hf
from internvl_lightning.model.load import llm_family_of_dir, read_weights, vision_layout
from internvl_lightning.model.presets import VISION_PRESETS


def _rms(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def internvit_reference(sd, cfg, px):
    """InternViT forward on original keys: CLS + patches + pos; pre-norm blocks with layer scale."""
    c, heads, eps = cfg["hidden_size"], cfg["num_attention_heads"], cfg["layer_norm_eps"]
    rms = cfg.get("norm_type", "rms_norm") == "rms_norm"

    def norm(x, name):
        if rms:
            return _rms(x, sd[name + ".weight"], eps)
        return F.layer_norm(x, (c,), sd[name + ".weight"], sd[name + ".bias"], eps)

    x = F.conv2d(
        px,
        sd["embeddings.patch_embedding.weight"],
        sd["embeddings.patch_embedding.bias"],
        stride=cfg["patch_size"],
    )
    x = x.flatten(2).transpose(1, 2)  # (B, N, C)
    x = (
        torch.cat([sd["embeddings.class_embedding"].expand(len(x), -1, -1), x], 1)
        + sd["embeddings.position_embedding"]
    )
    b, n, _ = x.shape
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layers.{i}."
        qkv = F.linear(norm(x, p + "norm1"), sd[p + "attn.qkv.weight"], sd.get(p + "attn.qkv.bias"))
        q, k, v = qkv.reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)  # each (B, h, N, d)
        if cfg["qk_normalization"]:  # RMSNorm over all heads together
            q = (
                _rms(q.transpose(1, 2).flatten(-2), sd[p + "attn.q_norm.weight"], eps)
                .view(b, n, heads, -1)
                .transpose(1, 2)
            )
            k = (
                _rms(k.transpose(1, 2).flatten(-2), sd[p + "attn.k_norm.weight"], eps)
                .view(b, n, heads, -1)
                .transpose(1, 2)
            )
        attn = ((q @ k.transpose(-1, -2)) * (c // heads) ** -0.5).softmax(-1) @ v
        out = F.linear(
            attn.transpose(1, 2).reshape(b, n, c), sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"]
        )
        x = x + out * sd[p + "ls1"]
        h = F.gelu(F.linear(norm(x, p + "norm2"), sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"]))
        x = x + F.linear(h, sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"]) * sd[p + "ls2"]
    return x


@pytest.mark.parametrize("style", ["300m", "6b"])
def test_original_internvit_matches_hf_vision_model(tmp_path, style):
    preset = VISION_PRESETS["tiny"]
    if style == "6b":  # 6B-style block: no qkv bias, QK-norm, RMSNorm
        preset = dataclasses.replace(preset, qkv_bias=False, qk_norm=True, norm_type="rms_norm")
    d = write_vision(preset, tmp_path / "v", seed=3, layout="original")
    cfg, sd = json.loads((d / "config.json").read_text()), read_weights(d)
    assert cfg["architectures"] == ["InternVisionModel"] and "encoder.layers.0.attn.qkv.weight" in sd
    hf = InternVLVisionModel(vision_config_from_original(cfg)).eval()
    hf.load_state_dict(vision_original_to_hf(sd))
    px = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(
            hf(px).last_hidden_state, internvit_reference(sd, cfg, px), atol=1e-5, rtol=1e-5
        )


def test_internlm2_wqkv_split_matches_internlm2_semantics():
    heads, kv, d, c = 8, 2, 4, 32
    g = heads // kv
    wqkv = torch.randn(kv * (g + 2) * d, c)
    x = torch.randn(3, c)
    # InternLM2Attention: wqkv output viewed as (kv heads, g + 2 slots, head_dim): g queries, k, v.
    qkv = (x @ wqkv.T).view(3, kv, g + 2, d)
    q_ref, k_ref, v_ref = qkv[:, :, :g].reshape(3, heads, d), qkv[:, :, -2], qkv[:, :, -1]
    sd = internlm2_to_llama({"model.layers.0.attention.wqkv.weight": wqkv}, heads, kv)
    p = "model.layers.0.self_attn."
    assert torch.equal((x @ sd[p + "q_proj.weight"].T).view(3, heads, d), q_ref)
    assert torch.equal((x @ sd[p + "k_proj.weight"].T).view(3, kv, d), k_ref)
    assert torch.equal((x @ sd[p + "v_proj.weight"].T).view(3, kv, d), v_ref)
    # query head i must use kv head i // g (Llama's repeat_kv order)
    assert torch.equal(q_ref.view(3, kv, g, d)[:, 1, 0], qkv[:, 1, 0])
    back = llama_to_internlm2(sd, heads, kv)
    assert torch.equal(back["model.layers.0.attention.wqkv.weight"], wqkv)


def test_detect_layouts(tiny_components, tiny_components_original):
    assert vision_layout(tiny_components[0]) == "hf" and llm_family_of_dir(tiny_components[1]).native
    assert vision_layout(tiny_components_original[0]) == "original"
    assert llm_family_of_dir(tiny_components_original[1]).name == "internlm2"
    sd = read_weights(tiny_components_original[1])
    assert {"model.tok_embeddings.weight", "output.weight", "model.layers.0.attention.wqkv.weight"} <= set(sd)
    assert {"model.layers.0.feed_forward.w1.weight", "model.layers.0.attention_norm.weight"} <= set(sd)
    assert sd["model.layers.0.attention.wqkv.weight"].shape == (2 * (2 + 2) * 16, 64)  # (kv * (g+2) * d, C)


@pytest.mark.parametrize("which", ["hf", "original"])
def test_full_checkpoint_keys_round_trip(which, tiny_components, tiny_components_original):
    comps = tiny_components if which == "hf" else tiny_components_original
    arch = "qwen2" if which == "hf" else "internlm2"
    model = build_model(*comps)
    sd = model.state_dict()
    family, text = llm_family(arch), model.config.text_config
    orig = hf_to_original(sd, family, text)
    expected = {"vision_model.embeddings.class_embedding", "mlp1.0.weight", "mlp1.1.weight", "mlp1.3.bias"}
    expected |= {"vision_model.encoder.layers.1.attn.qkv.weight", "vision_model.encoder.layers.0.ls2"}
    if arch == "internlm2":
        expected |= {"language_model.model.tok_embeddings.weight", "language_model.output.weight"}
    else:
        expected |= {"language_model.model.embed_tokens.weight", "language_model.lm_head.weight"}
    assert expected <= set(orig)
    assert not any(k.startswith("model.") for k in orig)
    back = original_to_hf(orig, family, text)
    assert set(back) == set(sd)
    assert all(torch.equal(back[k], sd[k]) for k in sd)


def test_config_translation():
    # shaped like internlm2_5-7b-chat's config.json
    ilm2 = {
        "architectures": ["InternLM2ForCausalLM"],
        "bias": False,
        "hidden_size": 4096,
        "intermediate_size": 14336,
    }
    ilm2 |= {
        "num_attention_heads": 32,
        "num_hidden_layers": 32,
        "num_key_value_heads": 8,
        "rms_norm_eps": 1e-5,
    }
    ilm2 |= {"rope_theta": 1e6, "rope_scaling": {"type": "dynamic", "factor": 2.0}, "vocab_size": 92544}
    llama = llama_config_from_internlm2(ilm2)
    assert (llama.head_dim, llama.num_key_value_heads, llama.attention_bias, llama.rms_norm_eps) == (
        128,
        8,
        False,
        1e-5,
    )
    assert llama.rope_parameters == {"rope_type": "dynamic", "rope_theta": 1e6, "factor": 2.0}
    assert llm_family("internlm2").own_config(llama)["rope_scaling"] == {"type": "dynamic", "factor": 2.0}
    # shaped like InternViT-6B-448px-V1-5's config.json (norm_type absent -> the class default rms_norm)
    vit = {
        "architectures": ["InternVisionModel"],
        "hidden_size": 3200,
        "num_hidden_layers": 45,
        "qkv_bias": False,
    }
    vit |= {
        "num_attention_heads": 25,
        "intermediate_size": 12800,
        "qk_normalization": True,
        "drop_path_rate": 0.1,
    }
    hf = vision_config_from_original(vit)
    assert (hf.norm_type, hf.use_qk_norm, hf.attention_bias, hf.use_mean_pooling) == (
        "rms_norm",
        True,
        False,
        True,
    )
    assert hf.image_size == (448, 448) and hf.layer_scale_init_value == 0.1 and hf.drop_path_rate == 0.1
    back = vision_family().own_config(hf)
    assert {k: back[k] for k in vit} == vit
