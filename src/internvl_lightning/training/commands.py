"""Evaluate and export any checkpoint kind: the `evaluate` and `export` commands, and a pipeline's last steps.

Here, above `evaluation/` and `export/`, a Lightning `.ckpt` can be read too (`checkpoint.py`);
the model is placed on a device and, under torchrun, every process takes its share.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import torch
import torch.distributed as dist

from ..evaluation.generate import read_settings
from ..evaluation.result import EvalResult
from ..evaluation.runner import evaluate
from ..export import export_hf, export_original
from .checkpoint import load_checkpoint
from .self_contained import training_record

DTYPES = Literal["float32", "bfloat16", "float16"]


def evaluate_checkpoint(
    checkpoint: str | Path,
    benchmark: str,
    data: str | Path,
    tokenizer: str | Path | None = None,
    device: str | None = None,
    dtype: DTYPES | None = None,
    trust_remote_code: bool = False,
    **options,
) -> EvalResult | None:
    """Score a checkpoint on a benchmark file (MMBench / MMMU / MathVista / VQA), beside published numbers.

    Under torchrun (``WORLD_SIZE`` > 1) every process answers its share; rank 0 returns the result.

    Args:
        checkpoint: Lightning .ckpt, stage output, HF-native or original-layout InternVL dir.
        benchmark: mmbench, mmmu, mathvista or vqa.
        data: benchmark file, directory or glob.
        tokenizer: tokenizer dir (default: the one that goes with the checkpoint).
        device: default cuda when available, else cpu.
        dtype: default bfloat16 on a GPU, float32 on the CPU.
        trust_remote_code: let a tokenizer defined by its own code (``tokenization_*.py``) run it.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available() and device in (None, "cuda")
    started = world > 1 and not dist.is_initialized()
    if started:
        dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    where = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if cuda else (device or "cpu")
    if cuda:
        torch.cuda.set_device(where)  # NCCL collectives (all_gather_object) use the current device
    torch_dtype = getattr(torch, dtype) if dtype else (torch.bfloat16 if cuda else torch.float32)
    try:
        model, tok = load_checkpoint(checkpoint, tokenizer, trust_remote_code)
        model = model.to(device=where, dtype=torch_dtype)
        # the trained settings, also of a .ckpt (which the evaluation package does not read)
        settings = read_settings(
            training_record(checkpoint), model, options.pop("max_num", None), options.pop("template", None)
        )
        result = evaluate(
            model,
            benchmark,
            data,
            tok,
            progress=rank == 0,
            settings_source=checkpoint,
            settings=settings,
            **options,
        )
    finally:
        if started:
            dist.destroy_process_group()
    return result if rank == 0 else None


def export_checkpoint(
    checkpoint: str | Path,
    out_dir: str | Path,
    layout: Literal["hf", "original"] = "hf",
    tokenizer: str | Path | None = None,
    dtype: DTYPES | None = None,
    llm_arch: str | None = None,
    template: str | None = None,
    normalization: Literal["imagenet", "clip", "siglip"] | None = None,
    max_dynamic_patch: int | None = None,
    code_from: str | Path | None = None,
    trust_remote_code: bool = False,
) -> Path:
    """Write a checkpoint as an HF-native directory (transformers loads it natively) or in the original layout.

    Args:
        checkpoint: Lightning .ckpt, stage output, HF-native or original-layout InternVL dir.
        out_dir: output directory.
        layout: ``hf`` (InternVLForConditionalGeneration) or ``original`` (InternVL's own code).
        tokenizer: tokenizer dir (default: the one that goes with the checkpoint).
        dtype: convert the weights (default: as trained).
        llm_arch: original layout only: the LLM family to write (``internlm2`` packs a Llama LLM
            back into wqkv form; default: the family of an original-layout checkpoint's own
            ``llm_config``, else the family it runs as).
        template: chat template the model was trained with (default: the checkpoint dir's
            training record, else internvl2_5).
        normalization: pixel normalisation it was trained with (hf layout; default: the record,
            else imagenet).
        max_dynamic_patch: tile budget it was trained with (default: the record, else 12).
        code_from: original layout only: a directory with InternVL's modeling files (e.g. a
            downloaded InternVL checkpoint) to copy beside the weights, for
            ``AutoModel.from_pretrained(..., trust_remote_code=True)``.
        trust_remote_code: let a tokenizer defined by its own code (``tokenization_*.py``) run it.
    """
    model, tok = load_checkpoint(checkpoint, tokenizer, trust_remote_code)
    record = training_record(checkpoint)
    if llm_arch is None and "llm_config" in record:  # an original-layout dir keeps its family
        llm_arch = (record["llm_config"].get("architectures") or [None])[0]
    given = {"template": template, "normalization": normalization, "max_dynamic_patch": max_dynamic_patch}
    settings = {k: v if v is not None else record.get(k) for k, v in given.items()}
    settings["min_dynamic_patch"] = record.get("min_dynamic_patch")  # the tile range as trained
    settings = {k: v for k, v in settings.items() if v is not None}
    torch_dtype = getattr(torch, dtype) if dtype else None
    if layout == "hf":
        return Path(export_hf(model, out_dir, tok, dtype=torch_dtype, **settings))
    if torch_dtype is not None:
        model = model.to(torch_dtype)
    for key in ("normalization", "min_dynamic_patch"):  # the original layout has no field for them
        settings.pop(key, None)
    return Path(export_original(model, out_dir, tok, llm_arch=llm_arch, code_from=code_from, **settings))
