"""InternVLDataModule: shards from the real shard tool, URL-list sources, Lightning resume, preview."""

from __future__ import annotations

import itertools
import json

import jsonargparse
import lightning.pytorch as pl
import pytest
import torch

from internvl_lightning.cli import main
from internvl_lightning.data.datamodule import InternVLDataModule, PackingConfig
from internvl_lightning.data.encode import EncodeConfig
from internvl_lightning.data.preview import preview
from internvl_lightning.data.shard import shard_dataset
from tests.helpers.datagen import write_dataset
from tests.helpers.streams import IMAGE_SIZE, TOKENS_PER_TILE, assert_same

SMALL = {"image_size": IMAGE_SIZE, "tokens_per_tile": TOKENS_PER_TILE, "max_dynamic_patch": 4}
PACKING = PackingConfig(max_packed_tokens=1024, num_images_expected=8, max_buffer_size=1)
CONTRACT = (
    "input_ids",
    "labels",
    "position_ids",
    "sample_index",
    "cu_seqlens",
    "loss_weight",
    "pixel_values",
    "image_flags",
)


@pytest.fixture(scope="module")
def tool_shards(tmp_path_factory, vlm_tokenizer):  # noqa: F811
    """The synthetic InternVL datasets (image, multi-image, video, text) through the real shard tool."""
    root = tmp_path_factory.mktemp("tool")
    data = write_dataset(root / "raw")
    cfg = EncodeConfig(
        image_size=IMAGE_SIZE, tokens_per_tile=TOKENS_PER_TILE, max_dynamic_patch=4, max_num_frames=8
    )
    shard_dataset(data.meta, vlm_tokenizer, root / "shards", cfg, shard_size="20KB", progress=False)
    meta = json.loads(data.meta.read_text())
    # Samples per epoch: every kept line, times its dataset's repeat_time (the text set repeats).
    return root / "shards", sum(
        len(data.good_lines(d)) * int(meta[d].get("repeat_time", 1)) for d in data.lines
    )


def test_one_epoch_from_the_shard_tool(tool_shards, llm_dir):  # noqa: F811
    out, kept = tool_shards
    dm = InternVLDataModule(
        shards=str(out), tokenizer=str(llm_dir), max_num_frames=8, packing=PackingConfig(2048, 48, 2), epochs=1,
        num_workers=0, batch_size=2, **SMALL,
    )  # fmt: skip
    batches = list(dm.train_dataloader())
    assert sum(b["stats"]["samples"] for b in batches) == kept
    for b in batches:
        assert set(CONTRACT) <= b.keys() and "_data_state" not in b
        assert b["input_ids"].shape[0] <= 2 and b["pixel_values"].shape[1:] == (3, IMAGE_SIZE, IMAGE_SIZE)
        assert 0 < b["stats"]["token_fill"] <= 1 and 0 <= b["stats"]["tile_fill"] <= 1
    stats = dm.data_stats()[0]
    assert stats["errors"] == 0 and sum(stats["read"].values()) == kept
    # a second trainer epoch is the next data epoch: same samples, reshuffled
    again = list(dm.train_dataloader())
    assert sum(b["stats"]["samples"] for b in again) == kept and again[0]["stats"]["epoch"] == 1
    # validation: one plain pass, no resume state in the batches
    dm.val_shards = str(out)
    val = list(dm.val_dataloader())
    assert sum(b["stats"]["samples"] for b in val) == kept and all("_data_state" not in b for b in val)


def test_config_from_yaml():
    parser = jsonargparse.ArgumentParser()
    parser.add_class_arguments(InternVLDataModule, "data")
    yaml = """
    data:
      sources: {web: {urls: ["pipe:cat /data/web-{000..009}.tar"], weight: 2.0}}
      tokenizer: /models/llm
      packing: {max_packed_tokens: 8192, algorithm: reference}
    """
    cfg = parser.parse_string(yaml)
    dm = parser.instantiate(cfg).data
    assert dm.packing == PackingConfig(max_packed_tokens=8192, algorithm="reference")
    assert dm.sources["web"].weight == 2.0 and dm.encode_config.max_length == 8192
    cli = parser.parse_args(["--data.shards=/s", "--data.tokenizer=/m", "--data.packing.max_buffer_size=10"])
    assert parser.instantiate(cli).data.packing.max_buffer_size == 10


