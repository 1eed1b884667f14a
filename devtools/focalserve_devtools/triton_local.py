"""Run Triton on a CPU-only machine: the `tritonserver` binary that the nvidia-pytriton wheel ships.

The wheel carries Triton with its python backend. Its files are copied into a backend
directory of our own (never written into site-packages), and the python-backend stub finds the
wheel's bundled libraries through LD_LIBRARY_PATH. GPU hosts use NVIDIA's Triton container
instead (compose.yaml); this is for `make stack` and the tests.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path


class TritonNotInstalled(RuntimeError):
    """The nvidia-pytriton wheel (the `triton` extra) is not installed."""


@dataclass(frozen=True)
class TritonPorts:
    http: int = 8010
    grpc: int = 8001
    metrics: int = 8002


def wheel_root() -> Path:
    try:
        import pytriton
    except ImportError as error:
        raise TritonNotInstalled("install the triton extra: pip install 'focalserve[triton]'") from error
    return Path(pytriton.__file__).resolve().parent


def prepare_backend_dir(target: Path) -> Path:
    """A backend directory holding the python backend and the stub for this Python version."""
    triton = wheel_root() / "tritonserver"
    python_dir = target / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    stub = triton / "python_backend_stubs" / f"{sys.version_info.major}.{sys.version_info.minor}"
    for source in (triton / "backends" / "python" / "libtriton_python.so",
                   triton / "backends" / "python" / "triton_python_backend_utils.py",
                   stub / "triton_python_backend_stub"):
        destination = python_dir / source.name
        if not destination.exists():
            shutil.copy2(source, destination)
    return target


def tritonserver_command(repository: Path, backend_dir: Path, ports: TritonPorts, host: str = "127.0.0.1") -> list[str]:
    binary = wheel_root() / "tritonserver" / "bin" / "tritonserver"
    return [
        str(binary),
        f"--model-repository={repository.resolve()}",
        f"--backend-directory={backend_dir.resolve()}",
        f"--http-address={host}", f"--http-port={ports.http}",
        f"--grpc-address={host}", f"--grpc-port={ports.grpc}",
        f"--metrics-address={host}", f"--metrics-port={ports.metrics}",
        "--allow-metrics=true", "--allow-gpu-metrics=false",
        "--exit-on-error=true", "--strict-readiness=true", "--log-verbose=0",
    ]


def tritonserver_env() -> dict[str, str]:
    """The stub links the wheel's bundled libraries (libcudart among them) and needs this venv's Python.

    The stub also links `libpython3.11.so` by name; without this interpreter's own library
    directory first it can pick up the distribution's older libpython, whose C RLock lacks
    what this interpreter's `multiprocessing` calls (PyTriton's stub fails exactly that way).
    """
    libs = wheel_root().parent / "nvidia_pytriton.libs"
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        filter(None, [python_libdir(), str(libs), env.get("LD_LIBRARY_PATH")])
    )
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def python_libdir() -> str:
    """Where this interpreter's libpython lives ('' for a static build)."""
    return sysconfig.get_config_var("LIBDIR") if sysconfig.get_config_var("Py_ENABLE_SHARED") else ""


def start_tritonserver(repository: Path, work_dir: Path, ports: TritonPorts, log_file: Path) -> subprocess.Popen:
    """In a session of its own: killing its process group also ends the python-backend stubs,
    which a killed tritonserver would otherwise leave running."""
    backend_dir = prepare_backend_dir(work_dir / "backends")
    with open(log_file, "ab") as log:
        return subprocess.Popen(
            tritonserver_command(repository, backend_dir, ports), env=tritonserver_env(), stdout=log, stderr=log,
            start_new_session=True,
        )


def add_triton_command(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser("triton", help="run the CPU tritonserver from the nvidia-pytriton wheel")
    parser.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--work-dir", type=Path, default=Path(".triton"))
    parser.add_argument("--http-port", type=int, default=TritonPorts.http)
    parser.add_argument("--grpc-port", type=int, default=TritonPorts.grpc)
    parser.add_argument("--metrics-port", type=int, default=TritonPorts.metrics)
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> None:
    backend_dir = prepare_backend_dir(args.work_dir / "backends")
    ports = TritonPorts(args.http_port, args.grpc_port, args.metrics_port)
    command = tritonserver_command(args.model_repository, backend_dir, ports)
    os.execve(command[0], command, tritonserver_env())
