"""How fast FocalServe's processes start: the gateway until /readyz answers 200 on the demo
repository with the demo collection loaded, and the commands that run no model.

    .venv/bin/python -m benchmarks.startup [--repository model_repository] [--repeats 5] [--baseline REF]

Every start pays this: a pod scaling out, a gateway restarted after a fault, each test that
starts a process. The demo collection is loaded once through the API into a temporary data dir,
then every start reads it from there (SQLite, FAISS snapshots) as `make serve` does. With
`--baseline REF` the same starts run side by side, alternating, from a git worktree of REF (its
packages put first on the path), on the same repository and data: a before/after in one run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from benchmarks.report import command_of, machine, markdown_table
from focalserve_devtools.launch import free_port

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DIRS = ("server", "training", "family", "devtools", "client")
READY_TIMEOUT_S = 120.0
POLL_S = 0.01
# Commands a user runs without a model: each must start in under a second.
COMMANDS = {
    "focalserve --help": ["--help"],
    "focalserve serve --help": ["serve", "--help"],
    "focalserve index add --help": ["index", "add", "--help"],
    "focalserve export --help": ["export", "--help"],
}


def code_env(source: Path | None) -> dict[str, str]:
    """The environment that runs the code at `source` (a worktree), or this checkout's."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("FOCALSERVE_")}
    if source is not None:
        env["PYTHONPATH"] = os.pathsep.join(str(source / package) for package in PACKAGE_DIRS)
    return env


def gateway_ready_s(env: dict[str, str], repository: Path, data_dir: Path) -> float:
    """Seconds from spawning `focalserve serve` to its first 200 from /readyz."""
    port = free_port()
    settings = {"FOCALSERVE_MODEL_REPOSITORY": str(repository), "FOCALSERVE_DATA_DIR": str(data_dir),
                "FOCALSERVE_HOST": "127.0.0.1", "FOCALSERVE_PORT": str(port)}
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "focalserve_server", "serve", "--log-level", "warning"],
                               env={**env, **settings}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with httpx.Client(timeout=1.0) as client:
            while time.perf_counter() - started < READY_TIMEOUT_S:
                if process.poll() is not None:
                    raise RuntimeError(f"the gateway exited with {process.returncode} before it was ready")
                with contextlib.suppress(httpx.TransportError):
                    if client.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                        return time.perf_counter() - started
                time.sleep(POLL_S)
        raise TimeoutError(f"the gateway was not ready in {READY_TIMEOUT_S} s")
    finally:
        process.terminate()  # SIGTERM: it writes its snapshots, as every restart would find them
        process.wait(timeout=30)


def command_s(env: dict[str, str], arguments: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "focalserve_server", *arguments], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


@contextlib.contextmanager
def worktree(ref: str) -> Iterator[Path]:
    """A detached checkout of `ref`, removed afterwards."""
    directory = Path(tempfile.mkdtemp(prefix="focalserve-baseline-"))
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(directory / "tree"), ref],
                   check=True, capture_output=True)
    try:
        yield directory / "tree"
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(directory / "tree")],
                       capture_output=True)
        shutil.rmtree(directory, ignore_errors=True)


def load_demo_collection(repository: Path, data_dir: Path) -> None:
    subprocess.run([sys.executable, "-m", "focalserve_devtools.demo_collection", "--repository", str(repository),
                    "--data-dir", str(data_dir)], check=True, stdout=subprocess.DEVNULL)


def measure(
    codes: dict[str, dict[str, str]], repository: Path, data_dir: Path, repeats: int
) -> dict[str, dict[str, list[float]]]:
    """Per code version: the gateway's ready times and each command's times, runs alternating."""
    times: dict[str, dict[str, list[float]]] = {name: {} for name in codes}
    for _ in range(repeats):
        for name, env in codes.items():
            times[name].setdefault("gateway", []).append(gateway_ready_s(env, repository, data_dir))
            for label, arguments in COMMANDS.items():
                times[name].setdefault(label, []).append(command_s(env, arguments))
    return times


def table(times: dict[str, dict[str, list[float]]]) -> str:
    rows = []
    for what in ["gateway", *COMMANDS]:
        label = "`focalserve serve` until /readyz is 200" if what == "gateway" else f"`{what}`"
        for code, measured in times.items():
            rows.append([label, code, statistics.median(measured[what]), min(measured[what]), max(measured[what])])
    return markdown_table(["start", "code", "median s", "min s", "max s"], rows)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--baseline", help="a git ref whose code starts side by side with this checkout's")
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        codes = {"this checkout": code_env(None)}
        if args.baseline:
            codes[f"baseline {args.baseline}"] = code_env(stack.enter_context(worktree(args.baseline)))
        data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="focalserve-startup-")))
        load_demo_collection(args.repository, data_dir)
        times = measure(codes, args.repository, data_dir, args.repeats)
    tables = {"startup": table(times)}
    print(tables["startup"])
    return {"command": command_of("benchmarks.startup", argv),
            "machine": machine(), "tables": tables, "times": times}


if __name__ == "__main__":
    main()
