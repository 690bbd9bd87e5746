"""Key and config maps between checkpoint layouts: pure functions on dicts of tensors and configs.

Component layouts (``model/families.py`` says which family uses which):
  vision: transformers ``InternVLVisionModel`` <-> original InternViT ``InternVisionModel`` (fused qkv);
  LLM:    transformers Llama <-> ``InternLM2ForCausalLM`` (packed wqkv);
  projector: transformers ``multi_modal_projector.{layer_norm,linear_1,linear_2}`` <-> InternVL ``mlp1.{0,1,3}``.
The whole-VLM original layout (``vision_model.*``, ``mlp1.*``, ``language_model.*``) is in ``layout.py``.
"""

from __future__ import annotations

import re

import torch
from transformers import InternVLVisionConfig, LlamaConfig

from .config import vision_geometry

Tensors = dict[str, torch.Tensor]


# ---------------------------------------------------------------- vision: InternViT <-> HF


NORM_TYPES = ("rms_norm", "layer_norm")


def vision_config_from_original(cfg: dict) -> InternVLVisionConfig:
    """InternViT config.json -> ``InternVLVisionConfig`` (ViT stores norm_type only when not rms)."""
    norm = cfg.get("norm_type", "rms_norm")
    if norm not in NORM_TYPES:
        raise ValueError(
            f"vision_config norm_type {norm!r} is not one InternViT has ({', '.join(NORM_TYPES)})"
        )
    hf = InternVLVisionConfig(
        hidden_size=cfg["hidden_size"],
        num_hidden_layers=cfg["num_hidden_layers"],
        num_attention_heads=cfg["num_attention_heads"],
        intermediate_size=cfg["intermediate_size"],
        attention_bias=cfg.get("qkv_bias", True),
        use_qk_norm=cfg.get("qk_normalization", False),
        norm_type=norm,
        layer_norm_eps=cfg.get("layer_norm_eps", 1e-6),
        hidden_act=cfg.get("hidden_act", "gelu"),
        image_size=cfg.get("image_size", 448),
        patch_size=cfg.get("patch_size", 14),
        num_channels=cfg.get("num_channels", 3),
        attention_dropout=cfg.get("attention_dropout", 0.0),
        projection_dropout=cfg.get("attention_dropout", 0.0),
        initializer_range=cfg.get("initializer_range", 0.02),
        layer_scale_init_value=cfg.get("initializer_factor", 0.1),
        use_absolute_position_embeddings=True,
        use_mean_pooling=True,  # the original has no final norm
    )
    hf.drop_path_rate = cfg.get("drop_path_rate", 0.0)
    return hf


def vision_config_to_original(cfg: InternVLVisionConfig) -> dict:
    """``InternVLVisionConfig`` -> an InternViT-style config.json dict (``families.py`` adds its name)."""
    return {
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "intermediate_size": cfg.intermediate_size,
        "qkv_bias": cfg.attention_bias,
        "qk_normalization": cfg.use_qk_norm,
        "norm_type": cfg.norm_type,
        "layer_norm_eps": cfg.layer_norm_eps,
        "hidden_act": cfg.hidden_act,
        "image_size": vision_geometry(cfg)[0],
        "patch_size": vision_geometry(cfg)[1],
        "num_channels": cfg.num_channels,
        "attention_dropout": cfg.attention_dropout,
        "dropout": 0.0,
        "drop_path_rate": getattr(cfg, "drop_path_rate", 0.0) or 0.0,
        "initializer_range": cfg.initializer_range,
        "initializer_factor": cfg.layer_scale_init_value,
        "use_flash_attn": False,
    }


# Per-layer renames original -> HF (the qkv split is handled separately).
_VIT_LAYER = {
    "attn.proj": "attention.projection_layer",
    "attn.q_norm": "attention.q_norm",
    "attn.k_norm": "attention.k_norm",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "norm1": "layernorm_before",
    "norm2": "layernorm_after",
    "ls1": "lambda_1",
    "ls2": "lambda_2",
}
_VIT_EMB = {
    "embeddings.class_embedding": "embeddings.cls_token",
    "embeddings.patch_embedding.weight": "embeddings.patch_embeddings.projection.weight",
    "embeddings.patch_embedding.bias": "embeddings.patch_embeddings.projection.bias",
    "embeddings.position_embedding": "embeddings.position_embeddings",
}


