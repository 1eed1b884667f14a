"""Bulk ingest against the HTTP add path, the model-bound ceiling and the store's bulk write, side by
side in one run on the same generated images (ColorShape PNGs in a temporary folder, the `demo`
family, two conditions), everything on 127.0.0.1.

    .venv/bin/python -m benchmarks.ingest [--images 20000] [--store postgres|sqlite]
        [--parts http ingest ceiling writes] [--write-items 20480] [--json PATH]

1. HTTP: a gateway process (`focalserve serve`, embedded backend) and the client CLI `focalserve
   index add FOLDER --collection ...`, the two conditions registered first through the SDK;
   images/s from the CLI's "adding N" line to its exit (its start and id listing left out), and
   over the whole command.
2. ingest: `focalserve_ingest.ingest` into a fresh collection of the same store kind, on a Ray
   cluster started once here (`ray.init(num_cpus=cores)`): images/s once running, start-up apart.
3. ceiling: this one process reads, decodes and preprocesses (`focalserve_server.images`, as the
   ingest's prepare step does) and embeds (the ingest's `Embedder`, torch on every core) the same
   images in batches of 64, writing nothing: what the model allows on this machine.
4. writes: `Store.put_block` of pre-made items (random unit vectors under 2 conditions, no image
   bytes) in blocks of 1024, into PostgreSQL (`LocalPostgres`) and into SQLite: vectors/s
   (items x conditions). The ingest's goal is >= 5,000 vectors/s into PostgreSQL.

Every loop stops at a count and at a time (`--timeout-s` per part); every server started here is
stopped on exit.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from pydantic import SecretStr

from benchmarks.report import machine, markdown_table
from focalserve_client import Client
from focalserve_devtools.demo_collection import demo_items
from focalserve_devtools.launch import gateway_process
from focalserve_devtools.postgres import LocalPostgres
from focalserve_family import FamilySpec, families_from_configs, read_repository
from focalserve_ingest.embedder import Embedder
from focalserve_server.collections.factory import open_store
from focalserve_server.collections.health import StoreHealth
from focalserve_server.collections.model import BlockItem
from focalserve_server.collections.store import Store
from focalserve_server.conditions import normalise_instruction
from focalserve_server.config import Settings
from focalserve_server.images import ImagePreprocessor, decode_image
from focalserve_server.workers.processes import available_cores

REPOSITORY = Path(__file__).resolve().parent.parent / "model_repository"
FAMILY = "demo"
INSTRUCTIONS = ("what colour is it?", "what shape is it?")
PARTS = ("http", "ingest", "ceiling", "writes")
SEED = 7  # the images: not a seed the demo model was trained or evaluated on
CEILING_BATCH = 64
WARMUP_BATCHES = 2  # the ceiling's first calls (TorchScript's profiling runs), not timed
WRITE_BLOCK = 1024
WRITE_GOAL_PER_S = 5_000  # vectors/s into PostgreSQL
READY_TIMEOUT_S = 120.0
HTTP_COLLECTION, INGEST_COLLECTION, WRITE_COLLECTION = "bench-http", "bench-ingest", "bench-writes"


class IgnoredCall:
    """`tally.ready.remote(at)` of an Embedder built outside Ray: nothing to report to."""

    def remote(self, *args: object) -> None:
        return None


class NoTally:
    ready = IgnoredCall()


@dataclass(frozen=True)
class Plan:
    """Sizes and bounds of one run."""

    images: int
    store: str  # "postgres" or "sqlite": the store of the HTTP and ingest paths
    parts: tuple[str, ...]
    cores: int
    write_items: int  # items per store of the bulk-write part (x conditions = vectors)
    timeout_s: float  # each part
    http_batch_size: int
    http_concurrency: int
    repository: Path


# -- the images -------------------------------------------------------------------------------------


def write_images(folder: Path, count: int, seed: int) -> list[Path]:
    """`count` ColorShape PNGs named by their demo ids (the id both paths give an item: its file name)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for item_id, image, _ in demo_items(count, seed):
        path = folder / f"{item_id}.png"
        image.save(path, format="PNG")
        paths.append(path)
    return paths


def instructions(settings: Settings) -> list[str]:
    """The conditions as the gateway and the ingest register them."""
    return [normalise_instruction(text, settings.max_instruction_chars) for text in INSTRUCTIONS]


def family_spec(repository: Path) -> FamilySpec:
    return families_from_configs(read_repository(repository))[FAMILY]


# -- 1. the HTTP add path ------------------------------------------------------------------------------


