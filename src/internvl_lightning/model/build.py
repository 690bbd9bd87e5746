"""Assemble transformers' ``InternVLForConditionalGeneration`` from separate component checkpoints
(vision encoder dir + LLM dir [+ projector file]), from a stage output, or from a preset (planning).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoTokenizer,
    InternVLConfig,
    InternVLForConditionalGeneration,
    InternVLVisionConfig,
    PretrainedConfig,
    PreTrainedTokenizerBase,
)
from transformers.initialization import no_init_weights

from ..constants import IMG_CONTEXT_TOKEN
from .convert import (
    Tensors,
    detect_llm_layout,
    detect_vision_layout,
    internlm2_to_llama,
    is_vlm_dir,
    llama_config_from_internlm2,
    read_config,
    read_weights,
    vision_config_from_original,
    vision_original_to_hf,
)
from .drop_path import install_drop_path
from .pixel_shuffle import patch_pixel_shuffle
from .presets import get_preset, meta_model, tokens_per_tile, vlm_config
from .tokenizer import add_vlm_tokens, check_chat_tokens

PathLike = str | Path


def _tokenizer(llm_dir: PathLike, trust_remote_code: bool = False) -> tuple[PreTrainedTokenizerBase, int]:
    """(tokenizer with the VLM tokens, its length before adding them)."""
    try:
        tok = AutoTokenizer.from_pretrained(str(llm_dir), trust_remote_code=trust_remote_code)
    except Exception as err:  # transformers raises many types here; name the directory
        raise ValueError(f"could not load a tokenizer from {llm_dir}: {err}") from err
    before = len(tok)
    add_vlm_tokens(tok)
    check_chat_tokens(tok, where=str(llm_dir))
    return tok, before


def load_tokenizer(llm_dir: PathLike, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """The LLM's tokenizer with InternVL's 9 special tokens added (a no-op if already there)."""
    return _tokenizer(llm_dir, trust_remote_code)[0]


def check_state_dict(module: nn.Module, sd: Tensors, where: str, ignore: tuple[str, ...] = ()) -> None:
    """Raise one readable error if ``sd`` does not fit ``module`` (missing/unexpected keys, shapes)."""
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items() if k not in ignore}
    got = {k: tuple(v.shape) for k, v in sd.items() if k not in ignore}
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    shapes = [
        f"{k}: checkpoint {got[k]} vs model {expected[k]}"
        for k in sorted(set(got) & set(expected))
        if got[k] != expected[k]
    ]
    problems = [
        (name, items)
        for name, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", shapes),
        )
        if items
    ]
    if problems:
        lines = [f"weights in {where} do not match the model its config describes:"]
        for name, items in problems:
            shown = ", ".join(items[:8]) + (f", ... ({len(items) - 8} more)" if len(items) > 8 else "")
            lines.append(f"  {name} ({len(items)}): {shown}")
        raise ValueError("\n".join(lines))


def load_vision(vision_dir: PathLike) -> tuple[InternVLVisionConfig, Tensors]:
    """Config + HF-native state dict of a vision encoder dir (HF or original InternViT layout)."""
    layout = detect_vision_layout(vision_dir)
    if layout == "original":
        return vision_config_from_original(read_config(vision_dir, "vision")), vision_original_to_hf(
            read_weights(vision_dir)
        )
    return InternVLVisionConfig.from_pretrained(str(vision_dir)), read_weights(vision_dir)


def load_llm(llm_dir: PathLike) -> tuple[PretrainedConfig, Tensors]:
    """Config + transformers-native state dict (``model.*``, ``lm_head.weight``) of an LLM dir.
    InternLM2 becomes Llama."""
    layout = detect_llm_layout(llm_dir)
    sd = {k: v for k, v in read_weights(llm_dir).items() if not k.endswith("rotary_emb.inv_freq")}
    if layout == "internlm2":
        cfg = llama_config_from_internlm2(read_config(llm_dir, "LLM"))
        return cfg, internlm2_to_llama(sd, cfg.num_attention_heads, cfg.num_key_value_heads)
    return AutoConfig.from_pretrained(str(llm_dir)), sd


_PROJ_NAMES = {"0": "layer_norm", "1": "linear_1", "3": "linear_2"}


def load_projector(path: PathLike) -> Tensors:
    """Projector weights from a file (safetensors, or torch with weights_only=True), with original
    (``mlp1.0/1/3`` or ``0/1/3``) or HF (``layer_norm/linear_1/linear_2``) names -> HF names."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"projector file {p} does not exist")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        raw = load_file(str(p))
    else:
        raw = torch.load(p, map_location="cpu", weights_only=True)
    out: Tensors = {}
    for key, t in raw.items():
        k = key
        for prefix in ("model.multi_modal_projector.", "multi_modal_projector.", "mlp1."):
            k = k.removeprefix(prefix)
        head, _, rest = k.partition(".")
        out[f"{_PROJ_NAMES.get(head, head)}.{rest}"] = t
    return out


