"""`fit` and `validate`: LightningCLI over `InternVLChat` + `InternVLDataModule`.

A stage is one YAML plus command-line overrides (`--model.lr=1e-5`, `--trainer.max_steps=100`);
the resolved config is saved beside the run's checkpoints. The data side's tokenizer, tile size
and tokens per tile are linked from the model's components (`wiring.py`).
"""

from __future__ import annotations

from lightning.pytorch.cli import LightningCLI

from ..data.datamodule import InternVLDataModule
from .module import InternVLChat
from .wiring import link_model_to_data

COMMANDS = {
    "fit": "train a stage: fit --config conf/stage1.yaml [--model.lr=...] [--trainer.max_steps=...]",
    "validate": "compute the validation loss of a model on a data config",
}


class InternVLCLI(LightningCLI):
    """LightningCLI with the model -> data links; the optimizer is the module's own (AdamW groups
    and schedule from `InternVLChat`), so no `--optimizer` / `--lr_scheduler` options are offered."""

    def add_arguments_to_parser(self, parser) -> None:
        link_model_to_data(parser)

    def parse_arguments(self, parser, args) -> None:
        # Arguments always come explicitly from our entry point, which has consumed sys.argv.
        self.config = parser.parse_args(args)


def release_process_group() -> None:
    """Destroy the default process group, if one is up, before the interpreter exits.

    Left to interpreter shutdown, a gloo group's threads can be torn down while still joinable:
    the process then aborts ("terminate called without an active exception", status -6) after a
    run that completed.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def run_lightning(argv: list[str]) -> None:
    """Run `fit` or `validate` with `argv` (the subcommand first, as on the command line)."""
    try:
        InternVLCLI(
            InternVLChat,
            InternVLDataModule,
            args=argv,
            auto_configure_optimizers=False,
            # The module prints its own table of trainable parameters per component; Lightning's
            # summary adds nothing to it but a "Total FLOPs: 0" row and a bf16 size warning.
            trainer_defaults={"enable_model_summary": False},
            save_config_kwargs={"overwrite": True},
        )
    finally:
        release_process_group()