def bench_http(plan: Plan, folder: Path, work: Path, database_url: str) -> dict[str, Any]:
    settings = {"data_dir": str(work / "http-data"), "database_url": database_url, "backend": "embedded",
                "families": json.dumps([FAMILY]), "device": "cpu"}
    with gateway_process(plan.repository, work / "gateway.log", **settings) as (url, _):
        with Client(url) as client:
            client.create_collection(HTTP_COLLECTION, model=FAMILY)
            for text in INSTRUCTIONS:
                client.add_condition(HTTP_COLLECTION, text)
            for text in INSTRUCTIONS:  # an empty collection's conditions are ready at once
                client.wait_for_condition(HTTP_COLLECTION, text, timeout=READY_TIMEOUT_S)
        command = [sys.executable, "-m", "focalserve_server", "index", "add", "--collection", HTTP_COLLECTION,
                   "--images", str(folder), "--url", url, "--batch-size", str(plan.http_batch_size),
                   "--concurrency", str(plan.http_concurrency)]
        run = timed_command(command, work / "index-add.log", b"adding ", plan.timeout_s)
        with Client(url) as client:
            stored = client.get_collection(HTTP_COLLECTION).items
    added = json.loads(run["stdout"].strip().splitlines()[-1])["added"]
    if added != plan.images or stored != plan.images:
        raise RuntimeError(f"focalserve index add stored {stored} of {plan.images} images (added {added})\n"
                           f"{tail(work / 'index-add.log')}\n{tail(work / 'gateway.log')}")
    running_s, command_s = run["exited"] - run["marked"], run["exited"] - run["started"]
    return {"images": added, "running_s": running_s, "images_per_s": added / running_s,
            "command_s": command_s, "overall_images_per_s": added / command_s,
            "batch_size": plan.http_batch_size, "concurrency": plan.http_concurrency}


def timed_command(command: list[str], log_file: Path, mark: bytes, timeout_s: float) -> dict[str, Any]:
    """Run `command`, its stderr copied to `log_file`; when it started, first wrote a line holding
    `mark` on stderr, and exited (time.monotonic), and its stdout. Killed past `timeout_s`."""
    started = time.monotonic()
    marked: list[float] = []
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    stdout: list[bytes] = []
    with open(log_file, "wb") as log:
        copier = threading.Thread(target=_copy_marked, args=(process.stderr, log, mark, marked), daemon=True)
        reader = threading.Thread(target=lambda out=process.stdout: stdout.append(out.read()), daemon=True)
        copier.start()
        reader.start()
        try:
            code = process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise TimeoutError(f"{shlex.join(command)} ran past {timeout_s} s\n{tail(log_file)}") from None
        exited = time.monotonic()
        copier.join(timeout=10)
        reader.join(timeout=10)
    if code != 0:
        raise RuntimeError(f"{shlex.join(command)} exited with {code}\n{tail(log_file)}")
    return {"started": started, "marked": marked[0] if marked else started, "exited": exited,
            "stdout": b"".join(stdout).decode()}


def tail(log_file: Path, lines: int = 20) -> str:
    """The end of a log of the temporary work folder, which goes when the run ends."""
    try:
        text = log_file.read_text(errors="replace")
    except OSError:
        return f"({log_file.name}: none)"
    return f"{log_file.name} (tail):\n" + "\n".join(text.splitlines()[-lines:])


def _copy_marked(stream: IO[bytes], log: IO[bytes], mark: bytes, marked: list[float]) -> None:
    for line in stream:  # bounded by the process: its stderr closes when it exits
        if not marked and mark in line:
            marked.append(time.monotonic())
        log.write(line)


# -- 2. the ingest -------------------------------------------------------------------------------------


