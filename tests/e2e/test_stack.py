"""`make stack` as a user runs it: PostgreSQL, tritonserver and two gateways as processes. The
gateways share their collections through the database and embed like `make serve`."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np

from focalserve_devtools.launch import free_port, running_gateway, wait_until_ready
from tests.helpers.images import b64, shape_png

ROOT = Path(__file__).resolve().parents[2]
INPUTS = [{"image": b64(shape_png()), "instruction": "what colour is the shape?"}, {"text": "red"}]
COLOUR = "what colour is the shape?"
RED, BLUE = b64(shape_png((220, 30, 30))), b64(shape_png((30, 30, 220)))


def free_port_pair() -> int:
    """A free port whose successor is free too: the stack's gateways listen on PORT and PORT+1."""
    while True:
        port = free_port()
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port


@contextmanager
def running_stack(log_path: Path) -> Iterator[list[str]]:
    """`make stack` on free ports and a private state dir; yields both gateways' URLs.

    On the way out it signals the process group, as Ctrl-C would, and waits until every process in
    it is gone: make returns at once, the script's trap stops the rest (PostgreSQL last).
    """
    port = free_port_pair()
    # not pytest's tmp_path: under root PostgreSQL runs as `postgres`, which cannot traverse it
    stack_dir = Path(tempfile.mkdtemp(prefix="focalserve-stack-"))
    stack_dir.chmod(0o755)
    env = {**os.environ, "PORT": str(port), "STACK_DIR": str(stack_dir), "STACK_PG_PORT": str(free_port()),
           "TRITON_GRPC_PORT": str(free_port()), "TRITON_HTTP_PORT": str(free_port()),
           "TRITON_METRICS_PORT": str(free_port())}
    with open(log_path, "wb") as log:
        stack = subprocess.Popen(["make", "--no-print-directory", "stack"], cwd=ROOT, env=env, stdout=log, stderr=log,
                                 start_new_session=True)
    gateways = [f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port + 1}"]
    try:
        for url in gateways:
            wait_until_ready(f"{url}/readyz", stack, 300, what=f"make stack (log: {log_path})", interval_s=1)
        yield gateways
    finally:
        try:
            stop_group(stack)
            assert_postgres_stopped(stack_dir / "postgres" / "data")
        finally:
            shutil.rmtree(stack_dir, ignore_errors=True)


def stop_group(stack: subprocess.Popen, timeout_s: float = 90) -> None:
    """SIGTERM to make's process group; returns once no process of it is left."""
    with contextlib.suppress(ProcessLookupError):  # all gone already: the stack failed on its own
        os.killpg(stack.pid, signal.SIGTERM)
    stack.wait(timeout=timeout_s)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.killpg(stack.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.5)
    os.killpg(stack.pid, signal.SIGKILL)
    raise AssertionError(f"the stack's processes outlived {timeout_s} s after SIGTERM")


def assert_postgres_stopped(data_dir: Path) -> None:
    """pg_ctl starts the server in a session of its own, out of the group's reach: only the trap stops it."""
    pid_file = data_dir / "postmaster.pid"
    if pid_file.exists():
        os.kill(int(pid_file.read_text().split()[0]), signal.SIGQUIT)  # immediate shutdown, so none leaks
        raise AssertionError("make stack left PostgreSQL running")


def wait_for_condition(url: str, collection: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        conditions = httpx.get(f"{url}/collections/{collection}", timeout=30).json()["conditions"]
        if conditions and conditions[0]["status"] == "ready":
            return
        assert not conditions or conditions[0]["status"] == "building", conditions
        time.sleep(0.5)
    raise TimeoutError(f"condition of {collection!r} not ready on {url} after {timeout_s} s")


def check_shared_collection(writer: str, reader: str) -> None:
    """What one gateway writes, the other lists, serves and searches (read-your-writes by `min_seq`)."""
    created = httpx.post(f"{writer}/collections", json={"name": "shared", "model": "demo"}, timeout=60)
    assert created.status_code == 201, created.text
    listed = httpx.get(f"{reader}/collections", timeout=30).json()["collections"]
    assert [c["name"] for c in listed] == ["shared"]
    added = httpx.post(f"{writer}/collections/shared/conditions", json={"instruction": COLOUR}, timeout=60)
    assert added.status_code in (201, 202), added.text
    wait_for_condition(reader, "shared")
    items = [{"id": "red", "image": RED}, {"id": "blue", "image": BLUE}]
    written = httpx.post(f"{writer}/collections/shared/items", json={"items": items}, timeout=60)
    assert written.status_code == 201, written.text
    seq = int(written.headers["FocalServe-Seq"])
    image = httpx.get(f"{reader}/collections/shared/items/red/image", timeout=30)
    assert image.status_code == 200 and b64(image.content) == RED
    found = httpx.post(f"{reader}/search", json={"collection": "shared", "condition": COLOUR, "query": {"image": RED},
                                                 "k": 5, "min_seq": seq}, timeout=60)
    assert found.status_code == 200, found.text
    assert int(found.headers["FocalServe-Seq"]) >= seq
    results = found.json()["results"]
    # the query is the red item's own image: the writer's stored vector comes first, at cosine 1
    assert [r["id"] for r in results] == ["red", "blue"] and results[0]["score"] > 0.999


def test_make_stack_runs_two_gateways_on_one_database(demo_repository, tmp_path):
    with running_stack(tmp_path / "stack.log") as gateways:
        via_triton = [httpx.post(f"{url}/embed", json={"model": "demo", "inputs": INPUTS}, timeout=60).json()["data"]
                      for url in gateways]
        check_shared_collection(*gateways)
    with running_gateway(demo_repository, tmp_path / "serve.log", data_dir=str(tmp_path / "data")) as serve:
        embedded = httpx.post(f"{serve}/embed", json={"model": "demo", "inputs": INPUTS}, timeout=60).json()["data"]
    for served in via_triton:
        for a, b in zip(served, embedded, strict=True):
            np.testing.assert_allclose(a["embedding"], b["embedding"], atol=1e-5)
