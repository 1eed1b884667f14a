"""Start the gateway and tritonserver as real processes on 127.0.0.1 and wait until they answer.

Tests, benchmarks and the demo-collection loader all start servers the same way, so the
readiness logic lives here once.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from focalserve_devtools.triton_local import TritonPorts, start_tritonserver


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_ready(
    probe_url: str, process: subprocess.Popen, timeout_s: float = 90, what: str = "server", interval_s: float = 0.2
) -> None:
    """Poll `probe_url` until it answers 200; fail at once if `process` exits meanwhile."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        try:
            if httpx.get(probe_url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(interval_s)
    raise TimeoutError(f"{what} not ready after {timeout_s} s ({probe_url})")


@contextmanager
def running_gateway(repository: Path, log_file: Path, **settings: str) -> Iterator[str]:
    """Start the gateway with FOCALSERVE_* settings; yields its base URL; always stops it."""
    with gateway_process(repository, log_file, **settings) as (url, _):
        yield url


@contextmanager
def gateway_process(repository: Path, log_file: Path, **settings: str) -> Iterator[tuple[str, subprocess.Popen]]:
    """As `running_gateway`, also yielding the process (to signal or kill it)."""
    with gateway_processes(repository, [(log_file, settings)]) as [started]:
        yield started


@contextmanager
def gateway_processes(
    repository: Path, configs: list[tuple[Path, dict[str, str]]], ready_timeout_s: float = 90
) -> Iterator[list[tuple[str, subprocess.Popen]]]:
    """Several gateways, each with its log file and FOCALSERVE_* settings, started together (their
    start-up is mostly imports and model loading, which overlap) and always stopped. Large models
    on a CPU take minutes to load and warm up: `ready_timeout_s` bounds the wait."""
    started: list[tuple[str, subprocess.Popen]] = []
    try:
        for log_file, settings in configs:
            started.append(_start_gateway(repository, log_file, settings))
        for url, process in started:
            wait_until_ready(f"{url}/readyz", process, ready_timeout_s, what="gateway")
        yield started
    finally:
        for _, process in started:
            process.terminate()
        for _, process in started:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _start_gateway(repository: Path, log_file: Path, settings: dict[str, str]) -> tuple[str, subprocess.Popen]:
    """The gateway serves on a socket bound here and handed over, never on a port picked and freed:
    between the two another process (a parallel test lane's gateway) could take it, and readiness
    would then be answered by the wrong server."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1024)
        listener.set_inheritable(True)
        port = listener.getsockname()[1]
        env = {**os.environ, "FOCALSERVE_MODEL_REPOSITORY": str(repository),
               "FOCALSERVE_LISTEN_FD": str(listener.fileno())}
        env.update({f"FOCALSERVE_{key.upper()}": value for key, value in settings.items()})
        with open(log_file, "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "focalserve_server", "serve", "--log-level", "warning"],
                env=env, stdout=log, stderr=log, pass_fds=(listener.fileno(),),
            )
    return f"http://127.0.0.1:{port}", process


@dataclass
class LocalTriton:
    """A tritonserver (the nvidia-pytriton wheel's CPU binary) serving `repository`."""

    repository: Path
    work_dir: Path
    ports: TritonPorts
    process: subprocess.Popen | None = None

    @classmethod
    def on_free_ports(cls, repository: Path, work_dir: Path) -> LocalTriton:
        return cls(repository, work_dir, TritonPorts(free_port(), free_port(), free_port()))

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.ports.grpc}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.http}"

    def start(self, timeout_s: float = 180) -> None:
        self.process = start_tritonserver(self.repository, self.work_dir, self.ports, self.work_dir / "triton.log")
        wait_until_ready(f"{self.http_url}/v2/health/ready", self.process, timeout_s,
                         what=f"tritonserver (log: {self.work_dir}/triton.log)", interval_s=0.5)

    def kill(self) -> None:
        """SIGKILL to the whole process group: tritonserver and its python-backend stubs."""
        if self.process is not None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def statistics(self, model: str) -> dict:
        stats = httpx.get(f"{self.http_url}/v2/models/{model}/stats", timeout=10).json()
        return stats["model_stats"][0]
