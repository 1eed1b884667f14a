"""Bulk ingest against the HTTP add path, the model-bound ceiling and the store's bulk write, side by
side in one run on the same generated images (ColorShape PNGs in a temporary folder, the `demo`
family, two conditions), everything on 127.0.0.1.

    .venv/bin/python -m benchmarks.ingest [--images 20000] [--store postgres|sqlite]
        [--parts http ingest ceiling writes] [--write-items 20480] [--json PATH]
        [--geometry vitb32] [--conditions K] [--device cpu|cuda|cuda:N] [--dtype float32|float16|bfloat16]
        [--image-kind colorshape|photo] [--image-size S] [--prepare-threads N] [--ceiling-batch B]

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

With `--geometry NAME` (an open_clip geometry of `benchmarks.conditions.GEOMETRIES`, random weights),
`conditions.export_both` exports NAME-full and NAME-readout into one repository under `--work-dir`
(reused by later runs and by `benchmarks.conditions`), the images are photo-like 256 x 256 RGB JPEGs
(smooth colour fields, shapes and grain, so decoding and resizing cost what they do for photos), and
http, ingest and ceiling are measured for each of the two families, on `--device` in `--dtype`, under
`--conditions K` instructions; the table then judges each family against the issue's goal of
>= 2,500 images/s per GPU (clip-retrieval's figure per A100) when the device is a GPU. The ceiling's
rate "the model alone" is images over the time spent in `Embedder.embed`; `--prepare-threads N > 1`
decodes each batch on N threads while the model embeds the one before.

Where `ray` does not import (the GPU machine: Ray's wheels are too large to travel there), the
ingest and http parts are skipped with a line saying so, and the others run.

Every loop stops at a count and at a time (`--timeout-s` per part); every server started here is
stopped on exit.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from pydantic import SecretStr

from benchmarks.families import WORK_DIR
from benchmarks.report import command_of, machine, markdown_table
from focalserve_client import Client
from focalserve_devtools.demo_collection import demo_items
from focalserve_devtools.launch import gateway_process
from focalserve_devtools.postgres import LocalPostgres
from focalserve_family import FamilySpec, families_from_configs, read_repository
from focalserve_ingest.embedder import Embedder  # needs no Ray (the package imports its pipeline lazily)
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
# --conditions K past the demo's two: more questions, then numbered variants of them
MORE_INSTRUCTIONS = ("what is the main object?", "what is in the background?", "what material is it made of?",
                     "how many objects are there?", "what is the setting of the picture?", "what texture does it have?")
PARTS = ("http", "ingest", "ceiling", "writes")
NEEDS_RAY = ("ingest", "http")  # skipped where `ray` does not import (http: it is measured against the ingest)
SEED = 7  # the images: not a seed the demo model was trained or evaluated on
PHOTO_SIZE = 256  # a side of the photo-like JPEGs unless --image-size
PHOTO_QUALITY = 90
CEILING_BATCH = 64
WARMUP_BATCHES = 2  # the ceiling's first calls of each batch shape (TorchScript's profiling runs), not timed
WRITE_BLOCK = 1024
WRITE_GOAL_PER_S = 5_000  # vectors/s into PostgreSQL
GPU_GOAL_PER_S = 2_500  # images/s per GPU: clip-retrieval's figure per A100
READY_TIMEOUT_S = 120.0
HTTP_COLLECTION, INGEST_COLLECTION, WRITE_COLLECTION = "bench-http", "bench-ingest", "bench-writes"
DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")


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
    timeout_s: float  # each part (with a geometry: each family's)
    http_batch_size: int
    http_concurrency: int
    repository: Path
    families: tuple[str, ...] = (FAMILY,)  # measured one after the other
    geometry: str | None = None  # families NAME-full and NAME-readout, exported by `conditions.export_both`
    instructions: tuple[str, ...] = INSTRUCTIONS  # the conditions as given (normalised where registered)
    device: str = "cpu"  # of the gateway's, the ingest's actors' and the ceiling's model
    dtype: str = "float32"
    image_kind: str = "colorshape"  # ColorShape PNGs, or photo-like JPEGs ("photo")
    image_size: int | None = None  # a side of the images; None: ColorShape's own (32), PHOTO_SIZE for photos
    prepare_threads: int = 1  # the ceiling's decoding threads; > 1: a batch decodes while the one before embeds
    ceiling_batch: int = CEILING_BATCH

    @property
    def default_placement(self) -> bool:
        """The CPU run of `python -m benchmarks --parts ingest`: its table says what it always said."""
        return (self.geometry, self.device, self.dtype, self.instructions, self.prepare_threads,
                self.ceiling_batch) == (None, "cpu", "float32", INSTRUCTIONS, 1, CEILING_BATCH)

    def collection(self, base: str, family: str) -> str:
        return base if self.geometry is None else f"{base}-{family}"


def instruction_texts(count: int) -> tuple[str, ...]:
    """`count` distinct instructions: the demo's two, then more questions, then numbered variants."""
    texts = [*INSTRUCTIONS, *MORE_INSTRUCTIONS]
    texts += [f"{MORE_INSTRUCTIONS[n % len(MORE_INSTRUCTIONS)]} (variant {n})" for n in range(count - len(texts))]
    return tuple(texts[:count])


