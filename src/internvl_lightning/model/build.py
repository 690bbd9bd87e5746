"""Assemble transformers' ``InternVLForConditionalGeneration`` from separate component checkpoints
(vision encoder dir + LLM dir [+ projector file]), from a stage output, or from a preset (planning).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import InternVLForConditionalGeneration, PretrainedConfig
from transformers.initialization import no_init_weights

from ..constants import IMG_CONTEXT_TOKEN
from ..hub import model_dir
from ..tokenizer import add_vlm_tokens, check_chat_tokens, read_tokenizer
from .config import internvl_config
from .load import (
    PathLike,
    Tensors,
    check_state_dict,
    load_llm,
    load_llm_config,
    load_projector,
    load_vision,
    load_vision_config,
    load_vlm,
    vlm_layout,
)
from .options import apply_options
from .presets import get_preset, meta_model, vlm_config
from .zero3 import from_reader, is_reader, load_partitioned, raise_together, zero3_init_active


def random_projector(vision_hidden: int, text_hidden: int, downsample_ratio: float, seed: int) -> Tensors:
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


def check_sources(
    vision: PathLike | None, llm: PathLike | None, mlp: PathLike | None, init_from: PathLike | None
) -> None:
    """A model comes from components or from a full VLM, never both: ``init_from`` would silently
    win over the component dirs."""
    given = [f"{name}={d}" for name, d in (("vision", vision), ("llm", llm), ("mlp", mlp)) if d is not None]
    if init_from is not None and given:
        raise ValueError(
            f"init_from={init_from} (a full VLM) and {', '.join(given)} (components) were both given; "
            "pass either --model.init_from=DIR or --model.vision=DIR --model.llm=DIR [--model.mlp=FILE], "
            "not both (set the other to null)"
        )


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
    * ``init_from`` (or a full-VLM dir passed as ``vision``/``llm``): a stage output or any other
      full VLM dir, see :func:`load.load_vlm`; options left as None keep the values stored in it.
    * only ``preset``: shapes of a named preset; ``device="meta"`` for planning, else random init.
    Options left as None default to drop_path_rate 0.0, select_layer -1, ps_version "v2" and
    downsample_ratio 0.5. The output layer is tied iff the LLM's own config says so, unless
    ``tie_word_embeddings`` overrides it. The model is returned in eval mode (like
    ``from_pretrained``). Each directory may be a hub id instead (``OpenGVLab/InternVL2_5-1B``,
    see ``hub.py``). ``trust_remote_code``: let a tokenizer defined by its own code
    (``tokenization_*.py``) run it.
    """
    check_sources(vision, llm, mlp, init_from)
    vision, llm, init_from = (None if d is None else model_dir(d) for d in (vision, llm, init_from))
    for d in (vision, llm):
        if init_from is None and d is not None and vlm_layout(d) is not None:
            init_from = d
    if init_from is not None:
        return load_vlm(
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
    tok = read_tokenizer(llm, trust_remote_code)
    old_n = len(tok)  # new rows start here
    add_vlm_tokens(tok)
    check_chat_tokens(tok, where=str(llm))
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
    image_token = tok.convert_tokens_to_ids(IMG_CONTEXT_TOKEN)
    config = internvl_config(vision_cfg, text_cfg, image_token, downsample_ratio, opts[2], tie)
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
        "mlp": (inner.multi_modal_projector, str(mlp or "the random projector")),
    }
    if not tie:
        parts["lm_head"] = (model.lm_head, str(llm))
    for key, (module, where) in parts.items():
        _load_weights(module, None if weights is None else weights[key], where, sharded)
    return apply_options(model.eval(), *opts)


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
    """The state dicts of the vision tower, language model, output layer (untied) and mlp."""
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
        out["mlp"] = load_projector(mlp)
    else:
        out["mlp"] = random_projector(vision_hidden, text_cfg.hidden_size, downsample_ratio, seed)
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
    return apply_options(model.eval(), drop_path_rate, ps_version, select_layer)