def test_url_sources_stream_like_the_index(shard_dir, vlm_tokenizer):  # noqa: F811
    sources = {
        "img": {
            "urls": [f"{shard_dir}/img/shard-{{000000..000005}}.tar"],
            "num_samples": 30,
            "data_augment": True,
        },
        "text": {"urls": [f"{shard_dir}/text/shard-{{000000..000004}}.tar"], "num_samples": 20},
        "small": {"urls": [f"{shard_dir}/small/shard-000000.tar"], "num_samples": 6},
    }
    a = InternVLDataModule(sources=sources, tokenizer=vlm_tokenizer, packing=PACKING, num_workers=0, **SMALL)
    b = InternVLDataModule(
        shards=str(shard_dir), tokenizer=vlm_tokenizer, packing=PACKING, num_workers=0, **SMALL
    )
    assert_same(*(list(itertools.islice(dm.train_dataloader(), 4)) for dm in (a, b)))
    with pytest.raises(ValueError, match="weight or num_samples"):
        InternVLDataModule(sources={"x": {"urls": ["a.tar"]}}, tokenizer=vlm_tokenizer).setup()


class Recorder(pl.LightningModule):
    """Keeps every batch it trains on."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[dict] = []

    def training_step(self, batch, batch_idx):
        assert "_data_state" not in batch
        self.seen.append({k: v for k, v in batch.items() if isinstance(v, torch.Tensor)})
        return (self.w * batch["loss_weight"].sum()).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def _fit(shards, tokenizer, steps: int, ckpt_in=None, ckpt_out=None) -> list[dict]:
    dm = InternVLDataModule(
        shards=str(shards),
        tokenizer=tokenizer,
        packing=PACKING,
        num_workers=2,
        shuffle_buffer=4,
        seed=3,
        **SMALL,
    )
    model = Recorder()
    trainer = pl.Trainer(
        max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_in)
    if ckpt_out is not None:
        trainer.save_checkpoint(ckpt_out)
    return model.seen


def test_lightning_checkpoint_resumes_the_exact_batches(shard_dir, llm_dir, tmp_path):  # noqa: F811
    full = _fit(shard_dir, str(llm_dir), 7)
    first = _fit(shard_dir, str(llm_dir), 3, ckpt_out=tmp_path / "step3.ckpt")
    ckpt = torch.load(tmp_path / "step3.ckpt", weights_only=True)
    assert ckpt["InternVLDataModule"]["train"][0]["consumed"] == 3  # the fetched-ahead batch is not counted
    rest = _fit(shard_dir, str(llm_dir), 7, ckpt_in=tmp_path / "step3.ckpt")
    assert_same(first, full[:3])
    assert_same(rest, full[3:])


def test_preview_and_inspect_cli(tool_shards, llm_dir, capsys):  # noqa: F811
    out, _ = tool_shards
    text = preview(out, str(llm_dir), num_samples=2)
    assert text.count("-- sample") == 2 and "[[" in text and "<IMG_CONTEXT>×" in text
    assert "cu_seqlens" in text and "token_fill=" in text and "position_ids restart at 0" in text
    argv = [
        "inspect",
        "--shards",
        str(out),
        "--tokenizer",
        str(llm_dir),
        "--packing.max_packed_tokens",
        "4096",
    ]
    assert main(argv) == 0
    assert "one batch: 1 pack(s)" in capsys.readouterr().out


def test_more_loader_workers_than_cores_is_said_once(shard_dir, vlm_tokenizer, monkeypatch, caplog):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    dm = InternVLDataModule(
        shards=str(shard_dir), tokenizer=vlm_tokenizer, packing=PACKING, num_workers=4, **SMALL
    )
    with caplog.at_level("WARNING", logger="internvl_lightning"):
        dm._check_workers()
    assert "--data.num_workers=4 but each of the 1 process(es) here has 2 CPU core(s)" in caplog.text
    caplog.clear()
    dm.num_workers = 1
    dm._check_workers()
    assert "num_workers" not in caplog.text