# -- the images -------------------------------------------------------------------------------------


def write_images(folder: Path, count: int, seed: int, kind: str = "colorshape", size: int | None = None,
                 threads: int = 1) -> list[Path]:
    """`count` images named by the id both paths give an item (its file name): ColorShape PNGs named
    by their demo ids (resized to `size` if given), or photo-like JPEGs (`photo_jpeg`) made on `threads`."""
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "photo":
        side = size or PHOTO_SIZE
        grain = np.random.default_rng(seed).integers(-12, 13, (2 * side, 2 * side, 3), np.int16)

        def write_photo(index: int) -> Path:
            path = folder / f"photo-{index:06d}.jpg"
            path.write_bytes(photo_jpeg(index, side, seed, grain))
            return path

        with ThreadPoolExecutor(max(1, threads)) as pool:
            return list(pool.map(write_photo, range(count)))
    paths = []
    for item_id, image, _ in demo_items(count, seed):
        path = folder / f"{item_id}.png"
        (image if size is None else image.resize((size, size), Image.Resampling.BICUBIC)).save(path, format="PNG")
        paths.append(path)
    return paths


def photo_jpeg(index: int, size: int, seed: int, grain: np.ndarray) -> bytes:
    """A deterministic photo-like RGB JPEG (quality 90, ~20 KiB at 256 x 256): a smooth colour field
    with mid-frequency detail, a few flat shapes with hard edges and sensor-like grain (a window of
    `grain`, int16 (2 size, 2 size, 3)), so that its entropy, and the cost of decoding and resizing
    it, are a photograph's rather than those of a flat synthetic image."""
    rng = np.random.default_rng([seed, index])
    field = Image.fromarray(rng.integers(0, 256, (4, 4, 3), np.uint8)).resize((size, size), Image.Resampling.BICUBIC)
    detail = Image.fromarray(rng.integers(0, 256, (max(1, size // 8), max(1, size // 8), 3), np.uint8))
    image = Image.blend(field, detail.resize((size, size), Image.Resampling.BILINEAR), 0.25)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(2, 6))):
        x, y = (int(v) for v in rng.integers(0, size, 2))
        w, h = (int(v) // 2 for v in rng.integers(max(2, size // 8), max(3, size // 2), 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x - w, y - h, x + w, y + h], fill=colour)
    dy, dx = (int(v) for v in rng.integers(0, size, 2))
    pixels = np.clip(np.asarray(image, np.int16) + grain[dy:dy + size, dx:dx + size], 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=PHOTO_QUALITY)
    return out.getvalue()


def instructions(settings: Settings, texts: tuple[str, ...] = INSTRUCTIONS) -> list[str]:
    """The conditions as the gateway and the ingest register them."""
    return [normalise_instruction(text, settings.max_instruction_chars) for text in texts]


def family_spec(repository: Path, family: str = FAMILY) -> FamilySpec:
    return families_from_configs(read_repository(repository))[family]


# -- Ray, where there is one -------------------------------------------------------------------------


@cache
def ray_missing() -> str | None:
    """Why `ray` does not import here (the GPU machine: Ray's ~70 MB of wheels cannot travel there), or None."""
    try:
        import ray  # noqa: F401
    except ImportError as error:
        return f"{type(error).__name__}: {error}"
    return None


@contextmanager
def ray_cluster(cores: int) -> Iterator[float]:
    """A new local cluster of `cores` CPUs (and the GPUs Ray finds), once for every family; the
    seconds `ray.init` took. ingest() takes an initialised Ray as it is."""
    import ray

    began = time.monotonic()
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=cores, include_dashboard=False, logging_level=logging.WARNING)
    try:
        yield time.monotonic() - began
    finally:
        if started:
            ray.shutdown()


# -- 1. the HTTP add path ------------------------------------------------------------------------------


def bench_http(plan: Plan, folder: Path, work: Path, database_url: str) -> dict[str, dict[str, Any]]:
    """One gateway serving every family; `focalserve index add` of the folder into a collection of each."""
    settings = {"data_dir": str(work / "http-data"), "database_url": database_url, "backend": "embedded",
                "families": json.dumps(list(plan.families)), "device": plan.device, "dtype": plan.dtype}
    rows: dict[str, dict[str, Any]] = {}
    with gateway_process(plan.repository, work / "gateway.log", **settings) as (url, _):
        for family in plan.families:
            rows[family] = _http_add(plan, family, folder, work, url)
    return rows


def _http_add(plan: Plan, family: str, folder: Path, work: Path, url: str) -> dict[str, Any]:
    collection = plan.collection(HTTP_COLLECTION, family)
    with Client(url) as client:
        client.create_collection(collection, model=family)
        for text in plan.instructions:
            client.add_condition(collection, text)
        for text in plan.instructions:  # an empty collection's conditions are ready at once
            client.wait_for_condition(collection, text, timeout=READY_TIMEOUT_S)
    command = [sys.executable, "-m", "focalserve_server", "index", "add", "--collection", collection,
               "--images", str(folder), "--url", url, "--batch-size", str(plan.http_batch_size),
               "--concurrency", str(plan.http_concurrency)]
    run = timed_command(command, work / "index-add.log", b"adding ", plan.timeout_s)
    with Client(url) as client:
        stored = client.get_collection(collection).items
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


def bench_ingest(plan: Plan, family: str, folder: Path, work: Path, database_url: str,
                 ray_init_s: float) -> dict[str, Any]:
    import ray.data

    from focalserve_ingest.pipeline import IngestOptions, ingest

    settings = Settings(data_dir=work / "ingest-data", database_url=SecretStr(database_url),
                        model_repository=plan.repository, device=plan.device, dtype=plan.dtype)
    context = ray.data.DataContext.get_current()
    progress_bars, context.enable_progress_bars = context.enable_progress_bars, False
    try:
        summary = ingest(IngestOptions(
            str(folder), collection=plan.collection(INGEST_COLLECTION, family), model=family,
            instructions=list(plan.instructions), report=work / f"ingest-failures-{family}.jsonl", settings=settings,
        ))
    finally:
        context.enable_progress_bars = progress_bars
    if summary.images != plan.images or summary.failed:
        raise RuntimeError(f"the ingest stored {summary.images} of {plan.images} images: {summary}")
    return {"images": summary.images, "elapsed_s": summary.elapsed_s, "startup_s": summary.startup_s,
            "running_s": summary.elapsed_s - summary.startup_s, "images_per_s": summary.images_per_s,
            "overall_images_per_s": summary.images / summary.elapsed_s, "ray_init_s": ray_init_s,
            "ray_cpus": plan.cores}


# -- 3. the model-bound ceiling ------------------------------------------------------------------------


def bench_ceiling(plan: Plan, paths: list[Path], family: str = FAMILY) -> dict[str, Any]:
    """Read, decode, preprocess and embed in this process, batch after batch; nothing written."""
    threads = torch.get_num_threads()
    try:  # the Embedder sets this process's torch threads; a caller's (a test session's) are put back
        return _bench_ceiling(plan, paths, family)
    finally:
        torch.set_num_threads(threads)


def _bench_ceiling(plan: Plan, paths: list[Path], family: str) -> dict[str, Any]:
    settings = Settings(model_repository=plan.repository)
    cpu = plan.device == "cpu"  # on a GPU torch's threads are left as they are, as the ingest's GPU actors do
    embedder = Embedder(str(plan.repository), family, list(instructions(settings, plan.instructions)),
                                plan.device, plan.dtype, plan.cores if cpu else 0, NoTally())
    preprocess = ImagePreprocessor(embedder.spec)
    size = embedder.spec.image_size

    def prepared(path: Path) -> np.ndarray:
        image = decode_image(path.read_bytes(), settings.max_image_bytes, settings.max_image_pixels,
                             preprocess.decode_size)
        return preprocess(image)

    batches = [paths[start:start + plan.ceiling_batch] for start in range(0, len(paths), plan.ceiling_batch)]
    pipelined = plan.prepare_threads > 1
    with ThreadPoolExecutor(plan.prepare_threads) as rows, ThreadPoolExecutor(1) as ahead:

        def pixels_of(batch: list[Path]) -> np.ndarray:
            pixels = np.zeros((len(batch), 3, size, size), np.uint8)
            for row, array in enumerate(rows.map(prepared, batch) if pipelined else map(prepared, batch)):
                pixels[row] = array
            return pixels

        # every batch shape the loop meets (a last, shorter batch too: a new shape costs TorchScript profiling runs)
        for batch in {len(batch): batch for batch in reversed(batches)}.values():
            for _ in range(WARMUP_BATCHES):
                embedder.embed(pixels_of(batch))
        prepare_s = embed_s = 0.0
        images = 0
        pending: Future[np.ndarray] | None = ahead.submit(pixels_of, batches[0]) if pipelined else None
        deadline = time.monotonic() + plan.timeout_s
        for index, batch in enumerate(batches):  # bounded by the images and by the deadline
            if time.monotonic() > deadline:
                break
            began = time.perf_counter()
            if pending is not None:  # decoded meanwhile; the next batch decodes while this one embeds
                pixels = pending.result()
                pending = ahead.submit(pixels_of, batches[index + 1]) if index + 1 < len(batches) else None
            else:
                pixels = pixels_of(batch)
            prepared_at = time.perf_counter()
            vectors = embedder.embed(pixels)
            embed_s += time.perf_counter() - prepared_at
            prepare_s += prepared_at - began
            assert vectors.shape == (len(pixels), len(plan.instructions), embedder.spec.embedding_dim)
            images += len(pixels)
    return {"images": images, "seconds": prepare_s + embed_s, "images_per_s": images / (prepare_s + embed_s),
            "prepare_ms_per_image": 1000 * prepare_s / images, "embed_ms_per_image": 1000 * embed_s / images,
            "embed_images_per_s": images / embed_s, "batch": plan.ceiling_batch, "torch_threads": plan.cores,
            "prepare_threads": plan.prepare_threads, "conditions": len(plan.instructions), "device": plan.device,
            "dtype": plan.dtype, "image_size": size}


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
    store.create_collection(WRITE_COLLECTION, plan.families[0])
    registered, _ = store.add_conditions(WRITE_COLLECTION, instructions(settings, plan.instructions), "auto",
                                         settings.build_chunk_size)
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


def skipped_parts(parts: tuple[str, ...]) -> dict[str, str]:
    """The parts asked for that cannot run here, each with why."""
    reason = ray_missing() if set(NEEDS_RAY) & set(parts) else None
    if reason is None:
        return {}
    why = {"ingest": f"needs Ray, and `ray` does not import here ({reason}; it comes with the `ingest` extra, but "
                     "its ~70 MB of wheels cannot travel to a device machine, where only the model-bound ceiling runs)",
           "http": "left out with the ingest it is measured against"}
    return {part: why[part] for part in parts if part in NEEDS_RAY}


def per_family(plan: Plan, rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The demo's one family: its row, as the result always held it; a geometry's: the rows by family."""
    return rows[plan.families[0]] if plan.geometry is None else rows


def family_rows(plan: Plan, measured: dict[str, Any]) -> list[tuple[str | None, dict[str, Any]]]:
    """(family, row) of a part's result (none where it did not run): the family None for the demo's single row."""
    if plan.geometry is None:
        return [(None, measured)] if measured else []
    return [(family, measured[family]) for family in plan.families if family in measured]


def run(plan: Plan) -> dict[str, Any]:
    """Parts in an order that keeps them apart: in-process work first, then the gateway (stopped
    before the next part), then Ray (shut down at the end)."""
    result: dict[str, Any] = {}
    skipped = skipped_parts(plan.parts)
    parts = [part for part in plan.parts if part not in skipped]
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="focalserve-ingest-bench-")))
        began = time.monotonic()
        for part, reason in skipped.items():
            _progress(f"{part}: skipped: {reason}", began)
        paths = write_images(work / "images", plan.images, SEED, plan.image_kind, plan.image_size, plan.cores)
        kind = "JPEG" if plan.image_kind == "photo" else "PNG"
        _progress(f"{len(paths)} {kind} images written", began)
        postgres: LocalPostgres | None = None
        if "writes" in parts or (plan.store == "postgres" and {"http", "ingest"} & set(parts)):
            postgres = stack.enter_context(LocalPostgres())
            _progress(f"PostgreSQL on 127.0.0.1:{postgres.port}", began)

        def store_url(name: str) -> str:
            return postgres.create_database(name) if plan.store == "postgres" and postgres is not None else ""

        def named(family: str) -> str:
            return "" if plan.geometry is None else f" {family}"

        if "ceiling" in parts:
            ceilings = {}
            for family in plan.families:
                ceilings[family] = row = bench_ceiling(plan, paths, family)
                _progress(f"ceiling{named(family)}: {row['images_per_s']:.0f} images/s"
                          + ("" if plan.default_placement else f" (the model alone {row['embed_images_per_s']:.0f})"),
                          began)
            result["ceiling"] = per_family(plan, ceilings)
        if "writes" in parts:
            assert postgres is not None
            dim = family_spec(plan.repository, plan.families[0]).embedding_dim
            result["writes"] = {}
            with opened_store(work / "writes-postgres", postgres.create_database("bench_writes")) as store:
                result["writes"]["postgres"] = bench_writes(store, plan, dim)
            with opened_store(work / "writes-sqlite", "") as store:
                result["writes"]["sqlite"] = bench_writes(store, plan, dim)
            _progress("writes: " + ", ".join(f"{kind} {row['vectors_per_s']:.0f} vectors/s"
                                             for kind, row in result["writes"].items()), began)
        if "http" in parts:
            added = bench_http(plan, work / "images", work, store_url("bench_http"))
            for family, row in added.items():
                _progress(f"HTTP{named(family)}: {row['images_per_s']:.0f} images/s", began)
            result["http"] = per_family(plan, added)
        if "ingest" in parts:
            ray_init_s = stack.enter_context(ray_cluster(plan.cores))
            database_url = store_url("bench_ingest")
            ingested = {}
            for family in plan.families:
                ingested[family] = row = bench_ingest(plan, family, work / "images", work, database_url, ray_init_s)
                _progress(f"ingest{named(family)}: {row['images_per_s']:.0f} images/s once running", began)
            result["ingest"] = per_family(plan, ingested)
    if skipped:
        result["skipped"] = skipped
    return result


def ratios(result: dict[str, Any]) -> dict[str, float]:
    """The ingest's images/s once running against the HTTP path's and the ceiling's (one family's rows)."""
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


def all_ratios(plan: Plan, result: dict[str, Any]) -> dict[str, Any]:
    """`ratios` of the demo's run, or of each family of a geometry's ({family: ratios})."""
    if plan.geometry is None:
        return ratios(result)
    out = {}
    for family in plan.families:
        rows = {part: result[part][family] for part in ("http", "ingest", "ceiling")
                if family in result.get(part, {})}
        if ratio := ratios(rows):
            out[family] = ratio
    return out


RATIO_NAMES = {"ingest_vs_http": "ingest / HTTP (once running)", "ingest_vs_http_overall": "ingest / HTTP (whole runs)",
               "ingest_vs_ceiling": "ingest / ceiling", "http_vs_ceiling": "HTTP / ceiling"}


def table(plan: Plan, result: dict[str, Any], ratio: dict[str, Any]) -> str:
    header = ["path", "store", "count", "seconds", "rate", "start-up s", "whole run: rate"]
    rows: list[list[object]] = []
    placement = "" if plan.default_placement else f", {plan.device} {plan.dtype}, {len(plan.instructions)} conditions"

    def of(family: str | None) -> str:
        return "" if family is None else f"{family}: "

    for family, row in family_rows(plan, result.get("http", {})):
        rows.append([f"{of(family)}HTTP: `focalserve index add` (batch {row['batch_size']}, {row['concurrency']} "
                     f"in flight) to a gateway{placement}", plan.store, f"{row['images']} images", row["running_s"],
                     f"{row['images_per_s']:.0f} images/s", f"{row['command_s'] - row['running_s']:.1f}",
                     f"{row['overall_images_per_s']:.0f} images/s"])
    for family, row in family_rows(plan, result.get("ingest", {})):
        rows.append([f"{of(family)}`focalserve ingest` (Ray Data, {row['ray_cpus']} CPUs){placement}", plan.store,
                     f"{row['images']} images", row["running_s"], f"{row['images_per_s']:.0f} images/s",
                     f"{row['startup_s']:.1f} (+ {row['ray_init_s']:.1f} `ray.init`)",
                     f"{row['overall_images_per_s']:.0f} images/s"])
    for family, row in family_rows(plan, result.get("ceiling", {})):
        if plan.default_placement:
            path = (f"ceiling: read, decode, preprocess ({row['prepare_ms_per_image']:.2f} ms/image), embed "
                    f"({row['embed_ms_per_image']:.2f} ms/image) in one process, batch {row['batch']}")
        else:
            threads = row["prepare_threads"]
            path = (f"{of(family)}ceiling: read, decode, preprocess ({row['prepare_ms_per_image']:.2f} ms/image"
                    f"{f' waited for, {threads} threads ahead of the model' if threads > 1 else ''}), embed "
                    f"({row['embed_ms_per_image']:.2f} ms/image: {row['embed_images_per_s']:.0f} images/s the model "
                    f"alone) in one process, batch {row['batch']}{placement}")
        rows.append([path, "none", f"{row['images']} images", row["seconds"], f"{row['images_per_s']:.0f} images/s",
                     "", ""])
    for kind, row in result.get("writes", {}).items():
        rows.append([f"`Store.put_block`, blocks of {row['block']} (p50 {row['block_p50_ms']:.0f} ms), "
                     f"{row['conditions']} conditions x {row['dim']} dims", kind, f"{row['vectors']} vectors",
                     row["seconds"], f"{row['vectors_per_s']:.0f} vectors/s", "", ""])
    lines = [markdown_table(header, rows)]
    if ratio and plan.geometry is None:
        lines.append("Ratios: " + "; ".join(f"{RATIO_NAMES[key]} {value:.2f}" for key, value in ratio.items()) + ".")
    for family, by_family in ratio.items() if plan.geometry is not None else ():
        lines.append(f"Ratios, {family}: "
                     + "; ".join(f"{RATIO_NAMES[key]} {value:.2f}" for key, value in by_family.items()) + ".")
    if "postgres" in result.get("writes", {}):
        rate = result["writes"]["postgres"]["vectors_per_s"]
        verdict = "met" if rate >= WRITE_GOAL_PER_S else "NOT met"
        lines.append(f"Bulk write into PostgreSQL: {rate:.0f} vectors/s, goal >= {WRITE_GOAL_PER_S}: {verdict}.")
    if plan.geometry is not None and plan.device.startswith("cuda"):
        lines.extend(gpu_goal(plan, result))
    for part, reason in result.get("skipped", {}).items():
        lines.append(f"Skipped: {part}: {reason}.")
    return "\n\n".join(lines)


def gpu_goal(plan: Plan, result: dict[str, Any]) -> list[str]:
    """Each family's rate against the goal per GPU: the ingest's once running where it ran, else the ceiling's."""
    lines = []
    for family in plan.families:
        if family in result.get("ingest", {}):
            rate, what = result["ingest"][family]["images_per_s"], "`focalserve ingest` once running"
        elif family in result.get("ceiling", {}):
            row = result["ceiling"][family]
            rate = row["images_per_s"]
            what = (f"the ceiling in one process, the model alone {row['embed_images_per_s']:.0f} images/s; "
                    "the ingest did not run")
        else:
            continue
        verdict = "met" if rate >= GPU_GOAL_PER_S else "NOT met"
        lines.append(f"{family}, {len(plan.instructions)} conditions, {plan.device} {plan.dtype}: {rate:.0f} images/s "
                     f"({what}); goal >= {GPU_GOAL_PER_S:,} images/s per GPU (clip-retrieval's per-A100 figure): "
                     f"{verdict}.")
    return lines


def _progress(message: str, began: float) -> None:
    print(f"[ingest bench] {time.monotonic() - began:6.1f} s: {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20_000, help="generated images (every path the same)")
    parser.add_argument("--store", choices=["postgres", "sqlite"], default="postgres",
                        help="the store of the HTTP and ingest paths (the bulk-write part measures both)")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--cores", type=int, default=0, help="Ray's num_cpus and the ceiling's torch threads "
                                                             "(default: every core this process may use)")
    parser.add_argument("--write-items", type=int, default=20 * WRITE_BLOCK,
                        help="items per store of the bulk-write part (x the conditions = vectors)")
    parser.add_argument("--timeout-s", type=float, default=1800.0, help="bound of each part (of each family's)")
    parser.add_argument("--http-batch-size", type=int, default=32, help="`focalserve index add --batch-size`")
    parser.add_argument("--http-concurrency", type=int, default=4, help="`focalserve index add --concurrency`")
    parser.add_argument("--repository", type=Path, default=REPOSITORY, help="holding the `demo` family")
    parser.add_argument("--geometry", help="an open_clip geometry of benchmarks.conditions (vitb32, vitl14-336): "
                                           "its NAME-full and NAME-readout families (random weights) instead of demo")
    parser.add_argument("--work-dir", type=Path, default=WORK_DIR, help="where --geometry's families are exported")
    parser.add_argument("--conditions", type=int, default=len(INSTRUCTIONS),
                        help="instructions registered (default: the demo's two; more are generated)")
    parser.add_argument("--device", default="cpu", help="of the model: cpu, cuda or cuda:N")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    parser.add_argument("--image-kind", choices=["colorshape", "photo"],
                        help="ColorShape PNGs (default) or photo-like JPEGs (default with --geometry)")
    parser.add_argument("--image-size", type=int, help=f"a side of the generated images (default: ColorShape's "
                                                       f"own 32, {PHOTO_SIZE} for photos)")
    parser.add_argument("--prepare-threads", type=int, default=1,
                        help="the ceiling's decoding threads; above 1 a batch decodes while the one before embeds")
    parser.add_argument("--ceiling-batch", type=int, default=CEILING_BATCH, help="images per call of the ceiling")
    parser.add_argument("--json", type=Path, help="also write the measurements here")
    args = parser.parse_args(argv)
    if args.images < 1 or args.write_items < 1:
        parser.error("--images and --write-items must be positive")
    if min(args.conditions, args.prepare_threads, args.ceiling_batch, args.image_size or 1) < 1:
        parser.error("--conditions, --prepare-threads, --ceiling-batch and --image-size must be positive")
    if not DEVICE.match(args.device):
        parser.error(f"--device {args.device}: cpu, cuda or cuda:N")
    if args.geometry is not None:
        from benchmarks.conditions import GEOMETRIES

        if args.geometry not in GEOMETRIES:
            parser.error(f"--geometry {args.geometry}: one of {', '.join(GEOMETRIES)}")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    repository, export_s = args.repository.resolve(), None
    families: tuple[str, ...] = (FAMILY,)
    if args.geometry is not None:
        from benchmarks.conditions import export_both
        from focalserve_family import CONDITIONINGS

        began = time.monotonic()
        repository = export_both(args.geometry, args.work_dir.resolve())  # once; later runs reuse it
        families = tuple(f"{args.geometry}-{conditioning}" for conditioning in CONDITIONINGS)
        export_s = time.monotonic() - began
        _progress(f"{', '.join(families)} in {repository}", began)
    plan = Plan(images=args.images, store=args.store, parts=tuple(args.parts),
                cores=args.cores or available_cores(), write_items=args.write_items, timeout_s=args.timeout_s,
                http_batch_size=args.http_batch_size, http_concurrency=args.http_concurrency,
                repository=repository, families=families, geometry=args.geometry,
                instructions=instruction_texts(args.conditions), device=args.device, dtype=args.dtype,
                image_kind=args.image_kind or ("colorshape" if args.geometry is None else "photo"),
                image_size=args.image_size, prepare_threads=args.prepare_threads, ceiling_batch=args.ceiling_batch)
    result = run(plan)
    ratio = all_ratios(plan, result)
    tables = {"ingest" if plan.geometry is None else f"ingest_{plan.geometry}": table(plan, result, ratio)}
    for text in tables.values():
        print(text)
    command = command_of("benchmarks.ingest", argv)
    payload = {"command": command, "machine": machine(), "plan": {**plan.__dict__, "repository": str(plan.repository)},
               **result, "ratios": ratio, "tables": tables}
    if export_s is not None:
        payload["export_s"] = export_s
    if args.json is not None:
        args.json.write_text(json.dumps(payload, indent=2, default=str))
    return payload


if __name__ == "__main__":
    main()