def _random_projector(vision_hidden: int, text_hidden: int, downsample_ratio: float, seed: int) -> Tensors:
    """PyTorch-default init (as InternVL's ``mlp1``), seeded and independent of the global RNG."""
    d_in = vision_hidden * round(1 / downsample_ratio) ** 2
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        ln, l1, l2 = nn.LayerNorm(d_in), nn.Linear(d_in, text_hidden), nn.Linear(text_hidden, text_hidden)
    return {
        f"{n}.{k}": v
        for n, m in (("layer_norm", ln), ("linear_1", l1), ("linear_2", l2))
        for k, v in m.state_dict().items()
    }


def _resize_vocab(sd: Tensors, old_n: int, new_n: int) -> Tensors:
    """Embedding/output rows -> ``new_n``; rows ``old_n:new_n`` (new tokens) = mean of rows ``:old_n``.
    Like InternVL, this also drops padding rows beyond len(tokenizer) (Qwen2.5: 151936 -> 151674)."""
    out = dict(sd)
    for key in ("model.embed_tokens.weight", "lm_head.weight"):
        if key not in sd:
            continue
        w = sd[key]  # (V, D)
        new = w.new_empty((new_n, w.shape[1]))
        keep = min(new_n, w.shape[0])
        new[:keep] = w[:keep]
        new[old_n:new_n] = w[:old_n].float().mean(0, keepdim=True).to(w.dtype)
        out[key] = new
    return out


def _apply_options(model, drop_path_rate: float, ps_version: str, select_layer: int):
    """Options transformers' class does not have (drop path, v1 shuffle) or keeps in config."""
    n_layers = model.config.vision_config.num_hidden_layers
    if not -(n_layers + 1) <= select_layer <= n_layers:
        raise ValueError(f"select_layer {select_layer} out of range for a {n_layers}-layer vision encoder")
    model.config.vision_feature_layer = select_layer
    patch_pixel_shuffle(model, ps_version)
    install_drop_path(model, drop_path_rate)
    return model


def build_model(
    vision: PathLike | None = None,
    llm: PathLike | None = None,
    mlp: PathLike | None = None,
    preset: str | None = None,
    device: str | torch.device | None = None,
    *,
    init_from: PathLike | None = None,
    drop_path_rate: float | None = None,
    select_layer: int | None = None,
    downsample_ratio: float | None = None,
    ps_version: str | None = None,
    attn_implementation: str = "sdpa",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    tie_word_embeddings: bool | None = None,
    trust_remote_code: bool = False,
) -> InternVLForConditionalGeneration:
    """Build the composite VLM.

    * ``vision`` + ``llm`` dirs (either layout): load both, add the 9 VLM tokens (new embedding and
      output rows = mean of the old rows), projector from ``mlp`` or random (seeded).
    * ``init_from`` (or a full-VLM dir passed as ``vision``/``llm``): a stage output, see
      :func:`load_pretrained_vlm`; options left as None keep the values stored in it.
    * only ``preset``: shapes of a named preset; ``device="meta"`` for planning, else random init.
    Options left as None default to drop_path_rate 0.0, select_layer -1, ps_version "v2" and
    downsample_ratio 0.5. The output layer is tied iff the LLM's own config says so, unless
    ``tie_word_embeddings`` overrides it. The model is returned in eval mode (like
    ``from_pretrained``).
    """
    for d in (vision, llm):
        if init_from is None and d is not None and is_vlm_dir(d):
            init_from = d
    if init_from is not None:
        return load_pretrained_vlm(
            init_from, device, dtype=dtype, attn_implementation=attn_implementation,
            drop_path_rate=drop_path_rate, select_layer=select_layer, ps_version=ps_version,
            downsample_ratio=downsample_ratio,
        )  # fmt: skip
    opts = (drop_path_rate or 0.0, ps_version or "v2", -1 if select_layer is None else select_layer)
    if vision is None or llm is None:
        if preset is None:
            raise ValueError("build_model needs vision and llm directories, init_from, or a preset")
        return _from_preset(preset, device, dtype, attn_implementation, seed, tie_word_embeddings, *opts)

    downsample_ratio = downsample_ratio or 0.5
    vision_cfg, vision_sd = load_vision(vision)
    text_cfg, llm_sd = load_llm(llm)
    tok, old_n = _tokenizer(llm, trust_remote_code)
    tie = text_cfg.tie_word_embeddings if tie_word_embeddings is None else tie_word_embeddings
    vocab = text_cfg.vocab_size
    embed = llm_sd.get("model.embed_tokens.weight")
    if embed is not None and embed.shape[0] != vocab:
        raise ValueError(
            f"weights in {llm}: embed_tokens has {embed.shape[0]} rows but config.json says vocab_size {vocab}"
        )
    if old_n > vocab:
        raise ValueError(f"tokenizer in {llm} has {old_n} tokens but the model only {vocab} embeddings")
    if len(tok) != old_n:  # new tokens: resize to len(tokenizer), as InternVL does
        llm_sd = _resize_vocab(llm_sd, old_n, len(tok))
        vocab = len(tok)
    text_cfg.vocab_size = vocab
    text_cfg.tie_word_embeddings = tie
    config = InternVLConfig(
        vision_config=vision_cfg,
        text_config=text_cfg,
        image_token_id=tok.convert_tokens_to_ids(IMG_CONTEXT_TOKEN),
        image_seq_length=tokens_per_tile(vision_cfg, downsample_ratio),
        downsample_ratio=downsample_ratio,
        projector_hidden_act="gelu",
        vision_feature_layer=opts[2],
        vision_feature_select_strategy="default",
        tie_word_embeddings=tie,  # transformers 5 defaults to True and would tie otherwise
    )
    with torch.device(device or "cpu"), no_init_weights():
        model = InternVLForConditionalGeneration._from_config(
            config, dtype=dtype, attn_implementation=attn_implementation
        )
    if tie:  # transformers ties inside init_weights, which no_init_weights skips
        model.tie_weights()
        if model.lm_head.weight is not model.get_input_embeddings().weight:
            raise RuntimeError("could not tie lm_head to the input embeddings")
    inner = model.model
    # Every parameter is overwritten below (no_init_weights left them uninitialised): vision and LLM
    # from their dirs, projector from mlp or a seeded init; check_state_dict guarantees full coverage.
    check_state_dict(inner.vision_tower, vision_sd, where=str(vision))
    inner.vision_tower.load_state_dict(vision_sd)
    lm_sd = {k.removeprefix("model."): v for k, v in llm_sd.items() if k != "lm_head.weight"}
    check_state_dict(inner.language_model, lm_sd, where=str(llm))
    inner.language_model.load_state_dict(lm_sd)
    if not tie:
        if "lm_head.weight" not in llm_sd:
            raise ValueError(f"weights in {llm}: no lm_head.weight, but the output layer is untied")
        model.lm_head.load_state_dict({"weight": llm_sd["lm_head.weight"]})
    if mlp is not None:
        proj_sd = load_projector(mlp)
    else:
        proj_sd = _random_projector(vision_cfg.hidden_size, text_cfg.hidden_size, downsample_ratio, seed)
    check_state_dict(inner.multi_modal_projector, proj_sd, where=str(mlp or "the random projector"))
    inner.multi_modal_projector.load_state_dict(proj_sd)
    return _apply_options(model.eval(), *opts)


