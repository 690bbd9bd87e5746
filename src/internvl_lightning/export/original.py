"""Export to the original InternVL checkpoint layout (`vision_model.*`, `mlp1.*`, `language_model.*`).

InternVL's own tools (its trainer, evaluation scripts, LMDeploy's InternVL path) read this layout
with `trust_remote_code`. The layout's facts (key names, config fields) are in `model/layout.py`;
reading it back is `model.load.load_original`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from safetensors.torch import save_file
from transformers import InternVLForConditionalGeneration, PreTrainedTokenizerBase

from ..model.families import llm_family, llm_family_running
from ..model.layout import hf_to_original, original_config
from ..model.lora import merged_state_dict
from .code import copy_model_code, missing_model_code
from .tokenizer import save_tokenizer

log = logging.getLogger(__name__)


def _fill_token_ids(llm_config: dict, tokenizer: PreTrainedTokenizerBase) -> None:
    """Give ``llm_config`` the BOS / EOS ids it lacks, from the tokenizer. transformers 4.37's
    ``generate`` from embeddings (what InternVL's ``chat()`` calls) needs a BOS id even for LLMs
    that never add one; a tokenizer without BOS gives its pad token, as Qwen2.5's configs name
    ``<|endoftext|>``."""
    if llm_config.get("bos_token_id") is None:
        bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.pad_token_id
        llm_config["bos_token_id"] = bos
    if llm_config.get("eos_token_id") is None:
        llm_config["eos_token_id"] = tokenizer.eos_token_id


def export_original(
    model: InternVLForConditionalGeneration,
    out_dir: str | Path,
    tokenizer: PreTrainedTokenizerBase | None = None,
    llm_arch: str | None = None,
    template: str = "internvl2_5",
    max_dynamic_patch: int = 12,
    code_from: str | Path | None = None,
) -> Path:
    """Write `model` in the original layout; LoRA adapters are folded into the weights.

    `llm_arch` names the LLM family whose layout the LLM is written in: by default the family the
    model runs as (a Qwen2 LLM as `Qwen2ForCausalLM`, a Qwen3 one as `Qwen3ForCausalLM`);
    `"internlm2"` packs a Llama-type LLM back into InternLM2's wqkv form. `code_from`: a
    directory with InternVL's modeling files (e.g. a downloaded InternVL checkpoint) to copy
    beside the weights, so that `AutoModel.from_pretrained(out_dir, trust_remote_code=True)` works;
    without it the export logs which files that needs.
    """
    cfg = model.config
    text = cfg.text_config
    family = llm_family(llm_arch) if llm_arch else llm_family_running(text)
    if family.hf_model_type != text.model_type:
        raise ValueError(
            f"the LLM runs as {text.model_type!r}; it cannot be written in the {family.name} layout "
            f"(which runs as {family.hf_model_type!r})"
        )
    sd = {k: v.detach().cpu().contiguous() for k, v in merged_state_dict(model).items()}
    if text.tie_word_embeddings:  # the layout is untied (layout.TIED_EMBEDDINGS): the head is its own tensor
        sd["lm_head.weight"] = sd.get(
            "lm_head.weight", sd["model.language_model.embed_tokens.weight"]
        ).clone()
    dtype = next(model.parameters()).dtype
    config = original_config(cfg, family, template=template, max_dynamic_patch=max_dynamic_patch, dtype=dtype)
    if tokenizer is not None:
        _fill_token_ids(config["llm_config"], tokenizer)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(hf_to_original(sd, family, text), str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    if tokenizer is not None:
        save_tokenizer(tokenizer, out)
    if code_from is not None:
        copy_model_code(code_from, out)
    missing = missing_model_code(out)
    if missing:
        log.warning(
            "%s: InternVL's own code reads these weights, but AutoModel.from_pretrained(..., "
            "trust_remote_code=True) also needs %s beside them; export with code_from=DIR "
            "(--code_from DIR), DIR holding InternVL's modeling files (any downloaded InternVL checkpoint)",
            out,
            ", ".join(missing),
        )
    return out
