"""Shared fixtures: tiny components, a tiny tokenizer, shards (each written once per session), and a
clean torch state for every test. Helpers that are not fixtures are in ``tests/helpers/``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Where no CUDA device is present, Triton kernels (Liger-Kernel's, behind loss_kernel: liger) run
# under Triton's interpreter; it has to be on before triton is first imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from internvl_lightning.export import export_hf
from internvl_lightning.model.build import build_model
from internvl_lightning.model.components import build_tokenizer, write_components
from internvl_lightning.tokenizer import load_tokenizer
from tests.helpers.evalgen import write_mathvista, write_mmbench, write_mmmu_json, write_vqa
from tests.helpers.streams import write_shards


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


@pytest.fixture(scope="session")
def shard_dir(tmp_path_factory) -> Path:
    """Shards of three small datasets in the shard tool's layout (``helpers/streams.py``)."""
    return write_shards(tmp_path_factory.mktemp("shards"))


@pytest.fixture(scope="session")
def llm_dir(tmp_path_factory) -> Path:
    """A tiny local Qwen2-style tokenizer directory (the VLM tokens are added by whoever loads it)."""
    out = tmp_path_factory.mktemp("llm")
    build_tokenizer(out, "qwen2")
    return out


@pytest.fixture(scope="session")
def vlm_tokenizer(llm_dir):
    """The tiny tokenizer with the VLM tokens added."""
    return load_tokenizer(llm_dir)


@pytest.fixture(scope="session")
def tiny_vlm_dir(tiny_components, tmp_path_factory):
    """An HF-native export of the tiny model (random weights), trained (so it says) with at most 4 tiles."""
    vision, llm = tiny_components
    model = build_model(vision=vision, llm=llm)
    return export_hf(model, tmp_path_factory.mktemp("tiny_vlm"), llm, max_dynamic_patch=4)


@pytest.fixture(scope="session")
def bench_files(tmp_path_factory):
    """One small file of each benchmark format (MMBench TSV, MMMU JSON, MathVista, VQA JSONL)."""
    root = tmp_path_factory.mktemp("bench")
    return {
        "mmbench": write_mmbench(root / "mmbench_dev_en.tsv", n=3),
        "mmmu": write_mmmu_json(root / "mmmu"),
        "mathvista": write_mathvista(root / "mathvista"),
        "vqa": write_vqa(root / "textvqa"),
    }
