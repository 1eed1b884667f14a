"""A real tritonserver (the nvidia-pytriton wheel's CPU binary) on 127.0.0.1 for tests."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import httpx

from server.triton_local import TritonPorts, start_tritonserver
from tests.helpers.server import free_port, wait_until_ready


@dataclass
class LocalTriton:
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
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
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
