"""Embedded backend: the exported TorchScript files run in-process.

Inference runs on one dedicated thread so the event loop stays free and torch's intra-op
thread pool works on one batch at a time instead of several competing for the cores.
"""

from __future__ import annotations

import asyncio
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from tritonclient.grpc import model_config_pb2 as pb

from focalserve_family import read_repository
from focalserve_server.backends.base import ModelBackend
from focalserve_server.errors import BackendUnavailable


class EmbeddedBackend(ModelBackend):
    name = "embedded"

    def __init__(self, repository: Path, families: list[str] | None = None, threads: int = 0) -> None:
        self._repository = repository
        self._families = set(families or [])
        self._threads = threads
        self._configs: list[pb.ModelConfig] = []
        self._modules: dict[str, torch.jit.ScriptModule] = {}
        self._input_names: dict[str, list[str]] = {}
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedded-infer")

    async def start(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._load)

    def _load(self) -> None:
        if self._threads:
            torch.set_num_threads(self._threads)
        for config in read_repository(self._repository):
            family = config.parameters["name"].string_value if "name" in config.parameters else ""
            if self._families and family not in self._families:
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # TorchScript's deprecation notice
                module = torch.jit.load(str(self._repository / config.name / "1" / "model.pt"), map_location="cpu")
            self._modules[config.name] = module.eval()
            self._input_names[config.name] = [tensor.name for tensor in config.input]
            self._configs.append(config)

    async def model_configs(self) -> list[pb.ModelConfig]:
        return list(self._configs)

    async def infer(self, model: str, inputs: dict[str, np.ndarray]) -> np.ndarray:
        if model not in self._modules:
            raise BackendUnavailable(f"model {model} is not loaded")
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._forward, model, inputs)

    def _forward(self, model: str, inputs: dict[str, np.ndarray]) -> np.ndarray:
        arguments = [torch.from_numpy(inputs[name]) for name in self._input_names[model]]
        with torch.inference_mode():
            return self._modules[model](*arguments).numpy()

    async def ready(self) -> bool:
        return bool(self._modules)

    async def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
