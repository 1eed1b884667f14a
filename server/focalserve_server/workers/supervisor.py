"""`focalserve serve --workers N`: one engine process and N front processes on one port, kept alive.

The supervisor binds the port (or takes an inherited socket), starts the engine and the fronts,
and restarts any that dies, SIGKILL included, until it is told to stop. SIGTERM or SIGINT drains
in order: the fronts first (uvicorn finishes their requests in flight, which still need the
engine), then the engine. A process that dies before the engine ever served is a start-up
failure (a bad repository, a port in use): everything stops and the command exits 1.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import time
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType

from prometheus_client import multiprocess

from focalserve_server.config import Settings
from focalserve_server.sockets import listening_socket
from focalserve_server.workers.wire import Runtime

logger = logging.getLogger(__name__)

DRAIN_MARGIN_S = 5.0  # beyond the request deadline, before a process that will not stop is killed


def serve_workers(settings: Settings, log_level: str) -> None:
    chosen = settings.runtime_dir
    directory = chosen or Path(tempfile.mkdtemp(prefix="focalserve-", dir="/dev/shm" if Path("/dev/shm").is_dir()
                                                else None))
    runtime = Runtime(directory)
    if runtime.metrics.exists():
        shutil.rmtree(runtime.metrics)  # counts of an earlier run must not add to this one's
    runtime.metrics.mkdir(parents=True)
    for stale in (runtime.engine_socket, runtime.http_socket):  # the engine's socket appearing means it serves
        stale.unlink(missing_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(runtime.metrics)  # read by every child as it starts
    try:
        code = Supervisor(settings, runtime, listening_socket(settings), log_level).run()
    finally:
        if chosen is None:
            shutil.rmtree(directory, ignore_errors=True)
    if code:
        raise SystemExit(code)


class Supervisor:
    def __init__(self, settings: Settings, runtime: Runtime, listener: socket.socket, log_level: str) -> None:
        self._settings = settings
        self._runtime = runtime
        self._listener = listener
        self._log_level = log_level
        self._context = multiprocessing.get_context("spawn")
        self._processes: dict[str, BaseProcess] = {}
        self._stopping = False

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._stop)
        self._start("engine")
        for index in range(self._settings.workers):
            self._start(f"front-{index}")
        engine_served = False
        while not self._stopping:
            wait([process.sentinel for process in self._processes.values()], timeout=0.2)
            engine_served = engine_served or self._runtime.engine_socket.exists()
            for role, process in list(self._processes.items()):
                if process.is_alive() or self._stopping:
                    continue
                self._buried(process)
                if not engine_served:
                    logger.error("%s exited with %s before the gateway served; stopping", role, process.exitcode)
                    self._drain()
                    return 1
                logger.warning("%s (pid %s) exited with %s; restarting it", role, process.pid, process.exitcode)
                self._start(role)
        self._drain()
        return 0

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        self._stopping = True

    def _start(self, role: str) -> None:
        from focalserve_server.workers import processes  # the child's entry points, imported there

        target, arguments = ((processes.run_engine, (self._settings, self._runtime, self._log_level))
                             if role == "engine" else
                             (processes.run_front, (self._settings, self._runtime, self._listener, role,
                                                    self._log_level)))
        process = self._context.Process(target=target, args=arguments, name=f"focalserve-{role}", daemon=False)
        process.start()
        self._processes[role] = process

    def _drain(self) -> None:
        """Fronts first, then the engine their requests in flight still need."""
        fronts = [process for role, process in self._processes.items() if role != "engine"]
        self._terminate(fronts)
        if "engine" in self._processes:
            self._terminate([self._processes["engine"]])
        self._listener.close()

    def _terminate(self, processes: list[BaseProcess]) -> None:
        for process in processes:
            if process.is_alive():
                process.terminate()
        deadline = time.monotonic() + self._settings.request_timeout_s + DRAIN_MARGIN_S
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                logger.error("%s did not stop in time; killing it", process.name)
                process.kill()
                process.join()
            self._buried(process)

    def _buried(self, process: BaseProcess) -> None:
        """What a dead process leaves: its live gauges and its pixel region."""
        assert process.pid is not None
        multiprocess.mark_process_dead(process.pid)
        self._runtime.pixels(process.pid).unlink(missing_ok=True)
