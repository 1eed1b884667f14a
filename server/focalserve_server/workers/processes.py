"""The entry points of the processes `--workers N` starts (spawned: each imports what its role needs)."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket

from focalserve_server.config import Settings
from focalserve_server.workers.wire import Runtime

_PR_SET_PDEATHSIG = 1


def run_engine(settings: Settings, runtime: Runtime, log_level: str) -> None:
    """The models, their batchers and the collections; model calls on one socket, HTTP on another."""
    import uvicorn

    from focalserve_server.app import create_app

    _begin("engine", runtime, log_level)
    if settings.device == "cpu" and settings.torch_threads == 0:
        settings = settings.model_copy(update={"torch_threads": engine_threads(settings.workers, available_cores())})
    runtime.http_socket.unlink(missing_ok=True)
    app = create_app(settings, engine_socket=runtime.engine_socket)
    uvicorn.Server(uvicorn.Config(app, uds=str(runtime.http_socket), log_level=log_level, access_log=False,
                                  timeout_graceful_shutdown=int(settings.request_timeout_s))).run()


def run_front(settings: Settings, runtime: Runtime, listener: socket.socket, role: str, log_level: str) -> None:
    """HTTP on the shared port."""
    import uvicorn

    from focalserve_server.workers.front import create_front_app

    _begin(role, runtime, log_level)
    app = create_front_app(settings, runtime, os.getpid())
    uvicorn.Server(uvicorn.Config(app, log_level=log_level,
                                  timeout_graceful_shutdown=int(settings.request_timeout_s))).run(sockets=[listener])


def engine_threads(workers: int, cores: int) -> int:
    """Intra-op threads for a model on the CPU: torch's default (0) in one process; behind fronts the
    cores they leave, at least one. torch's threads spin while they wait for work, so on a small
    machine a pool sized to every core takes the fronts' CPU (2 cores, 2 fronts: 663 requests/s at
    torch's default against 748 with one thread; benchmarks/RESULTS.md, *Fronts and the engine*)."""
    return 0 if workers == 1 else max(1, cores - workers)


def available_cores() -> int:
    return len(os.sched_getaffinity(0))


def _begin(role: str, runtime: Runtime, log_level: str) -> None:
    _die_with_parent()
    logging.basicConfig(level=log_level.upper(), format=f"%(asctime)s %(levelname)s {role} %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per forwarded request says nothing new
    runtime.pid_file(role).write_text(f"{os.getpid()}\n")


def _die_with_parent() -> None:
    """Linux: SIGTERM this process when the supervisor dies, so no orphan keeps the port or the GPU."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the supervisor's own drain is all there is
        pass
