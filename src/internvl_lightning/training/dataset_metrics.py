"""Loss and trained tokens per dataset of a mixture, from the per-token CE the loss computed anyway.

A batch names the dataset of each packed sample (``batch["datasets"][k]`` for ``sample_index ==
k``); position t of the shifted grid predicts token t+1, which belongs to ``sample_index[:, t+1]``.
The module logs ``train/loss/<dataset>`` (token-mean CE of that dataset's trained tokens in this
micro-batch, this rank) and ``train/tokens/<dataset>`` at Lightning's logging cadence.
"""

from __future__ import annotations

import torch


def per_dataset(
    ce: torch.Tensor, positions: torch.Tensor, sample_index: torch.Tensor, datasets: list[str]
) -> dict[str, tuple[float, int]]:
    """{dataset: (token-mean CE, trained tokens)} of one batch; ce / positions (n,) from the loss."""
    if not datasets or ce.numel() == 0:
        return {}
    sample = sample_index[:, 1:].reshape(-1).index_select(0, positions)  # (n,) packed sample per token
    k = len(datasets)
    sums = torch.bincount(sample, weights=ce.float(), minlength=k)[:k]
    counts = torch.bincount(sample, minlength=k)[:k]
    out: dict[str, tuple[float, int]] = {}
    for name in dict.fromkeys(datasets):
        mask = torch.tensor([d == name for d in datasets], device=sums.device)
        n = int(counts[mask].sum())
        if n:
            out[name] = (float(sums[mask].sum()) / n, n)
    return out
