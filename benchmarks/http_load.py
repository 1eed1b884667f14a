"""A lean closed-loop HTTP/1.1 load generator in several processes, bounded in requests and time.

Requests are encoded to bytes before the clock starts; each process keeps its share of the
connections busy on raw asyncio streams (no HTTP client library: one that costs more CPU per
request than the server would measure itself), and reports the CPU it used, so a reader sees
whether the generator, rather than the server, was the limit.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import resource
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from urllib.parse import urlsplit

from benchmarks.report import percentiles_ms


def encode_post(path: str, host: str, body: bytes, content_type: str = "application/json",
                headers: dict[str, str] | None = None) -> bytes:
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n{extra}"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


@dataclass
class LoadReport:
    requests: int = 0
    errors: int = 0
    elapsed_s: float = 0.0
    cpu_s: float = 0.0  # the generator's own, all processes
    latencies_s: list[float] = field(default_factory=list)
    first_error: str | None = None

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.elapsed_s if self.elapsed_s else 0.0

    def summary(self) -> dict[str, float | int | str | None]:
        return {"requests": self.requests, "errors": self.errors, "requests_per_s": self.requests_per_s,
                "loadgen_cpu_ms_per_request": 1000 * self.cpu_s / max(self.requests, 1),
                "loadgen_cores_busy": self.cpu_s / self.elapsed_s if self.elapsed_s else 0.0,
                **percentiles_ms(self.latencies_s), "first_error": self.first_error}


def run(url: str, requests: list[bytes], concurrency: int, max_requests: int, max_seconds: float,
        processes: int = 2) -> LoadReport:
    """Drive `concurrency` connections, spread over `processes`, until `max_requests` or `max_seconds`."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    context = multiprocessing.get_context("spawn")
    pipes, workers = [], []
    go = context.Event()  # set once every process has connected: their clocks start together
    for index in range(processes):
        share = concurrency // processes + (1 if index < concurrency % processes else 0)
        if share == 0:
            continue
        receiving, sending = context.Pipe(duplex=True)
        worker = context.Process(target=_worker, args=(sending, host, port, requests, share,
                                                       max_requests // processes, go, max_seconds))
        worker.start()
        pipes.append(receiving)
        workers.append(worker)
    for receiving in pipes:
        receiving.recv()  # connected
    go.set()
    report = LoadReport()
    for receiving, worker in zip(pipes, workers, strict=True):
        part: LoadReport = receiving.recv()
        worker.join(timeout=max_seconds + 30)
        report.requests += part.requests
        report.errors += part.errors
        report.cpu_s += part.cpu_s
        report.elapsed_s = max(report.elapsed_s, part.elapsed_s)
        report.latencies_s += part.latencies_s
        report.first_error = report.first_error or part.first_error
    return report


def _worker(pipe: Connection, host: str, port: int, requests: list[bytes], connections: int, max_requests: int,
            go: Event, max_seconds: float) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    pipe.send(asyncio.run(_drive(pipe, host, port, requests, connections, max_requests, go, max_seconds)))


async def _drive(pipe: Connection, host: str, port: int, requests: list[bytes], connections: int,
                 max_requests: int, go: Event, max_seconds: float) -> LoadReport:
    streams = [await asyncio.open_connection(host, port) for _ in range(connections)]
    report = LoadReport()
    pipe.send("connected")
    go.wait()
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    deadline = started + max_seconds
    sent = 0

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        while sent < max_requests and time.perf_counter() < deadline:
            request = requests[sent % len(requests)]
            sent += 1
            began = time.perf_counter()
            writer.write(request)
            status = await _read_response(reader)
            report.latencies_s.append(time.perf_counter() - began)
            report.requests += 1
            if status != 200:
                report.errors += 1
                report.first_error = report.first_error or f"HTTP {status}"

    await asyncio.gather(*(connection(reader, writer) for reader, writer in streams))
    report.elapsed_s = time.perf_counter() - started
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    report.cpu_s = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    for _, writer in streams:
        writer.close()
    return report


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return status
