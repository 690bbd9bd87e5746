"""Every ```python block of README.md (and conf/README.md) runs as written, on tiny components.

A block runs in a fresh subprocess inside a workspace holding what the README says a reader has
there: component directories ``ckpt/vision`` and ``ckpt/llm`` (what ``python -m
internvl_lightning components --out_dir ckpt`` writes; here a tiny ViT with InternViT's 448-px,
14-px-patch geometry, so the data defaults of 256 tokens per tile hold) and ``shards/stage1``, the
``shard`` command's output for a small stage-1 caption set, ``export/hf`` (an HF-native export of
those components) and ``photo.jpg`` (a real photograph). The block's text is run unchanged
except for ``SUBSTITUTIONS``: the run length only, each of which must occur in a block exactly once.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from internvl_lightning.data.shard import shard_dataset
from internvl_lightning.export.hf import export_hf
from internvl_lightning.model.build import build_model
from internvl_lightning.model.components import write_components
from internvl_lightning.model.presets import LLM_PRESETS, VisionPreset, VLMPreset
from internvl_lightning.tokenizer import load_tokenizer
from tests.helpers import IMAGES, REPO
from tests.helpers.datagen import image_bytes

DOCUMENTS = ("README.md", "conf/README.md")
# text of a block -> what runs instead: only how long a block trains, never what it calls
SUBSTITUTIONS = {"max_steps=1000": "max_steps=2"}
BLOCK_TIMEOUT_S = 300  # about 20 s on 2 busy cores
# a ViT of two layers with InternViT-300M's input geometry (448-px tiles, 14-px patches)
TINY_448 = VLMPreset(
    "tiny-448",
    VisionPreset("tiny-448", 32, 2, 2, 64, qkv_bias=True, qk_norm=False, norm_type="layer_norm"),
    LLM_PRESETS["tiny"],
)
# a line of each block -> a file the block must have written (relative to the workspace)
OUTCOMES = {
    # "From Python": two optimizer steps of fit, then Lightning's default checkpoint
    "trainer.fit(model, datamodule=data)": "lightning_logs/version_0/checkpoints/epoch=0-step=2.ckpt",
    # the export in plain transformers: it writes nothing; it must run and print an answer
    'processor = AutoProcessor.from_pretrained("export/hf")': None,
}
CAPTIONS = ("A red square.", "A blue circle.", "Two green triangles.", "An empty picture.")


def python_blocks(document: str) -> list[tuple[int, str]]:
    """(line of the opening fence, code) of each ```python block of a document."""
    text = (REPO / document).read_text()
    return [
        (text[: m.start()].count("\n") + 1, m.group(1))
        for m in re.finditer(r"^```python\n(.*?)^```$", text, re.M | re.S)
    ]


BLOCKS = [(doc, line, code) for doc in DOCUMENTS for line, code in python_blocks(doc)]


def substituted(code: str) -> str:
    for old, new in SUBSTITUTIONS.items():
        if code.count(old) > 1:
            raise AssertionError(f"{old!r} occurs {code.count(old)} times in one block: substitute one")
        code = code.replace(old, new)
    return code


def write_caption_meta(root: Path) -> Path:
    """A stage-1 caption set in InternVL's format: meta.json, one JSONL, 448 x 448 JPEGs."""
    (root / "images").mkdir(parents=True)
    lines = []
    for i in range(8):
        (root / "images" / f"{i}.jpg").write_bytes(image_bytes(448, 448, seed=i))
        turns = [
            {"from": "human", "value": "<image>\nDescribe the picture."},
            {"from": "gpt", "value": CAPTIONS[i % len(CAPTIONS)]},
        ]
        lines.append(json.dumps({"id": f"cap-{i}", "image": f"{i}.jpg", "conversations": turns}))
    (root / "captions.jsonl").write_text("\n".join(lines) + "\n")
    meta = {"captions": {"root": "images", "annotation": "captions.jsonl", "repeat_time": 1, "length": 8}}
    (root / "meta.json").write_text(json.dumps(meta))
    return root / "meta.json"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("readme")
    vision, llm = write_components(TINY_448, root / "ckpt", seed=0)
    export_hf(build_model(vision=vision, llm=llm), root / "export" / "hf", load_tokenizer(llm))
    shutil.copy(IMAGES / "image1.jpg", root / "photo.jpg")
    report = shard_dataset(write_caption_meta(root / "raw"), llm, root / "shards" / "stage1", progress=False)
    assert report.datasets["captions"].kept == 8, report.to_text()
    return root


def test_the_readme_has_a_python_example_and_every_substitution_is_used():
    assert [(doc, line) for doc, line, _ in BLOCKS if doc == "README.md"], "README.md has no python block"
    for old in SUBSTITUTIONS:
        uses = sum(code.count(old) for _, _, code in BLOCKS)
        assert uses == 1, f"substitution {old!r} occurs {uses} times in the blocks, not once"


def outcome(code: str) -> str | None:
    """The file a block is known to write (None: it prints, and must print something); a block
    without an entry in ``OUTCOMES`` fails."""
    known = [made for line, made in OUTCOMES.items() if line in code.splitlines()]
    assert len(known) == 1, (
        f"add the file this block writes to OUTCOMES (found {len(known)} entries):\n{code}"
    )
    return known[0]


@pytest.mark.parametrize(("document", "line", "code"), BLOCKS, ids=[f"{d}:{n}" for d, n, _ in BLOCKS])
def test_python_block_runs_as_written(document, line, code, workspace, tmp_path):
    expected = outcome(code)
    cwd = tmp_path / "workspace"
    shutil.copytree(workspace, cwd)  # each block starts from the same files
    (tmp_path / "block.py").write_text(substituted(code))
    done = subprocess.run(
        [sys.executable, str(tmp_path / "block.py")],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=BLOCK_TIMEOUT_S,
    )
    assert done.returncode == 0, f"{document}:{line} failed:\n{done.stderr[-4000:]}"
    if expected is None:
        assert done.stdout.strip(), f"{document}:{line} printed nothing"
    else:
        assert (cwd / expected).is_file(), sorted(str(p.relative_to(cwd)) for p in cwd.rglob("*.ckpt"))
