"""The raw forward's batch-size sweep is not ended by a model that re-optimises for each new size.

TorchScript on CUDA does that (an H200 run picked batch 1 and so ran the gateway unbatched);
`ReoptimisingModel` is a named stand-in for it, since no GPU runs here.
"""

from __future__ import annotations

import time
from collections import Counter

import torch

from benchmarks.raw import raw_forward
from benchmarks.workload import Workload

COMPILE_S = 0.05  # the stand-in's slow calls: far longer than its steady calls
STEADY_S_PER_CALL = 0.002


class ReoptimisingModel:
    """A family whose first two calls at each batch size are slow; a call's cost hardly grows with the batch."""

    def __init__(self) -> None:
        self.calls_per_size: Counter[int] = Counter()

    def pixels(self, images: object) -> torch.Tensor:
        return torch.zeros(8, 3, 2, 2)

    def conditions(self, instructions: list[str]) -> torch.Tensor:
        return torch.zeros(len(instructions), 4)

    def embed(self, pixels: torch.Tensor, conditions: torch.Tensor) -> torch.Tensor:
        size = len(pixels)
        self.calls_per_size[size] += 1
        time.sleep(COMPILE_S if self.calls_per_size[size] <= 2 else STEADY_S_PER_CALL)
        return torch.zeros(size, 4)


def test_the_sweep_reaches_the_large_batches_of_a_model_that_reoptimises_per_size():
    model = ReoptimisingModel()
    result = raw_forward(model, Workload((b"",), ("",)), seconds_per_size=0.05, max_seconds=30,  # type: ignore[arg-type]
                         batch_sizes=(1, 2, 4, 8))
    assert [row["batch_size"] for row in result["sweep"]] == [1, 2, 4, 8]
    assert result["best_batch_size"] == 8
