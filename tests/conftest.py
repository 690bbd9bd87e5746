"""Shared fixtures: tiny component checkpoints written once per session, and a clean torch state."""

from __future__ import annotations

import pytest
import torch

from internvl_lightning.model.components import write_components


@pytest.fixture(scope="session")
def tiny_components(tmp_path_factory):
    """(vision_dir, llm_dir): tiny preset, HF-native vision + Qwen2-style LLM, seed 0."""
    return write_components("tiny", tmp_path_factory.mktemp("tiny_hf"), seed=0)


@pytest.fixture(scope="session")
def tiny_components_original(tmp_path_factory):
    """(vision_dir, llm_dir): tiny-internlm2 preset, original InternViT + InternLM2 layouts, seed 0."""
    return write_components(
        "tiny-internlm2",
        tmp_path_factory.mktemp("tiny_original"),
        seed=0,
        vision_layout="original",
        llm_layout="internlm2",
    )


@pytest.fixture(autouse=True)
def _clean_torch_state():
    """Every test starts in fp32 with seed 0, whatever the previous test did."""
    torch.set_default_dtype(torch.float32)
    torch.manual_seed(0)
    yield
    torch.set_default_dtype(torch.float32)
