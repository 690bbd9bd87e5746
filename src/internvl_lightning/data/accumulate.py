"""Give every micro-batch of an optimizer step the loss-weight sum of the whole step.

With gradient accumulation over k micro-batches, normalising each micro-batch by its own weight
sum gives the mean of k means, not the weighted mean of the step's tokens. Reading the k
micro-batches of a step ahead (they are on the host anyway) lets each carry
`stats["step_weight_sum"]`, and the loss of the step then equals that of one combined batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ..constants import IGNORE_INDEX


def batch_weight_sum(batch: dict[str, Any]) -> float:
    """Sum of the loss weights of trained next-token targets in a collated batch."""
    labels = batch["labels"][:, 1:]
    weights = batch["loss_weight"][:, 1:]
    return float((weights * (labels != IGNORE_INDEX)).sum())


class StepWindow:
    """Iterate `batches` in windows of `steps()` micro-batches, annotating each with the window's sum.

    `steps` is a callable so the accumulation factor can come from the Trainer at iteration time.
    A trailing partial window is annotated with its own (smaller) sum.
    """

    def __init__(self, batches: Iterable[dict[str, Any]], steps: Callable[[], int]) -> None:
        self.batches = batches
        self.steps = steps

    def __iter__(self) -> Iterator[dict[str, Any]]:
        it = iter(self.batches)
        k = max(1, int(self.steps()))
        while True:
            window = []
            for _ in range(k):
                try:
                    window.append(next(it))
                except StopIteration:
                    break
            if not window:
                return
            total = sum(batch_weight_sum(b) for b in window)
            for b in window:
                b.setdefault("stats", {})["step_weight_sum"] = total
                yield b
            if len(window) < k:
                return

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]
