"""The loss on 2 CPU processes (gloo) under DDP and DeepSpeed ZeRO-2 equals one process, with each
kernel (ours; Liger-Kernel's, under Triton's interpreter here: tests/conftest.py).

A small model (a body producing hidden states + an output layer with bias) trains 3 SGD steps.
Each rank takes half of every step's batch and divides its weighted CE sum by the all-reduced
weight sum over the world size (the module's ``loss_reduction_all_gather``); the strategy averages
gradients. One process on the combined batch must give the same per-step losses (the ranks'
mean) and the same final weights.
"""

from __future__ import annotations

import os

import pytest
import torch

from internvl_lightning.data.collate import len2weight
from internvl_lightning.training.loss import weighted_loss
from tests.helpers.launch import free_port

WORLD, STEPS, ROWS, L, IN, D, V = 2, 3, 4, 24, 8, 16, 64
SEGMENTS = [(0, 7), (7, 16), (16, 24)]
LR, CHUNK = 0.5, 10
# The ranks sum in another order than one process. Measured after 3 steps (DDP and ZeRO-2 alike):
# losses (~4.18) differ by 4.8e-7, one fp32 ulp there; weights by 3e-8. Allowed: 4 ulps of the
# loss, 1e-6 on weights; a wrong denominator or a gradient counted twice moves them by > 1e-2.
LOSS_ULPS, WEIGHT_ATOL = 4, 1e-6


class TinyLM(torch.nn.Module):
    """A body producing hidden states and an output layer; its forward is the chunked loss."""

    def __init__(self, kernel: str = "chunked") -> None:
        super().__init__()
        self.kernel = kernel
        torch.manual_seed(0)
        self.body = torch.nn.Sequential(torch.nn.Linear(IN, D), torch.nn.Tanh())
        self.lm_head = torch.nn.Linear(D, V)

    def forward(self, x, labels, loss_weight, denom):
        return weighted_loss(self.body(x), self.lm_head, labels, loss_weight, denom, CHUNK, self.kernel)[0]


def _step_batch(step: int) -> dict[str, torch.Tensor]:
    """The combined batch of one step: ROWS rows of packed samples with square weights."""
    g = torch.Generator().manual_seed(100 + step)
    labels = torch.randint(0, V, (ROWS, L), generator=g)
    labels[torch.rand(ROWS, L, generator=g) < 0.25] = -100
    weights = torch.zeros(ROWS, L)
    for r in range(ROWS):
        for a, e in SEGMENTS:
            trained = labels[r, a:e] != -100
            weights[r, a:e] = trained.float() * len2weight(int(trained.sum()), "square")
    return {"x": torch.randn(ROWS, L, IN, generator=g), "labels": labels, "loss_weight": weights}


def _local_weight_sum(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return (batch["loss_weight"][:, 1:] * (batch["labels"][:, 1:] != -100)).sum()


def _single_process(kernel: str) -> tuple[list[float], dict[str, torch.Tensor]]:
    model = TinyLM(kernel)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    losses = []
    for step in range(STEPS):
        batch = _step_batch(step)
        loss = model(**batch, denom=_local_weight_sum(batch))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses, {k: v.detach().clone() for k, v in model.state_dict().items()}


def _rank(rank: int, strategy: str, kernel: str, port: int, out: str) -> None:
    """One of WORLD processes: train STEPS steps on this rank's half of each batch."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD),
    )
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        model = TinyLM(kernel)
        opt = torch.optim.SGD(model.parameters(), lr=LR)
        if strategy == "ddp":
            engine = torch.nn.parallel.DistributedDataParallel(model)
        else:
            import deepspeed

            config = {
                "train_micro_batch_size_per_gpu": 1,
                "gradient_accumulation_steps": 1,
                "zero_optimization": {"stage": 2},
                "zero_allow_untested_optimizer": True,
            }
            engine, opt, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=config)
        losses = []
        for step in range(STEPS):
            half = ROWS // WORLD
            batch = {k: v[rank * half : (rank + 1) * half] for k, v in _step_batch(step).items()}
            denom = _local_weight_sum(batch)
            dist.all_reduce(denom)
            loss = engine(**batch, denom=denom / WORLD)
            if strategy == "ddp":
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            else:
                engine.backward(loss)
                engine.step()
            mean = loss.detach().clone()
            dist.all_reduce(mean)
            losses.append(mean.item() / WORLD)
        state = {k: v.detach().clone() for k, v in engine.module.state_dict().items()}
        torch.save({"losses": losses, "state": state}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("kernel", ["chunked", "liger"])
@pytest.mark.parametrize("strategy", ["ddp", "zero2"])
def test_two_processes_equal_one_on_the_combined_batch(strategy, kernel, tmp_path):
    if kernel == "liger":
        pytest.importorskip("liger_kernel", reason="liger-kernel is not installed (pip install '.[liger]')")
    os.environ.setdefault("DS_ACCELERATOR", "cpu")  # read by the spawned ranks' deepspeed import
    torch.multiprocessing.spawn(_rank, args=(strategy, kernel, free_port(), str(tmp_path)), nprocs=WORLD)
    losses, state = _single_process(kernel)
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        ulp = torch.finfo(torch.float32).eps * max(abs(v) for v in losses)
        worst = max(abs(a - b) for a, b in zip(got["losses"], losses))
        assert worst <= LOSS_ULPS * ulp, (rank, got["losses"], losses)
        assert got["state"].keys() == state.keys()
        for k, v in state.items():
            assert float((got["state"][k] - v).abs().max()) <= WEIGHT_ATOL, (rank, k)
        moved = max(float((v - TinyLM().state_dict()[k]).abs().max()) for k, v in state.items())
        assert moved > 1e-2  # the steps did train