def vision_original_to_hf(sd: Tensors) -> Tensors:
    """InternViT keys -> ``InternVLVisionModel`` keys; qkv (3C, C) rows split into q, k, v."""
    out: Tensors = {}
    for key, t in sd.items():
        if key in _VIT_EMB:
            out[_VIT_EMB[key]] = t
            continue
        m = re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)|encoder\.layers\.(\d+)\.(ls[12])", key)
        if m is None:
            out[key] = t  # unknown: left as is, so the loader reports it as unexpected
            continue
        i, name, kind = (m[1], m[2], m[3]) if m[1] is not None else (m[4], m[5], None)
        prefix = f"encoder.layer.{i}."
        if name == "attn.qkv":
            for part, chunk in zip("qkv", t.chunk(3, dim=0)):
                out[f"{prefix}attention.{part}_proj.{kind}"] = chunk.contiguous()
        elif name in _VIT_LAYER:
            out[prefix + _VIT_LAYER[name] + (f".{kind}" if kind else "")] = t
        else:
            out[key] = t
    return out


def vision_hf_to_original(sd: Tensors) -> Tensors:
    """Inverse of :func:`vision_original_to_hf` (q, k, v concatenated back into qkv)."""
    emb = {v: k for k, v in _VIT_EMB.items()}
    layer = {v: k for k, v in _VIT_LAYER.items()}
    out: Tensors = {}
    for key, t in sd.items():
        if key in emb:
            out[emb[key]] = t
            continue
        m = re.fullmatch(r"encoder\.layer\.(\d+)\.(.+?)(\.weight|\.bias)?", key)
        if m is None:
            out[key] = t
            continue
        if m[2] in ("attention.k_proj", "attention.v_proj"):
            continue  # packed together with q_proj below
        prefix, name, kind = f"encoder.layers.{m[1]}.", m[2], m[3] or ""
        if name == "attention.q_proj":
            base = f"encoder.layer.{m[1]}.attention."
            out[f"{prefix}attn.qkv{kind}"] = torch.cat([sd[f"{base}{p}_proj{kind}"] for p in "qkv"], dim=0)
        else:
            out[prefix + layer.get(name, name) + kind] = t
    return out


# ---------------------------------------------------------------- LLM: InternLM2 <-> Llama

