"""Test-only strategies that run Lightning's real DeepSpeed code path on CPU processes ("fake GPU").

Lightning's `DeepSpeedStrategy` refuses any accelerator but CUDA, while DeepSpeed itself trains
ZeRO-1/2/3 on CPU (`DS_ACCELERATOR=cpu`, gloo). Three overrides lift the CUDA-only parts
(docs/ARCHITECTURE.md, strategies on CPU); everything else (config, engine, checkpoints, ZeRO-3 init) is the
production code. Set `DS_ACCELERATOR=cpu` before deepspeed is first imported.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("DS_ACCELERATOR", "cpu")

from lightning.fabric.utilities.seed import reset_seed  # noqa: E402
from lightning.pytorch.strategies import DDPStrategy  # noqa: E402

from internvl_lightning.training.strategy import ZeroStrategy  # noqa: E402


class CpuZeroStrategy(ZeroStrategy):
    """`ZeroStrategy` on CPU processes: same config, engine and checkpoints as on GPUs."""

    def setup_environment(self) -> None:
        # Skip DeepSpeedStrategy's CUDA check; keep the DDP environment setup it would run.
        DDPStrategy.setup_environment(self)

    def setup_distributed(self) -> None:
        # CPU devices have no index, so Lightning's device-index validation cannot pass.
        reset_seed()
        self.set_world_ranks()
        self._init_deepspeed_distributed()

    def _setup_model_and_optimizer(self, model, optimizer, lr_scheduler=None):
        import deepspeed

        # `root_device.index` is None on CPU: give DeepSpeed the local rank instead.
        engine, ds_optimizer, _, _ = deepspeed.initialize(
            args=argparse.Namespace(device_rank=self.local_rank),
            config=self.config,
            model=model,
            model_parameters=[p for p in model.parameters() if p.requires_grad],
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
            dist_init_required=False,
        )
        return engine, ds_optimizer