def bench_ingest(plan: Plan, folder: Path, work: Path, database_url: str) -> dict[str, Any]:
    import ray
    import ray.data

    from focalserve_ingest.pipeline import IngestOptions, ingest

    settings = Settings(data_dir=work / "ingest-data", database_url=SecretStr(database_url),
                        model_repository=plan.repository, device="cpu")
    began = time.monotonic()
    started_ray = not ray.is_initialized()
    if started_ray:  # once here, a new local cluster of `cores` CPUs: ingest() takes an initialised Ray as it is
        ray.init(address="local", num_cpus=plan.cores, include_dashboard=False, logging_level=logging.WARNING)
    ray_init_s = time.monotonic() - began
    context = ray.data.DataContext.get_current()
    progress_bars, context.enable_progress_bars = context.enable_progress_bars, False
    try:
        summary = ingest(IngestOptions(
            str(folder), collection=INGEST_COLLECTION, model=FAMILY, instructions=list(INSTRUCTIONS),
            report=work / "ingest-failures.jsonl", settings=settings,
        ))
    finally:
        context.enable_progress_bars = progress_bars
        if started_ray:
            ray.shutdown()
    if summary.images != plan.images or summary.failed:
        raise RuntimeError(f"the ingest stored {summary.images} of {plan.images} images: {summary}")
    return {"images": summary.images, "elapsed_s": summary.elapsed_s, "startup_s": summary.startup_s,
            "running_s": summary.elapsed_s - summary.startup_s, "images_per_s": summary.images_per_s,
            "overall_images_per_s": summary.images / summary.elapsed_s, "ray_init_s": ray_init_s,
            "ray_cpus": plan.cores}


# -- 3. the model-bound ceiling ------------------------------------------------------------------------


def bench_ceiling(plan: Plan, paths: list[Path]) -> dict[str, Any]:
    """Read, decode, preprocess and embed in this process, batch after batch; nothing written."""
    threads = torch.get_num_threads()
    try:  # the Embedder sets this process's torch threads; a caller's (a test session's) are put back
        return _bench_ceiling(plan, paths)
    finally:
        torch.set_num_threads(threads)


def _bench_ceiling(plan: Plan, paths: list[Path]) -> dict[str, Any]:
    settings = Settings(model_repository=plan.repository)
    embedder = Embedder(str(plan.repository), FAMILY, list(instructions(settings)), "cpu", "float32", plan.cores,
                        NoTally())
    preprocess = ImagePreprocessor(embedder.spec)

    def pixels_of(batch: list[Path]) -> np.ndarray:
        size = embedder.spec.image_size
        pixels = np.zeros((len(batch), 3, size, size), np.uint8)
        for row, path in enumerate(batch):
            image = decode_image(path.read_bytes(), settings.max_image_bytes, settings.max_image_pixels,
                                 preprocess.decode_size)
            pixels[row] = preprocess(image)
        return pixels

    for _ in range(WARMUP_BATCHES):
        embedder.embed(pixels_of(paths[:CEILING_BATCH]))
    prepare_s = embed_s = 0.0
    images = 0
    deadline = time.monotonic() + plan.timeout_s
    for start in range(0, len(paths), CEILING_BATCH):  # bounded by the images and by the deadline
        if time.monotonic() > deadline:
            break
        began = time.perf_counter()
        pixels = pixels_of(paths[start:start + CEILING_BATCH])
        prepared = time.perf_counter()
        vectors = embedder.embed(pixels)
        embed_s += time.perf_counter() - prepared
        prepare_s += prepared - began
        assert vectors.shape == (len(pixels), len(INSTRUCTIONS), embedder.spec.embedding_dim)
        images += len(pixels)
    return {"images": images, "seconds": prepare_s + embed_s, "images_per_s": images / (prepare_s + embed_s),
            "prepare_ms_per_image": 1000 * prepare_s / images, "embed_ms_per_image": 1000 * embed_s / images,
            "batch": CEILING_BATCH, "torch_threads": plan.cores}


# -- 4. the bulk write alone ---------------------------------------------------------------------------


