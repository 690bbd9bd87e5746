"""Several processes (gloo, CPU): evaluation on 2 ranks equals 1 rank; the data state is gathered from every rank."""

from __future__ import annotations

import itertools
import json
import socket

import torch

from internvl_lightning.data.datamodule import InternVLDataModule, PackingConfig
from internvl_lightning.evaluation import evaluate
from tests.helpers.streams import IMAGE_SIZE, TOKENS_PER_TILE, assert_same

TOKENS = 4  # new tokens per answer
SMALL = {"image_size": IMAGE_SIZE, "tokens_per_tile": TOKENS_PER_TILE, "max_dynamic_patch": 4}
PACKING = PackingConfig(max_packed_tokens=1024, num_images_expected=8, max_buffer_size=1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _eval_rank(rank: int, port: int, tiny_vlm_dir: str, data: str, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)  # two processes on a small CPU: no oversubscription
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        result = evaluate(
            tiny_vlm_dir, "mmbench", data, batch_size=2, max_new_tokens=TOKENS, circular=True, out_dir=out
        )
        with open(f"{out}/rank{rank}.json", "w") as f:
            f.write(result.to_json())
    finally:
        dist.destroy_process_group()


def test_two_ranks_equal_one(tiny_vlm_dir, bench_files, tmp_path):
    data = str(bench_files["mmbench"])
    torch.multiprocessing.spawn(
        _eval_rank, args=(_free_port(), str(tiny_vlm_dir), data, str(tmp_path)), nprocs=2
    )
    one = evaluate(tiny_vlm_dir, "mmbench", data, batch_size=2, max_new_tokens=TOKENS, circular=True)
    for rank in range(2):
        two = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert [p["prediction"] for p in two["predictions"]] == [p["prediction"] for p in one.predictions]
        assert [p["id"] for p in two["predictions"]] == [p["id"] for p in one.predictions]
        assert two["score"] == one.score and two["per_category"] == one.per_category
    assert (tmp_path / "mmbench_mmbench_dev_en.json").is_file()  # written once, by rank 0


def _data_rank(rank: int, store_path: str, shards: str, llm: str, out: str) -> None:
    """One of 2 gloo processes: 2 batches, gather the state (collective), then 2 more batches."""
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.FileStore(store_path, 2), rank=rank, world_size=2)
    try:
        dm = InternVLDataModule(shards=shards, tokenizer=llm, packing=PACKING, num_workers=0, seed=5, **SMALL)
        it = iter(dm.train_dataloader())
        for _ in range(2):
            next(it)
        state = dm.state_dict()
        nxt = [next(it) for _ in range(2)]
        torch.save({"state": state, "next": nxt}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_state_is_gathered_from_every_rank(shard_dir, llm_dir, tmp_path):
    torch.multiprocessing.spawn(
        _data_rank, args=(str(tmp_path / "store"), str(shard_dir), str(llm_dir), str(tmp_path)), nprocs=2
    )
    saved = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    state = saved[0]["state"]
    assert saved[1]["state"] == state and [s["rank"] for s in state["train"]] == [0, 1]
    for rank in range(2):  # each rank resumes from its own entry of the one saved state
        dm = InternVLDataModule(
            shards=str(shard_dir), tokenizer=str(llm_dir), packing=PACKING, num_workers=0, seed=5, **SMALL
        )
        dm.load_state_dict(state)
        dm._layout = lambda rank=rank: (rank, 2)
        assert_same(list(itertools.islice(dm.train_dataloader(), 2)), saved[rank]["next"])
