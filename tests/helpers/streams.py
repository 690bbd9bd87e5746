"""Shards in the shard tool's layout, fake and real streams over them, and batch comparisons."""

from __future__ import annotations

import io
import itertools
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

import torch

from internvl_lightning.data.collate import PackingCollator
from internvl_lightning.data.encode import EncodeConfig
from internvl_lightning.data.sources import load_index
from internvl_lightning.data.stream import PackedStream, ShardEncoder

from .datagen import image_bytes

IMAGE_SIZE, TOKENS_PER_TILE = 64, 16

# name -> (samples, samples per shard, has images)
DATASETS = {"img": (30, 5, True), "text": (20, 4, False), "small": (6, 6, True)}


def write_shards(root: Path, datasets=DATASETS, bad: frozenset[tuple[str, int]] = frozenset()) -> Path:
    """Shards + index.json in the shard tool's layout; ``bad`` (dataset, line) get broken image bytes."""
    index = {
        "version": 1,
        "template": "internvl2_5",
        "image_size": IMAGE_SIZE,
        "tokens_per_tile": TOKENS_PER_TILE,
    }
    index["datasets"] = {}
    for name, (n, per, images) in datasets.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        shards = []
        for first in range(1, n + 1, per):
            rel = f"{name}/shard-{len(shards):06d}.tar"
            entry = {"path": rel, "keys": [], "offsets": [], "num_tokens": [], "num_tiles": []}
            with tarfile.open(root / rel, "w", format=tarfile.USTAR_FORMAT) as tar:
                for line in range(first, min(n, first + per - 1) + 1):
                    key = f"{line:09d}"
                    q = ("<image>\n" if images else "") + f"What is item {line}?"
                    turns = [{"from": "human", "value": q}, {"from": "gpt", "value": "red " * (1 + line % 5)}]
                    record = {"id": f"{name}-{line}", "conversations": turns}
                    members = []
                    if images:
                        record["image"] = f"{line}.jpg"
                        data = image_bytes(
                            64 if line % 3 else 128, 64, seed=line
                        )  # noise: JPEG augment changes it
                        members.append(("img0.jpg", data[:50] if (name, line) in bad else data))
                    tokens, tiles = 20 + (line * 7) % 40, (1 + line % 3) if images else 0
                    record["_meta"] = {"num_tokens": tokens, "num_tiles": tiles, "line": line}
                    entry["keys"].append(key)
                    entry["offsets"].append(tar.offset)
                    entry["num_tokens"].append(tokens)
                    entry["num_tiles"].append(tiles)
                    for suffix, data in [("json", json.dumps(record).encode()), *members]:
                        info = tarfile.TarInfo(f"{key}.{suffix}")
                        info.size = len(data)
                        tar.addfile(info, io.BytesIO(data))
            entry["num_samples"] = len(entry["keys"])
            shards.append(entry)
        index["datasets"][name] = {
            "repeat_time": 1.0,
            "data_augment": name == "img",  # JPEG re-encoding draws from the per-sample rng
            "max_dynamic_patch": 4,
            "num_samples": n,
            "shards": shards,
        }
    (root / "index.json").write_text(json.dumps(index))
    return root


@dataclass
class FakeSample:
    """What the packer needs; sizes come from the record, plus rng noise (so resume must replay rngs)."""

    id: str
    dataset: str
    num_tokens: int
    num_tiles: int


def fake_encode(raw, source, rng) -> FakeSample:
    meta = json.loads(raw.members["json"])["_meta"]
    if "img0.jpg" in raw.members and len(raw.members["img0.jpg"]) < 100:
        raise ValueError("truncated image")
    return FakeSample(raw.key, source.name, meta["num_tokens"] + rng.randrange(8), meta["num_tiles"])


def fake_collate(packs) -> dict:
    return {"samples": [[(s.dataset, s.id, s.num_tokens) for s in p] for p in packs]}


def fake_stream(root: Path, **kw) -> PackedStream:
    kw.setdefault("packing", {"max_packed_tokens": 160, "num_images_expected": 8, "max_buffer_size": 3})
    return PackedStream(load_index(str(root))[1], fake_encode, fake_collate, **kw)


def ids_of(batches) -> list[tuple[str, str]]:
    return [(d, i.split("#")[0]) for b in batches for p in b["samples"] for d, i, _ in p]


def real_stream(
    root: Path, tok, max_packed_tokens: int = 1024, max_buffer_size: int = 3, **kw
) -> PackedStream:
    """The production pipeline (real encoder and collator) at test sizes."""
    cfg = EncodeConfig(image_size=IMAGE_SIZE, tokens_per_tile=TOKENS_PER_TILE, max_dynamic_patch=4)
    packing = {
        "max_packed_tokens": max_packed_tokens,
        "num_images_expected": 8,
        "max_buffer_size": max_buffer_size,
    }
    collate = PackingCollator(tok.pad_token_id, "square", max_packed_tokens, 8, image_size=IMAGE_SIZE)
    return PackedStream(load_index(str(root))[1], ShardEncoder(cfg, tok), collate, packing, **kw)


def assert_same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            if isinstance(x[k], torch.Tensor):
                assert x[k].dtype == y[k].dtype and torch.equal(x[k], y[k]), k
            else:
                assert x[k] == y[k], k


def take(loader, n: int) -> list[dict]:
    return list(itertools.islice(loader, n))
