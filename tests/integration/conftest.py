"""Every integration test is slow (several processes, subprocesses, whole runs): `make test-fast` skips them."""

from __future__ import annotations

from pathlib import Path

import pytest

from internvl_lightning.data.encode import EncodeConfig
from internvl_lightning.data.shard import shard_dataset
from internvl_lightning.tokenizer import load_tokenizer
from tests.helpers.datagen import write_dataset

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def shards(tiny_components, tmp_path_factory):
    """The synthetic InternVL datasets sharded once for the tiny components (64-px tiles, 16 tokens
    each, at most 4 tiles); read-only, shared by the CLI-level tests."""
    root = tmp_path_factory.mktemp("cli_data")
    data = write_dataset(root / "raw")
    cfg = EncodeConfig(image_size=64, tokens_per_tile=16, max_dynamic_patch=4, max_length=2048)
    shard_dataset(data.meta, load_tokenizer(tiny_components[1]), root / "shards", cfg, progress=False)
    return root / "shards"