_ILM2 = {
    "model.tok_embeddings.weight": "model.embed_tokens.weight",
    "model.norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_ILM2_LAYER = {
    "attention.wo": "self_attn.o_proj",
    "feed_forward.w1": "mlp.gate_proj",
    "feed_forward.w2": "mlp.down_proj",
    "feed_forward.w3": "mlp.up_proj",
    "attention_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}


def llama_config_from_internlm2(cfg: dict) -> LlamaConfig:
    """InternLM2 config.json -> ``LlamaConfig`` (same math once wqkv is split)."""
    rope = {"rope_type": "default", "rope_theta": float(cfg.get("rope_theta", 10000.0))}
    scaling = cfg.get("rope_scaling") or {}
    if scaling.get("type") in ("dynamic", "linear"):
        rope = rope | {"rope_type": scaling["type"], "factor": float(scaling["factor"])}
    return LlamaConfig(
        vocab_size=cfg["vocab_size"],
        hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["intermediate_size"],
        num_hidden_layers=cfg["num_hidden_layers"],
        num_attention_heads=cfg["num_attention_heads"],
        num_key_value_heads=cfg.get("num_key_value_heads", cfg["num_attention_heads"]),
        hidden_act=cfg.get("hidden_act", "silu"),
        max_position_embeddings=cfg.get("max_position_embeddings", 2048),
        rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
        attention_bias=cfg.get("bias", False),
        tie_word_embeddings=cfg.get("tie_word_embeddings", False),
        rope_parameters=rope,
        bos_token_id=cfg.get("bos_token_id", 1),
        eos_token_id=cfg.get("eos_token_id", 2),
        pad_token_id=cfg.get("pad_token_id"),
    )


def internlm2_config_from_llama(cfg: LlamaConfig) -> dict:
    """``LlamaConfig`` -> an InternLM2-style config.json dict (``families.py`` adds its name)."""
    rope = cfg.rope_parameters or {}
    out = {
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "hidden_act": cfg.hidden_act,
        "max_position_embeddings": cfg.max_position_embeddings,
        "rms_norm_eps": cfg.rms_norm_eps,
        "bias": cfg.attention_bias,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "rope_theta": rope.get("rope_theta", 10000.0),
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
        "pad_token_id": cfg.pad_token_id,
    }
    if rope.get("rope_type") in ("dynamic", "linear"):
        out["rope_scaling"] = {"type": rope["rope_type"], "factor": rope["factor"]}
    return out


def internlm2_to_llama(sd: Tensors, num_heads: int, num_kv_heads: int) -> Tensors:
    """InternLM2 keys -> Llama keys. wqkv rows are grouped per KV head: (kv, g + 2, head_dim) with
    g = num_heads / num_kv_heads query heads, then that group's k, then its v."""
    g = num_heads // num_kv_heads
    out: Tensors = {}
    for key, t in sd.items():
        if key in _ILM2:
            out[_ILM2[key]] = t
            continue
        m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.weight", key)
        if m is None:
            out[key] = t
            continue
        prefix, name = f"model.layers.{m[1]}.", m[2]
        if name == "attention.wqkv":
            hidden = t.shape[-1]
            w = t.reshape(num_kv_heads, g + 2, -1, hidden)  # (kv, g+2, head_dim, C)
            out[prefix + "self_attn.q_proj.weight"] = w[:, :g].reshape(-1, hidden).contiguous()
            out[prefix + "self_attn.k_proj.weight"] = w[:, g].reshape(-1, hidden).contiguous()
            out[prefix + "self_attn.v_proj.weight"] = w[:, g + 1].reshape(-1, hidden).contiguous()
        else:
            out[prefix + _ILM2_LAYER.get(name, name) + ".weight"] = t
    return out


def llama_to_internlm2(sd: Tensors, num_heads: int, num_kv_heads: int) -> Tensors:
    """Inverse of :func:`internlm2_to_llama` (q, k, v packed back into wqkv)."""
    g = num_heads // num_kv_heads
    top = {v: k for k, v in _ILM2.items()}
    layer = {v: k for k, v in _ILM2_LAYER.items()}
    out: Tensors = {}
    for key, t in sd.items():
        if key in top:
            out[top[key]] = t
            continue
        m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.weight", key)
        if m is None:
            out[key] = t
            continue
        prefix, name = f"model.layers.{m[1]}.", m[2]
        if name == "self_attn.q_proj":
            hidden = t.shape[-1]
            q = t.reshape(num_kv_heads, g, -1, hidden)
            k = sd[prefix + "self_attn.k_proj.weight"].reshape(num_kv_heads, 1, -1, hidden)
            v = sd[prefix + "self_attn.v_proj.weight"].reshape(num_kv_heads, 1, -1, hidden)
            out[prefix + "attention.wqkv.weight"] = torch.cat([q, k, v], dim=1).reshape(-1, hidden)
        elif name not in ("self_attn.k_proj", "self_attn.v_proj"):
            out[prefix + layer.get(name, name) + ".weight"] = t
    return out


# ---------------------------------------------------------------- projector: mlp1 <-> HF

# InternVL's ``mlp1`` is nn.Sequential(LayerNorm, Linear, GELU, Linear): children 0, 1 and 3.
PROJECTOR_NAMES = {"0": "layer_norm", "1": "linear_1", "3": "linear_2"}


def projector_to_hf(sd: Tensors) -> Tensors:
    """Projector weights with original (``mlp1.0/1/3``, ``0/1/3``) or HF names -> HF names
    (``layer_norm/linear_1/linear_2.{weight,bias}``); any model prefix is dropped."""
    out: Tensors = {}
    for key, t in sd.items():
        k = key
        for prefix in ("model.multi_modal_projector.", "multi_modal_projector.", "mlp1."):
            k = k.removeprefix(prefix)
        head, _, rest = k.partition(".")
        out[f"{PROJECTOR_NAMES.get(head, head)}.{rest}"] = t
    return out


def projector_from_hf(sd: Tensors) -> Tensors:
    """HF projector names (``layer_norm.weight``, ...) -> InternVL's ``mlp1.0.weight``, ..."""
    inverse = {v: k for k, v in PROJECTOR_NAMES.items()}
    out: Tensors = {}
    for key, t in sd.items():
        name, _, kind = key.partition(".")
        out[f"mlp1.{inverse.get(name, name)}.{kind}"] = t
    return out