def block_items(count: int, dim: int, conditions: list[int], seed: int) -> list[BlockItem]:
    """Items with random unit float32 vectors under `conditions`, unique ids, no image bytes."""
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((count, len(conditions), dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=2, keepdims=True)
    return [
        BlockItem(id=f"written-{n:08d}", digest=hashlib.sha256(str(n).encode()).hexdigest(),
                  source=f"/bench/written-{n:08d}.png", image=None, metadata={},
                  vectors={condition: vectors[n, k] for k, condition in enumerate(conditions)})
        for n in range(count)
    ]


def bench_writes(store: Store, plan: Plan, dim: int) -> dict[str, Any]:
    settings = Settings(model_repository=plan.repository)
    store.create_collection(WRITE_COLLECTION, FAMILY)
    registered, _ = store.add_conditions(WRITE_COLLECTION, instructions(settings), "auto", settings.build_chunk_size)
    conditions = [condition.rowid for condition, _ in registered]
    items = block_items(plan.write_items, dim, conditions, SEED)
    block_s: list[float] = []
    vectors = stored = 0
    deadline = time.monotonic() + plan.timeout_s
    for start in range(0, len(items), WRITE_BLOCK):  # bounded by the items and by the deadline
        if time.monotonic() > deadline:
            break
        began = time.perf_counter()
        written = store.put_block(WRITE_COLLECTION, items[start:start + WRITE_BLOCK], set(conditions))
        block_s.append(time.perf_counter() - began)
        vectors += written.vectors
        stored += written.items
    if stored != min(len(items), len(block_s) * WRITE_BLOCK) or vectors != stored * len(conditions):
        raise RuntimeError(f"put_block stored {stored} items and {vectors} vectors of {len(block_s)} blocks")
    seconds = sum(block_s)
    return {"items": stored, "vectors": vectors, "seconds": seconds, "vectors_per_s": vectors / seconds,
            "blocks": len(block_s), "block": WRITE_BLOCK, "block_p50_ms": 1000 * statistics.median(block_s),
            "conditions": len(conditions), "dim": dim}


@contextmanager
def opened_store(data_dir: Path, database_url: str) -> Iterator[Store]:
    store = open_store(Settings(data_dir=data_dir, database_url=SecretStr(database_url)), StoreHealth())
    try:
        yield store
    finally:
        store.close()


# -- the run -------------------------------------------------------------------------------------------


def run(plan: Plan) -> dict[str, Any]:
    """Parts in an order that keeps them apart: in-process work first, then the gateway (stopped
    before the next part), then Ray (shut down at the end)."""
    result: dict[str, Any] = {}
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="focalserve-ingest-bench-")))
        began = time.monotonic()
        paths = write_images(work / "images", plan.images, SEED)
        _progress(f"{len(paths)} PNG images written", began)
        postgres: LocalPostgres | None = None
        if "writes" in plan.parts or (plan.store == "postgres" and {"http", "ingest"} & set(plan.parts)):
            postgres = stack.enter_context(LocalPostgres())
            _progress(f"PostgreSQL on 127.0.0.1:{postgres.port}", began)

        def store_url(name: str) -> str:
            return postgres.create_database(name) if plan.store == "postgres" and postgres is not None else ""

        if "ceiling" in plan.parts:
            result["ceiling"] = bench_ceiling(plan, paths)
            _progress(f"ceiling: {result['ceiling']['images_per_s']:.0f} images/s", began)
        if "writes" in plan.parts:
            assert postgres is not None
            dim = family_spec(plan.repository).embedding_dim
            result["writes"] = {}
            with opened_store(work / "writes-postgres", postgres.create_database("bench_writes")) as store:
                result["writes"]["postgres"] = bench_writes(store, plan, dim)
            with opened_store(work / "writes-sqlite", "") as store:
                result["writes"]["sqlite"] = bench_writes(store, plan, dim)
            _progress("writes: " + ", ".join(f"{kind} {row['vectors_per_s']:.0f} vectors/s"
                                             for kind, row in result["writes"].items()), began)
        if "http" in plan.parts:
            result["http"] = bench_http(plan, work / "images", work, store_url("bench_http"))
            _progress(f"HTTP: {result['http']['images_per_s']:.0f} images/s", began)
        if "ingest" in plan.parts:
            result["ingest"] = bench_ingest(plan, work / "images", work, store_url("bench_ingest"))
            _progress(f"ingest: {result['ingest']['images_per_s']:.0f} images/s once running", began)
    return result


def ratios(result: dict[str, Any]) -> dict[str, float]:
    """The ingest's images/s once running against the HTTP path's and the ceiling's."""
    out: dict[str, float] = {}
    if "ingest" in result and "http" in result:
        out["ingest_vs_http"] = result["ingest"]["images_per_s"] / result["http"]["images_per_s"]
        out["ingest_vs_http_overall"] = (result["ingest"]["overall_images_per_s"]
                                         / result["http"]["overall_images_per_s"])
    if "ingest" in result and "ceiling" in result:
        out["ingest_vs_ceiling"] = result["ingest"]["images_per_s"] / result["ceiling"]["images_per_s"]
    if "http" in result and "ceiling" in result:
        out["http_vs_ceiling"] = result["http"]["images_per_s"] / result["ceiling"]["images_per_s"]
    return out


