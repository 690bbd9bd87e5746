"""The run's length (max_steps or the data's epochs), the global batch and the step progress bar,
under a real Trainer with the real DataModule over shards from the shard tool."""

from __future__ import annotations

import json
import math

import lightning.pytorch as pl
import pytest
import torch

from internvl_lightning.data.datamodule import InternVLDataModule, PackingConfig
from internvl_lightning.data.encode import EncodeConfig
from internvl_lightning.data.epoch_size import epoch_size
from internvl_lightning.data.shard import shard_dataset
from internvl_lightning.training.global_batch import accumulation, apply_global_batch
from internvl_lightning.training.progress import StepProgressBar
from internvl_lightning.training.run_length import run_length
from tests.helpers.datagen import write_dataset
from tests.helpers.streams import IMAGE_SIZE, TOKENS_PER_TILE

SMALL = {"image_size": IMAGE_SIZE, "tokens_per_tile": TOKENS_PER_TILE, "max_dynamic_patch": 4}
PACKING = PackingConfig(max_packed_tokens=512, num_images_expected=8, max_buffer_size=2)


@pytest.fixture(scope="module")
def shards(tmp_path_factory, vlm_tokenizer):
    root = tmp_path_factory.mktemp("length")
    data = write_dataset(root / "raw")
    cfg = EncodeConfig(max_num_frames=8, **SMALL)
    shard_dataset(data.meta, vlm_tokenizer, root / "shards", cfg, shard_size="20KB", progress=False)
    return root / "shards"


class Counter(pl.LightningModule):
    """Trains nothing; counts the micro-batches it sees."""

    def __init__(self, packs_per_step: int | None = None) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.packs_per_step, self.batches = packs_per_step, 0

    def setup(self, stage: str) -> None:
        apply_global_batch(self.trainer, self.packs_per_step)

    def training_step(self, batch, batch_idx):
        self.batches += 1
        return (self.w * batch["loss_weight"].sum()).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def _datamodule(shards, tokenizer, epochs):
    return InternVLDataModule(
        shards=str(shards), tokenizer=tokenizer, packing=PACKING, num_workers=0, epochs=epochs,
        max_num_frames=8, **SMALL,
    )  # fmt: skip


def _trainer(tmp_path, **kw):
    return pl.Trainer(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_model_summary=False,
        default_root_dir=tmp_path, **kw,
    )  # fmt: skip


def test_epoch_size_sums_the_index_with_repeats(shards):
    index = json.loads((shards / "index.json").read_text())
    size = epoch_size(shards)
    want = sum(
        ds["repeat_time"] * sh["num_tokens"] for ds in index["datasets"].values() for sh in ds["shards"]
    )
    assert size.tokens == pytest.approx(want) and size.tiles > 0
    assert size.packs(512, 8, fill=1.0) == math.ceil(max(size.tokens / 512, size.tiles / 8))
    assert size.share(size.tokens / 2, 0) == pytest.approx(0.5)


@pytest.mark.parametrize("accumulate", [1, 2])
def test_a_data_epoch_run_ends_with_its_data_and_the_bar_counts_optimizer_steps(
    shards, vlm_tokenizer, tmp_path, accumulate
):
    bar = StepProgressBar()
    trainer = _trainer(tmp_path, max_epochs=1, accumulate_grad_batches=accumulate, callbacks=[bar])
    module = Counter()
    trainer.fit(module, datamodule=_datamodule(shards, vlm_tokenizer, epochs=1))
    steps = math.ceil(module.batches / accumulate)
    assert trainer.global_step == steps
    length = bar.length
    assert length.from_data and length.epochs == 1
    # the index bound over the assumed fill is within the packer's real fill of the real count
    assert 0.6 * steps <= length.steps <= steps * 1.05, (length, steps)
    assert bar.train_progress_bar.n == steps == bar.train_progress_bar.total  # never "8/4"
    assert "v_num" not in bar.get_metrics(trainer, module)


def test_max_steps_caps_the_data_and_is_exact(shards, vlm_tokenizer, tmp_path):
    trainer = _trainer(tmp_path, max_epochs=1, max_steps=2)
    trainer.fit(Counter(), datamodule=_datamodule(shards, vlm_tokenizer, epochs=1))
    length = run_length(trainer)
    assert (length.steps, length.from_data) == (2, False)
    endless = _trainer(tmp_path, max_steps=3)
    endless.fit(Counter(), datamodule=_datamodule(shards, vlm_tokenizer, epochs=None))
    assert run_length(endless).steps == 3 and "max_steps" in run_length(endless).describe()


def test_global_batch_sets_the_accumulation(shards, vlm_tokenizer, tmp_path, caplog):
    assert [accumulation(512, n) for n in (512, 8, 1, 48)] == [1, 64, 512, 11]
    trainer = _trainer(tmp_path, max_steps=1)
    module = Counter(packs_per_step=3)
    trainer.fit(module, datamodule=_datamodule(shards, vlm_tokenizer, epochs=None))
    assert trainer.accumulate_grad_batches == 3 and module.batches == 3
    with pytest.raises(ValueError, match="both set the accumulation"):
        _trainer(tmp_path, max_steps=1, accumulate_grad_batches=2).fit(
            Counter(packs_per_step=4), datamodule=_datamodule(shards, vlm_tokenizer, epochs=None)
        )
