"""`python -m internvl_lightning export`: a checkpoint to an HF-native and/or original-layout directory."""

from __future__ import annotations

import argparse

import torch


def add_export_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint", required=True, help="Lightning .ckpt, stage output dir, or original-layout dir"
    )
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument(
        "--tokenizer", default=None, help="tokenizer dir (default: the one that goes with the checkpoint)"
    )
    parser.add_argument("--layout", choices=("hf", "original"), default="hf")
    parser.add_argument(
        "--llm-arch",
        default=None,
        help="original layout only: 'internlm2' packs a Llama LLM back into wqkv form",
    )
    parser.add_argument("--template", default="internvl2_5", help="chat template the model was trained with")
    parser.add_argument("--normalization", default="imagenet", choices=("imagenet", "clip", "siglip"))
    parser.add_argument("--max-dynamic-patch", type=int, default=12)
    parser.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"))


def run_export(args: argparse.Namespace) -> int:
    from . import export_hf, export_original
    from .load import resolve_model

    dtype = getattr(torch, args.dtype) if args.dtype else None
    if args.layout == "hf":
        out = export_hf(
            args.checkpoint,
            args.out,
            args.tokenizer,
            template=args.template,
            normalization=args.normalization,
            max_dynamic_patch=args.max_dynamic_patch,
            dtype=dtype,
        )
    else:
        model, tok = resolve_model(args.checkpoint, args.tokenizer)
        if dtype is not None:
            model = model.to(dtype)
        out = export_original(model, args.out, tok, llm_arch=args.llm_arch, template=args.template,
                              max_dynamic_patch=args.max_dynamic_patch)  # fmt: skip
    print(f"exported to {out}")
    return 0
