"""The interface every backend implements; batchers and routes know only this."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
from tritonclient.grpc import model_config_pb2 as pb


class ModelBackend(ABC):
    name: str
    max_inflight: int = 1  # batches one model may have running at once
    # False where another process gathers the model's batches (the engine behind a front): this
    # process's batchers then pass on what is queued at once, with no window, and report no sizes
    batches_here: bool = True

    @abstractmethod
    async def start(self) -> None:
        """Connect or load; called once before serving."""

    @abstractmethod
    async def model_configs(self) -> list[pb.ModelConfig]:
        """The configs of every model the backend serves (the gateway's source of truth)."""

    @abstractmethod
    async def infer(self, model: str, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """Run `model` on a batch; inputs and the single output carry the batch dimension."""

    @abstractmethod
    async def ready(self) -> bool:
        """Whether the backend can serve now."""

    def placement(self) -> tuple[str, str] | None:
        """(device, dtype) where this process runs the models; None where another server decides."""
        return None

    async def close(self) -> None:  # noqa: B027 (optional hook: most backends hold nothing)
        """Release resources."""
