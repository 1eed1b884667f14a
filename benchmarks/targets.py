"""Starting and stopping each system under test, on 127.0.0.1, with its log under benchmarks/.work/.

Each system is an async context manager yielding a `Target`: how to send one request of a
workload, and, for the gateway, its URL and HTTP client (for /metrics and the other request
forms). Every process is stopped on the way out, whatever happened inside.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import tritonclient.grpc.aio as triton_grpc

from benchmarks import infinity_peer
from benchmarks.clients import REQUEST_TIMEOUT_S, embed_json, infinity_images, triton_infer
from benchmarks.families import BenchFamily
from benchmarks.loadgen import Send
from benchmarks.workload import Workload
from focalserve_devtools.launch import LocalTriton, free_port, running_gateway, wait_until_ready
from focalserve_devtools.triton_local import TritonPorts, tritonserver_env

STOP_TIMEOUT_S = 30.0
DEFAULT_MAX_BATCH_SIZE = 64  # the gateway's own default; used when no raw sweep chose a size


@dataclass(frozen=True)
class HttpServer:
    url: str
    session: aiohttp.ClientSession


@dataclass(frozen=True)
class Target:
    system: str
    send_for: Callable[[Workload], Send]
    gateway: HttpServer | None = None  # the gateway only: its /metrics and its other request forms


# (family, log dir, largest batch: the raw forward's best batch size, as an operator would tune it,
#  FOCALSERVE_* placement settings for gateways: device, dtype, preprocess_device)
System = Callable[[BenchFamily, Path, int, dict[str, str]], contextlib.AbstractAsyncContextManager[Target]]


@asynccontextmanager
async def gateway_embedded(
    family: BenchFamily, logs: Path, max_batch_size: int, placement: dict[str, str]
) -> AsyncIterator[Target]:
    """(b) the gateway with its embedded backend (TorchScript in-process), placed as `placement` says."""
    settings = {**_gateway_settings(family, logs, max_batch_size), **placement}
    with running_gateway(family.libtorch_repository, logs / "gateway-embedded.log", **settings) as url:
        async with _gateway_target("gateway-embedded", url, family.name) as target:
            yield target


@asynccontextmanager
async def gateway_triton(
    family: BenchFamily, logs: Path, max_batch_size: int, placement: dict[str, str]
) -> AsyncIterator[Target]:
    """(c) the gateway on its Triton backend, in front of tritonserver running the python-backend export
    (on the CPU: the python backend's device is the export's; `preprocess_device` applies)."""
    triton = LocalTriton.on_free_ports(family.python_repository, logs / "triton")
    triton.work_dir.mkdir(parents=True, exist_ok=True)
    try:
        triton.start()
        settings = {**_gateway_settings(family, logs, max_batch_size), "backend": "triton",
                    "triton_url": triton.grpc_url, "preprocess_device": placement.get("preprocess_device", "pil")}
        with running_gateway(family.python_repository, logs / "gateway-triton.log", **settings) as url:
            async with _gateway_target("gateway-triton", url, family.name) as target:
                yield target
    finally:
        triton.stop()


@asynccontextmanager
async def pytriton(family: BenchFamily, logs: Path, max_batch_size: int, _: dict[str, str]) -> AsyncIterator[Target]:
    """(d) PyTriton with its dynamic batcher, reached with tritonclient over gRPC (CPU)."""
    ports = TritonPorts(free_port(), free_port(), free_port())
    workspace = logs / "pytriton-workspace"
    shutil.rmtree(workspace, ignore_errors=True)  # a killed earlier run may have left it; PyTriton wants it new
    command = [
        sys.executable, "-m", "benchmarks.pytriton_server", "--repository", str(family.libtorch_repository),
        "--family", family.name, "--http-port", str(ports.http), "--grpc-port", str(ports.grpc),
        "--metrics-port", str(ports.metrics), "--workspace", str(workspace), "--max-batch-size", str(max_batch_size),
    ]
    probe = f"http://127.0.0.1:{ports.http}/v2/models/{family.name}/ready"
    with server_process(command, probe, logs / "pytriton.log", "PyTriton", env=tritonserver_env()):
        client = triton_grpc.InferenceServerClient(f"127.0.0.1:{ports.grpc}")
        try:
            yield Target("pytriton", lambda workload: triton_infer(client, family.name, workload))
        finally:
            await client.close()


@asynccontextmanager
async def naive(family: BenchFamily, logs: Path, max_batch_size: int, _: dict[str, str]) -> AsyncIterator[Target]:
    """(e) a plain FastAPI + open_clip server under uvicorn: no batching, no cache (`max_batch_size` unused; CPU)."""
    port = free_port()
    command = [
        sys.executable, "-m", "benchmarks.naive_server", "--repository", str(family.libtorch_repository),
        "--family", family.name, "--port", str(port),
    ]
    url = f"http://127.0.0.1:{port}"
    with server_process(command, f"{url}/healthz", logs / "naive.log", "naive server"):
        async with http_session() as session:
            yield Target("naive", lambda workload: embed_json(session, url, family.name, workload))


@asynccontextmanager
async def infinity(family: BenchFamily, logs: Path, max_batch_size: int, _: dict[str, str]) -> AsyncIterator[Target]:
    """(f) infinity-emb serving a transformers CLIP of the family's image geometry (random weights), in its own
    virtual environment, batches up to `max_batch_size` (CPU)."""
    model_dir = infinity_peer.prepare_model(family)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = infinity_peer.server_command(model_dir, family.name, port, max_batch_size)
    env = infinity_peer.server_env()
    with server_process(command, f"{url}/health", logs / "infinity.log", "infinity-emb", env=env):
        async with http_session() as session:
            yield Target("infinity", lambda workload: infinity_images(session, url, family.name, workload))


@asynccontextmanager
async def remote_gateway(url: str, family: str) -> AsyncIterator[Target]:
    """A gateway that is already running (say `docker compose up` on a GPU host): measured, never started."""
    async with _gateway_target("gateway-remote", url, family) as target:
        yield target


SYSTEMS: dict[str, System] = {
    "gateway-embedded": gateway_embedded,
    "gateway-triton": gateway_triton,
    "pytriton": pytriton,
    "naive": naive,
    "infinity": infinity,
}


def _gateway_settings(family: BenchFamily, logs: Path, max_batch_size: int) -> dict[str, str]:
    """One family only, batches no larger than given, and a data directory of the benchmark's own."""
    return {"families": json.dumps([family.name]), "data_dir": str(logs / "gateway-data"),
            "max_batch_size": str(max_batch_size)}


@asynccontextmanager
async def _gateway_target(system: str, url: str, family: str) -> AsyncIterator[Target]:
    async with http_session() as session:
        yield Target(system, lambda workload: embed_json(session, url, family, workload), HttpServer(url, session))


def http_session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S), connector=aiohttp.TCPConnector(limit=256)
    )


@contextlib.contextmanager
def server_process(
    command: list[str], probe_url: str, log_file: Path, what: str, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen]:
    """Run `command` in a session of its own until `probe_url` answers; always stop it and its children.

    SIGINT lets PyTriton stop its tritonserver and proxy processes itself; the session lets
    us kill whatever is left of exactly this process group if it does not.
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=log, start_new_session=True)
    try:
        wait_until_ready(probe_url, process, timeout_s=180, what=f"{what} (log: {log_file})", interval_s=0.5)
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
