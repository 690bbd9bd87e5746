"""The tiny data module both subprocess fit scripts train on (64-px tiles, 384-token packs)."""

from __future__ import annotations

from internvl_lightning.data.datamodule import InternVLDataModule, PackingConfig


def tiny_datamodule(shards: str, llm: str, batch_size: int = 1) -> InternVLDataModule:
    return InternVLDataModule(
        shards=shards,
        tokenizer=llm,
        image_size=64,
        tokens_per_tile=16,
        max_dynamic_patch=4,
        packing=PackingConfig(max_packed_tokens=384, num_images_expected=8, max_buffer_size=2),
        num_workers=0,
        shuffle_buffer=4,
        batch_size=batch_size,
    )
