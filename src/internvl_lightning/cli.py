"""`python -m internvl_lightning <command>`: one entry point for training and the tools around it.

Training commands (fit, validate) go through LightningCLI, so a stage is one YAML plus
command-line overrides (`--model.lr=1e-5`, `--trainer.max_steps=100`); the resolved config is
saved beside the run's checkpoints. The other commands are plain argparse tools.
"""

from __future__ import annotations

import argparse
import importlib
import sys

LIGHTNING_COMMANDS = ("fit", "validate")

# name -> (module, add-args function, run function, one-line help)
TOOLS = {
    "components": (
        "internvl_lightning.model.components",
        "add_components_args",
        "run_components",
        "write a vision encoder dir and an LLM dir (config, safetensors, tokenizer) from a preset",
    ),
    "shard": (
        "internvl_lightning.data.shard",
        "add_shard_args",
        "run_shard",
        "validate an InternVL meta file + JSONL and write WebDataset shards, an index and a report",
    ),
    "evaluate": (
        "internvl_lightning.evaluation.runner",
        "add_evaluate_args",
        "run_evaluate",
        "score a checkpoint on MMBench / MMMU / MathVista / VQA files, beside published InternVL2.5 numbers",
    ),
    "export": (
        "internvl_lightning.export.cli",
        "add_export_args",
        "run_export",
        "write a checkpoint as an HF-native directory (transformers loads it natively) or in the original layout",
    ),
    "pipeline": (
        "internvl_lightning.training.pipeline",
        "add_pipeline_args",
        "run_pipeline_cli",
        "run stage 1 -> 1.5 -> 2 -> evaluate -> export from one spec, skipping finished stages",
    ),
    "demo": (
        "internvl_lightning.demo.run",
        "add_demo_args",
        "run_demo_cli",
        "build tiny components and data, train all stages on CPU, evaluate, export, summarise",
    ),
    "inspect": (
        "internvl_lightning.data.preview",
        "add_inspect_args",
        "run_inspect",
        "show decoded samples and one packed batch of a shard dir as text",
    ),
    "plan": (
        "internvl_lightning.training.plan",
        "add_plan_args",
        "run_plan",
        "parameters, memory per GPU (ZeRO 1/2/3, activations) and days of a stage for a preset",
    ),
}


def _usage() -> str:
    lines = [
        "usage: python -m internvl_lightning <command> [options]",
        "",
        "training (LightningCLI; see `<command> --help`):",
        "  fit        train a stage: fit --config conf/stage1.yaml [--model.lr=...] [--trainer.max_steps=...]",
        "  validate   compute the validation loss of a model on a data config",
        "",
        "tools:",
    ]
    lines += [f"  {name:<10} {spec[3]}" for name, spec in TOOLS.items()]
    return "\n".join(lines)


def run_lightning(argv: list[str]) -> None:
    """LightningCLI over InternVLChat + InternVLDataModule."""
    from lightning.pytorch.cli import LightningCLI

    from .data.datamodule import InternVLDataModule
    from .training.module import InternVLChat
    from .training.wiring import link_model_to_data

    class InternVLCLI(LightningCLI):
        def add_arguments_to_parser(self, parser) -> None:
            link_model_to_data(parser)

    InternVLCLI(
        InternVLChat,
        InternVLDataModule,
        args=argv,
        parser_kwargs={"parser_mode": "omegaconf"},
        save_config_kwargs={"overwrite": True},
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command in LIGHTNING_COMMANDS:
        run_lightning(argv)
        return 0
    if command not in TOOLS:
        print(f"unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, add_args, run, help_text = TOOLS[command]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"python -m internvl_lightning {command}", description=help_text)
    getattr(module, add_args)(parser)
    args = parser.parse_args(rest)
    return int(getattr(module, run)(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