def _from_preset(
    preset, device, dtype, attn_implementation, seed, tie, drop_path_rate, ps_version, select_layer
):
    if str(device) == "meta":
        model = meta_model(preset, tie_word_embeddings=bool(tie)).to(dtype)
        model.config._attn_implementation = attn_implementation
    else:
        config = vlm_config(get_preset(preset), tie_word_embeddings=bool(tie))
        with torch.random.fork_rng(devices=[]), torch.device(device or "cpu"):
            torch.manual_seed(seed)
            model = InternVLForConditionalGeneration._from_config(
                config, dtype=dtype, attn_implementation=attn_implementation
            )
    return _apply_options(model.eval(), drop_path_rate, ps_version, select_layer)


def load_pretrained_vlm(
    directory: PathLike,
    device: str | torch.device | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "sdpa",
    drop_path_rate: float | None = None,
    select_layer: int | None = None,
    ps_version: str | None = None,
    downsample_ratio: float | None = None,
) -> InternVLForConditionalGeneration:
    """Load an HF-native InternVL dir (``save_pretrained`` output, e.g. a previous stage).
    ``ps_version`` / ``drop_path_rate`` / ``select_layer`` default to what its config stores;
    ``downsample_ratio`` is fixed by the projector's shape and only checked."""
    d = Path(directory)
    if not is_vlm_dir(d):
        arch = read_config(d, "VLM").get("architectures")
        raise ValueError(f"{d} is not an InternVLForConditionalGeneration directory (architectures: {arch})")
    model, info = InternVLForConditionalGeneration.from_pretrained(
        str(d),
        dtype=dtype,
        attn_implementation=attn_implementation,
        use_safetensors=True,
        output_loading_info=True,
    )
    bad = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if bad:
        raise ValueError(f"weights in {d} do not match its config.json: {bad}")
    cfg = model.config
    if downsample_ratio is not None and downsample_ratio != cfg.downsample_ratio:
        raise ValueError(
            f"{d} was trained with downsample_ratio {cfg.downsample_ratio}, not {downsample_ratio}"
        )
    if device is not None:
        model = model.to(device)
    return _apply_options(
        model.eval(),
        (getattr(cfg, "drop_path_rate", None) or 0.0) if drop_path_rate is None else drop_path_rate,
        (getattr(cfg, "ps_version", None) or "v2") if ps_version is None else ps_version,
        cfg.vision_feature_layer if select_layer is None else select_layer,
    )
