"""Triton backend: the models run on a Triton server, reached with tritonclient's async clients.

Model configs (tensor names and the family metadata in `parameters`) are read from Triton
itself, so the gateway has no second source of truth. Triton being unreachable is reported as
`BackendUnavailable` (503); the client reconnects by itself, so the gateway recovers without a
restart when Triton comes back.

Images are uint8 (the exported image model normalises them). With `shared_memory_slots`, for a
Triton on this host, they do not travel in the request at all: the gateway writes each batch into
a region of /dev/shm it registered with Triton as system shared memory (`PixelSlots`, the same
region kind the fronts use for the engine process) and the request names the offset.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2 as pb
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from focalserve_server.backends.base import ModelBackend
from focalserve_server.errors import BackendUnavailable
from focalserve_server.pixel_slots import PixelSlots

logger = logging.getLogger(__name__)

SHARED_MEMORY_DIR = Path("/dev/shm")  # where POSIX shared memory lives on Linux: Triton opens the region by name


class TritonBackend(ModelBackend):
    name = "triton"

    def __init__(
        self,
        url: str,
        protocol: str = "grpc",
        families: list[str] | None = None,
        timeout_s: float = 30.0,
        startup_timeout_s: float = 120.0,
        max_inflight: int = 4,
        shared_memory_slots: int = 0,
    ) -> None:
        self.max_inflight = max_inflight
        self._shared_memory_slots = shared_memory_slots
        self._pixels: PixelSlots | None = None
        self._url = url
        self._protocol = protocol
        self._families = set(families or [])
        self._timeout_s = timeout_s
        self._startup_timeout_s = startup_timeout_s
        self._client: Any = None
        self._module: Any = None
        self._outputs: dict[str, str] = {}
        self._configs: list[pb.ModelConfig] = []

    async def start(self) -> None:
        """Connect, wait (bounded) for Triton to be ready, and read every model's config."""
        if self._protocol == "grpc":
            import tritonclient.grpc.aio as module
        else:
            import tritonclient.http.aio as module
        self._module = module
        if self._protocol == "grpc":
            self._client = module.InferenceServerClient(self._url)
        else:
            self._client = module.InferenceServerClient(self._url, conn_timeout=self._timeout_s)
        deadline = time.monotonic() + self._startup_timeout_s
        while not await self.ready():
            if time.monotonic() > deadline:
                raise BackendUnavailable(f"Triton at {self._url} not ready after {self._startup_timeout_s:.0f} s")
            await asyncio.sleep(0.5)
        self._configs = await self._read_configs()
        self._outputs = {config.name: config.output[0].name for config in self._configs}
        if self._shared_memory_slots:
            self._pixels = await self._register_pixels()

    async def _register_pixels(self) -> PixelSlots:
        """A region for one image of the largest family per slot, registered with Triton under its name."""
        image_bytes = [int(np.prod(tensor.dims)) for config in self._configs for tensor in config.input
                       if tensor.data_type == pb.TYPE_UINT8]
        name = f"focalserve-pixels-{os.getpid()}-{secrets.token_hex(4)}"
        pixels = PixelSlots(SHARED_MEMORY_DIR / name, max(image_bytes, default=1), self._shared_memory_slots, True)
        try:
            await self._client.register_system_shared_memory(name, f"/{name}", pixels.byte_size)
        except InferenceServerException as error:
            pixels.close()
            raise BackendUnavailable(
                f"Triton at {self._url} could not map the gateway's shared memory ({error.message()}): it must run "
                "on this host and share its /dev/shm; otherwise turn FOCALSERVE_TRITON_SHARED_MEMORY off"
            ) from error
        return pixels

    async def _read_configs(self) -> list[pb.ModelConfig]:
        if self._protocol == "grpc":
            models = (await self._client.get_model_repository_index(as_json=True)).get("models", [])
        else:
            models = await self._client.get_model_repository_index()
        names = [model["name"] for model in models if model.get("state", "READY") == "READY"]
        configs = [await self._model_config(name) for name in names]
        if self._families:
            configs = [c for c in configs if c.parameters["name"].string_value in self._families]
        return configs

    async def _model_config(self, name: str) -> pb.ModelConfig:
        if self._protocol == "grpc":
            return (await self._client.get_model_config(name)).config
        return json_format.ParseDict(await self._client.get_model_config(name), pb.ModelConfig(),
                                     ignore_unknown_fields=True)

    async def model_configs(self) -> list[pb.ModelConfig]:
        return list(self._configs)

    async def infer(self, model: str, inputs: dict[str, np.ndarray]) -> np.ndarray:
        module = self._module
        requests = []
        taken: list[tuple[int, int]] = []
        output = self._outputs[model]
        try:
            for name, array in inputs.items():
                tensor = module.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
                if self._pixels is not None and array.dtype == np.uint8:
                    count = self._pixels.slots_for(array)
                    taken.append((await self._pixels.take(count), count))
                    offset = self._pixels.write(taken[-1][0], array)
                    tensor.set_shared_memory(self._pixels.path.name, array.nbytes, offset)
                else:
                    tensor.set_data_from_numpy(np.ascontiguousarray(array))
                requests.append(tensor)
            result = await self._client.infer(
                model, requests, outputs=[module.InferRequestedOutput(output)], **self._timeout_argument()
            )
        except InferenceServerException as error:
            if _is_unavailable(error):
                raise BackendUnavailable(f"Triton at {self._url} is unavailable: {error.message()}") from error
            raise
        except (TimeoutError, OSError) as error:  # the HTTP client's connection errors
            raise BackendUnavailable(f"Triton at {self._url} is unreachable: {error}") from error
        finally:
            for first, count in taken:  # Triton has read them (or the call is over either way)
                assert self._pixels is not None
                self._pixels.give_back(first, count)
        return result.as_numpy(output)

    def _timeout_argument(self) -> dict[str, float]:
        """gRPC takes a per-call deadline; the HTTP client's timeout was set when it was created."""
        return {"client_timeout": self._timeout_s} if self._protocol == "grpc" else {}

    async def ready(self) -> bool:
        try:
            return bool(await asyncio.wait_for(self._client.is_server_ready(), timeout=2.0))
        except Exception:  # unreachable, refusing, timing out: all mean "not ready"
            return False

    async def close(self) -> None:
        if self._pixels is not None:
            with contextlib.suppress(Exception):  # Triton may be gone: the region goes with this process anyway
                await self._client.unregister_system_shared_memory(self._pixels.path.name)
            self._pixels.close()
        if self._client is not None:
            await self._client.close()


def _is_unavailable(error: InferenceServerException) -> bool:
    status = str(error.status() or "")
    text = str(error.message() or "").lower()
    return any(word in status for word in ("UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED")) or any(
        word in text for word in ("unavailable", "connection refused", "failed to connect", "deadline exceeded")
    )
