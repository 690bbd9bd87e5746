"""Assemble transformers' ``InternVLForConditionalGeneration`` from separate component checkpoints
(vision encoder dir + LLM dir [+ projector file]), from a stage output, or from a preset (planning).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn
from transformers import (
    AutoConfig,
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
from .tokenizer import load_with_vlm_tokens
from .zero3 import from_reader, full_shapes, is_reader, load_partitioned, raise_together, zero3_init_active

PathLike = str | Path


def load_tokenizer(llm_dir: PathLike, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """The LLM's tokenizer with InternVL's 9 special tokens added (a no-op if already there)."""
    return load_with_vlm_tokens(llm_dir, trust_remote_code)[0]


def check_state_dict(
    module: nn.Module,
    sd: Mapping[str, torch.Tensor | tuple[int, ...]],
    where: str,
    ignore: tuple[str, ...] = (),
) -> None:
    """Raise one readable error if ``sd`` (tensors, or their shapes) does not fit ``module``
    (missing/unexpected keys, shapes; ZeRO-3 partitioned parameters count with their full shape)."""
    expected = {k: v for k, v in full_shapes(module).items() if k not in ignore}
    got = {k: tuple(v if isinstance(v, tuple) else v.shape) for k, v in sd.items() if k not in ignore}
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


def load_vision_config(vision_dir: PathLike) -> InternVLVisionConfig:
    """The HF-native config of a vision encoder dir (HF or original InternViT layout)."""
    if detect_vision_layout(vision_dir) == "original":
        return vision_config_from_original(read_config(vision_dir, "vision"))
    return InternVLVisionConfig.from_pretrained(str(vision_dir))


def load_vision(vision_dir: PathLike) -> tuple[InternVLVisionConfig, Tensors]:
    """Config + HF-native state dict of a vision encoder dir (HF or original InternViT layout)."""
    sd = read_weights(vision_dir)
    if detect_vision_layout(vision_dir) == "original":
        sd = vision_original_to_hf(sd)
    return load_vision_config(vision_dir), sd


def load_llm_config(llm_dir: PathLike) -> PretrainedConfig:
    """The transformers-native config of an LLM dir (InternLM2 becomes Llama)."""
    if detect_llm_layout(llm_dir) == "internlm2":
        return llama_config_from_internlm2(read_config(llm_dir, "LLM"))
    return AutoConfig.from_pretrained(str(llm_dir))


def load_llm(llm_dir: PathLike) -> tuple[PretrainedConfig, Tensors]:
    """Config + transformers-native state dict (``model.*``, ``lm_head.weight``) of an LLM dir.
    InternLM2 becomes Llama."""
    cfg = load_llm_config(llm_dir)
    sd = {k: v for k, v in read_weights(llm_dir).items() if not k.endswith("rotary_emb.inv_freq")}
    if detect_llm_layout(llm_dir) == "internlm2":
        sd = internlm2_to_llama(sd, cfg.num_attention_heads, cfg.num_key_value_heads)
    return cfg, sd


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
    """PyTorch-default init (as InternVL's ``mlp1``), seeded and independent of the global RNG.

    Plain tensors, drawn in the order ``nn.Linear`` draws them (weight, then bias; same values):
    building modules here would create ZeRO-3 parameters (and collectives) under ``zero.Init``.
    """
    d_in = vision_hidden * round(1 / downsample_ratio) ** 2
    cpu = torch.device("cpu")  # also under Lightning's default-device context (the GPU): same values
    out = {
        "layer_norm.weight": torch.ones(d_in, device=cpu),
        "layer_norm.bias": torch.zeros(d_in, device=cpu),
    }
    generator = torch.Generator().manual_seed(seed)  # leaves the global CPU and CUDA RNGs alone
    for name, fan_in, fan_out in (
        ("linear_1", d_in, text_hidden),
        ("linear_2", text_hidden, text_hidden),
    ):
        weight = nn.init.kaiming_uniform_(
            torch.empty(fan_out, fan_in, device=cpu), a=math.sqrt(5), generator=generator
        )
        bound = 1 / math.sqrt(fan_in)
        bias = torch.empty(fan_out, device=cpu).uniform_(-bound, bound, generator=generator)
        out[f"{name}.weight"], out[f"{name}.bias"] = weight, bias
    return out


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
    vision = model.model.vision_tower
    if vision.config._attn_implementation == "flex_attention":
        # Flex attention is for the LLM's packed block-diagonal masks. ViT tiles are fixed-length
        # and unmasked, where sdpa's flash kernel needs no compilation (as benchmarks/gpu.py ran).
        vision.set_attn_implementation("sdpa")
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
    sharded = zero3_init_active()  # inside deepspeed.zero.Init: only rank 0 reads weights
    vision_cfg, text_cfg = load_vision_config(vision), load_llm_config(llm)
    tok, old_n = load_with_vlm_tokens(llm, trust_remote_code)
    tie = text_cfg.tie_word_embeddings if tie_word_embeddings is None else tie_word_embeddings
    if old_n > text_cfg.vocab_size:
        raise ValueError(
            f"tokenizer in {llm} has {old_n} tokens but the model only {text_cfg.vocab_size} embeddings"
        )
    grew = len(tok) != old_n  # new tokens: resize to len(tokenizer), as InternVL does
    vocab = len(tok) if grew else text_cfg.vocab_size
    weights, error = None, None
    if is_reader():
        try:
            weights = _read_components(
                vision, llm, mlp, text_cfg, tie, old_n if grew else None, vocab,
                vision_cfg.hidden_size, downsample_ratio, seed,
            )  # fmt: skip
        except Exception as err:  # re-raised on every rank just below
            error = err
    raise_together(error)
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
    parts = {
        "vision": (inner.vision_tower, str(vision)),
        "language": (inner.language_model, str(llm)),
        "projector": (inner.multi_modal_projector, str(mlp or "the random projector")),
    }
    if not tie:
        parts["lm_head"] = (model.lm_head, str(llm))
    for key, (module, where) in parts.items():
        _load_weights(module, None if weights is None else weights[key], where, sharded)
    return _apply_options(model.eval(), *opts)


def _read_components(
    vision: PathLike,
    llm: PathLike,
    mlp: PathLike | None,
    text_cfg: PretrainedConfig,
    tie: bool,
    vocab_from: int | None,
    vocab: int,
    vision_hidden: int,
    downsample_ratio: float,
    seed: int,
) -> dict[str, Tensors]:
    """The state dicts of the vision tower, language model, output layer (untied) and projector."""
    _, vision_sd = load_vision(vision)
    _, llm_sd = load_llm(llm)
    embed = llm_sd.get("model.embed_tokens.weight")
    if embed is not None and embed.shape[0] != text_cfg.vocab_size:
        raise ValueError(
            f"weights in {llm}: embed_tokens has {embed.shape[0]} rows but config.json says "
            f"vocab_size {text_cfg.vocab_size}"
        )
    if vocab_from is not None:  # the tokenizer grew: rows vocab_from.. are new
        llm_sd = _resize_vocab(llm_sd, vocab_from, vocab)
    out = {
        "vision": vision_sd,
        "language": {k.removeprefix("model."): v for k, v in llm_sd.items() if k != "lm_head.weight"},
    }
    if not tie:
        if "lm_head.weight" not in llm_sd:
            raise ValueError(f"weights in {llm}: no lm_head.weight, but the output layer is untied")
        out["lm_head"] = {"weight": llm_sd["lm_head.weight"]}
    if mlp is not None:
        out["projector"] = load_projector(mlp)
    else:
        out["projector"] = _random_projector(vision_hidden, text_cfg.hidden_size, downsample_ratio, seed)
    return out


def _load_weights(module: nn.Module, sd: Tensors | None, where: str, sharded: bool) -> None:
    """Check ``sd`` against ``module`` and load it; under ZeRO-3 rank 0's ``sd`` goes to every
    rank's partitions, after every rank has checked rank 0's shapes (one verdict everywhere)."""
    if not sharded:
        check_state_dict(module, sd, where)  # type: ignore[arg-type]
        module.load_state_dict(sd)  # type: ignore[arg-type]
        return
    shapes = from_reader(None if sd is None else {k: tuple(v.shape) for k, v in sd.items()})
    check_state_dict(module, shapes, where)
    load_partitioned(module, sd)


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
