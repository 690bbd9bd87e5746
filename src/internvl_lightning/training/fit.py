"""`fit` and `validate`: LightningCLI over `InternVLChat` + `InternVLDataModule`.

A stage is one YAML plus command-line overrides (`--model.lr=1e-5`, `--trainer.max_steps=100`);
the resolved config is saved beside the run's checkpoints. The data side's tokenizer, tile size
and tokens per tile are linked from the model's components (`wiring.py`).
"""

from __future__ import annotations

from lightning.pytorch.cli import LightningCLI

from ..data.datamodule import InternVLDataModule
from .data_report import DataReport
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

    def instantiate_trainer(self, **kwargs):
        trainer = super().instantiate_trainer(**kwargs)
        if not any(isinstance(cb, DataReport) for cb in trainer.callbacks):
            trainer.callbacks.append(DataReport())  # the data stream's skip counts, in every run
        return trainer


def run_lightning(argv: list[str]) -> None:
    """Run `fit` or `validate` with `argv` (the subcommand first, as on the command line)."""
    InternVLCLI(
        InternVLChat,
        InternVLDataModule,
        args=argv,
        auto_configure_optimizers=False,
        save_config_kwargs={"overwrite": True},
    )
