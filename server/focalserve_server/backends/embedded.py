"""Embedded backend: the exported TorchScript files run in-process, on the CPU or a CUDA device.

Inference runs on one dedicated thread so the event loop stays free and torch's intra-op
thread pool works on one batch at a time instead of several competing for the cores.

A reduced dtype runs as mixed precision (`torch.autocast`): matrix products and convolutions in
float16 / bfloat16, normalisations in float32, outputs float32. The weights stay as exported
(float32): the traced graphs fix their dtype casts at export time, so casting the weights
themselves would break them.

The graphs run without TorchScript's optimising executor, on every device (`OPTIMISE_GRAPHS`).
"""

from __future__ import annotations

import asyncio
import contextlib
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from tritonclient.grpc import model_config_pb2 as pb

from focalserve_family import read_repository
from focalserve_server.backends.base import ModelBackend
from focalserve_server.errors import BackendUnavailable

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


# TorchScript's optimising executor buys nothing here and costs a lot. On CUDA it specialises a
# graph again for each new input shape, and a dynamic batcher forms every batch size up to its
# maximum: on an H200 (benchmarks/RESULTS.md, GPU) the first three sizes' second calls took
# 1.2-2.7 s and each later new size's first call 55-130 ms; unoptimised, every call took what its
# steady calls did, and those were no slower (ViT-B-32 at batch 64: 9.5 against 10.8 ms). On the
# CPU (2 cores, the demo family, 2026-12-06) its first two calls of a MiniLM tower took 205 ms
# against 25 unoptimised, a gateway's start paid that for every model, and its steady calls were
# no faster (batch 64: 146-160 ms against 131-138).
OPTIMISE_GRAPHS = False


@contextlib.contextmanager
def running_exported(device: torch.device, dtype: torch.dtype, optimise: bool = OPTIMISE_GRAPHS) -> Iterator[None]:
    """How the exported graphs run: no autograd, the executor `optimise` says (a benchmark compares
    both), and a reduced dtype as mixed precision. The raw-forward benchmark runs them the same way."""
    with (torch.inference_mode(), torch.jit.optimized_execution(optimise),
          torch.autocast(device.type, dtype, enabled=dtype != torch.float32)):
        yield


class ExportedModels:
    """The exported TorchScript graphs of a repository (all families, or the named ones), loaded on
    one device and called synchronously: the embedded backend runs them on its inference thread, a
    bulk ingest's actors (`focalserve_ingest`) run them directly."""

    def __init__(
        self, repository: Path, families: list[str] | None = None, threads: int = 0, device: str = "cpu",
        dtype: str = "float32",
    ) -> None:
        self._repository = repository
        self._families = set(families or [])
        self._threads = threads
        self.device = torch.device(device)
        self.dtype = dtype
        self._torch_dtype = DTYPES[dtype]
        self.configs: list[pb.ModelConfig] = []
        self._modules: dict[str, torch.jit.ScriptModule] = {}
        self._input_names: dict[str, list[str]] = {}

    def load(self) -> None:
        check_device(self.device)
        if self._threads:
            torch.set_num_threads(self._threads)
        for config in read_repository(self._repository):
            family = config.parameters["name"].string_value if "name" in config.parameters else ""
            if self._families and family not in self._families:
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # TorchScript's deprecation notice
                module = torch.jit.load(str(self._repository / config.name / "1" / "model.pt"),
                                        map_location=self.device)
            self._modules[config.name] = module.eval()
            self._input_names[config.name] = [tensor.name for tensor in config.input]
            self.configs.append(config)

    def __contains__(self, model: str) -> bool:
        return model in self._modules

    def forward(self, model: str, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """One batch through one model: inputs and the float32 output carry the batch dimension."""
        arguments = [self._to_device(inputs[name]) for name in self._input_names[model]]
        with running_exported(self.device, self._torch_dtype):
            return self._modules[model](*arguments).float().cpu().numpy()

    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        """On a GPU, through pinned memory, so the copy is asynchronous."""
        tensor = torch.from_numpy(array)
        if self.device.type != "cuda":
            return tensor
        return tensor.pin_memory().to(self.device, non_blocking=True)


class EmbeddedBackend(ModelBackend):
    name = "embedded"

    def __init__(
        self, repository: Path, families: list[str] | None = None, threads: int = 0, device: str = "cpu",
        dtype: str = "float32",
    ) -> None:
        self._models = ExportedModels(repository, families, threads, device, dtype)
        self.device = self._models.device
        self.dtype = dtype
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedded-infer")

    async def start(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._models.load)

    async def model_configs(self) -> list[pb.ModelConfig]:
        return list(self._models.configs)

    async def infer(self, model: str, inputs: dict[str, np.ndarray]) -> np.ndarray:
        if model not in self._models:
            raise BackendUnavailable(f"model {model} is not loaded")
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._models.forward, model, inputs)

    def placement(self) -> tuple[str, str]:
        return str(self.device), self.dtype

    async def ready(self) -> bool:
        return bool(self._models.configs)

    async def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def check_device(device: torch.device, setting: str = "FOCALSERVE_DEVICE") -> None:
    """Refuse, at start and in words, a CUDA device this machine does not have."""
    if device.type != "cuda":
        return
    if not torch.cuda.is_available():
        raise RuntimeError(f"{setting}={device}, but torch sees no CUDA device on this machine "
                           f"(driver, CUDA_VISIBLE_DEVICES, or a CPU-only torch build); use {setting}=cpu")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise RuntimeError(f"{setting}={device}, but only {torch.cuda.device_count()} CUDA device(s) are visible")