def table(plan: Plan, result: dict[str, Any], ratio: dict[str, float]) -> str:
    header = ["path", "store", "count", "seconds", "rate", "start-up s", "whole run: rate"]
    rows: list[list[object]] = []
    if "http" in result:
        row = result["http"]
        rows.append([f"HTTP: `focalserve index add` (batch {row['batch_size']}, {row['concurrency']} in flight) "
                     "to a gateway", plan.store, f"{row['images']} images", row["running_s"],
                     f"{row['images_per_s']:.0f} images/s", f"{row['command_s'] - row['running_s']:.1f}",
                     f"{row['overall_images_per_s']:.0f} images/s"])
    if "ingest" in result:
        row = result["ingest"]
        rows.append([f"`focalserve ingest` (Ray Data, {row['ray_cpus']} CPUs)", plan.store, f"{row['images']} images",
                     row["running_s"], f"{row['images_per_s']:.0f} images/s",
                     f"{row['startup_s']:.1f} (+ {row['ray_init_s']:.1f} `ray.init`)",
                     f"{row['overall_images_per_s']:.0f} images/s"])
    if "ceiling" in result:
        row = result["ceiling"]
        rows.append([f"ceiling: read, decode, preprocess ({row['prepare_ms_per_image']:.2f} ms/image), embed "
                     f"({row['embed_ms_per_image']:.2f} ms/image) in one process, batch {row['batch']}", "none",
                     f"{row['images']} images", row["seconds"], f"{row['images_per_s']:.0f} images/s", "", ""])
    for kind, row in result.get("writes", {}).items():
        rows.append([f"`Store.put_block`, blocks of {row['block']} (p50 {row['block_p50_ms']:.0f} ms), "
                     f"{row['conditions']} conditions x {row['dim']} dims", kind, f"{row['vectors']} vectors",
                     row["seconds"], f"{row['vectors_per_s']:.0f} vectors/s", "", ""])
    lines = [markdown_table(header, rows)]
    names = {"ingest_vs_http": "ingest / HTTP (once running)", "ingest_vs_http_overall": "ingest / HTTP (whole runs)",
             "ingest_vs_ceiling": "ingest / ceiling", "http_vs_ceiling": "HTTP / ceiling"}
    if ratio:
        lines.append("Ratios: " + "; ".join(f"{names[key]} {value:.2f}" for key, value in ratio.items()) + ".")
    if "postgres" in result.get("writes", {}):
        rate = result["writes"]["postgres"]["vectors_per_s"]
        verdict = "met" if rate >= WRITE_GOAL_PER_S else "NOT met"
        lines.append(f"Bulk write into PostgreSQL: {rate:.0f} vectors/s, goal >= {WRITE_GOAL_PER_S}: {verdict}.")
    return "\n\n".join(lines)


def _progress(message: str, began: float) -> None:
    print(f"[ingest bench] {time.monotonic() - began:6.1f} s: {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20_000, help="generated PNG images (every path the same)")
    parser.add_argument("--store", choices=["postgres", "sqlite"], default="postgres",
                        help="the store of the HTTP and ingest paths (the bulk-write part measures both)")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--cores", type=int, default=0, help="Ray's num_cpus and the ceiling's torch threads "
                                                             "(default: every core this process may use)")
    parser.add_argument("--write-items", type=int, default=20 * WRITE_BLOCK,
                        help="items per store of the bulk-write part (x 2 conditions = vectors)")
    parser.add_argument("--timeout-s", type=float, default=1800.0, help="bound of each part")
    parser.add_argument("--http-batch-size", type=int, default=32, help="`focalserve index add --batch-size`")
    parser.add_argument("--http-concurrency", type=int, default=4, help="`focalserve index add --concurrency`")
    parser.add_argument("--repository", type=Path, default=REPOSITORY, help="holding the `demo` family")
    parser.add_argument("--json", type=Path, help="also write the measurements here")
    args = parser.parse_args(argv)
    if args.images < 1 or args.write_items < 1:
        parser.error("--images and --write-items must be positive")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    plan = Plan(images=args.images, store=args.store, parts=tuple(args.parts),
                cores=args.cores or available_cores(), write_items=args.write_items, timeout_s=args.timeout_s,
                http_batch_size=args.http_batch_size, http_concurrency=args.http_concurrency,
                repository=args.repository.resolve())
    result = run(plan)
    ratio = ratios(result)
    tables = {"ingest": table(plan, result, ratio)}
    print(tables["ingest"])
    command = shlex.join(["python", "-m", "benchmarks.ingest", *(sys.argv[1:] if argv is None else argv)])
    payload = {"command": command, "machine": machine(), "plan": {**plan.__dict__, "repository": str(plan.repository)},
               **result, "ratios": ratio, "tables": tables}
    if args.json is not None:
        args.json.write_text(json.dumps(payload, indent=2, default=str))
    return payload


if __name__ == "__main__":
    main()
