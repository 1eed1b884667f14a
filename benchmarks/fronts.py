"""Fronts and the engine: the gateway's CPU per request and its throughput against the raw forward,
one process against `--workers N`, measured side by side in one run (the demo family by default).

    .venv/bin/python -m benchmarks.fronts [--workers 1 2] [--concurrency 64] [--seconds S] [--torch-threads T]
        [--family demo|vitb32|vitl14-336] [--device cuda --dtype float16 --preprocess-device pil|cuda]

- raw forward: the exported image model in this process at batch 64 (img/s, and its CPU per image)
  and at batch 1 (latency);
- each gateway: single-image `/embed` requests (JSON, base64 PNG, the family's trained phrasings in
  turn) from `http_load` at the given concurrency; the CPU of every gateway process (from /proc)
  per request, and that minus the raw forward's CPU per image: the front's work (HTTP, parsing,
  decoding, resizing, batching, the hand-over); then one request at a time for the batch-1 overhead.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import torch

from benchmarks.families import SOURCES, prepare_family
from benchmarks.http_load import encode_post
from benchmarks.http_load import run as run_load
from benchmarks.raw import time_calls
from benchmarks.replication import descendants, process_table
from benchmarks.report import command_of, machine, markdown_table
from benchmarks.scripted import ScriptedFamily
from benchmarks.workload import PHRASINGS, Workload
from focalserve_devtools.launch import gateway_process
from focalserve_server.workers.processes import available_cores, engine_threads

RAW_BATCH = 64
BATCH_REQUEST, BATCH_CONCURRENCY = 64, 2  # many images per request: what the SDK sends


def tree_cpu_s(root: int) -> float:
    """User + system CPU seconds of `root` and every descendant alive now, from /proc."""
    table = process_table()
    return sum(table[pid][1] for pid in descendants(table, [root]) if pid in table)


def raw_forward(target: Target, workload: Workload, seconds: float, threads: int = 0) -> dict[str, float]:
    """At torch's default threads (the forward at its best), or at `threads` (the CPU the same
    images cost the gateway's model, to subtract from its CPU)."""
    default_threads = torch.get_num_threads()
    torch.set_num_threads(threads or default_threads)
    try:
        return _raw_forward(target, workload, seconds)
    finally:
        torch.set_num_threads(default_threads)


def _raw_forward(target: Target, workload: Workload, seconds: float) -> dict[str, float]:
    family = ScriptedFamily(target.repository, target.family, target.device, target.dtype)
    pixels = family.pixels(workload.images)
    condition = family.conditions([PHRASINGS[0]])
    batch = pixels[torch.arange(RAW_BATCH) % len(pixels)]
    cpu_before = time.process_time()
    times = time_calls(partial(family.embed, batch, condition.expand(RAW_BATCH, -1).contiguous()), seconds, 2)
    cpu = time.process_time() - cpu_before
    single = time_calls(partial(family.embed, batch[:1], condition), seconds / 2, 2)
    return {"images_per_s": RAW_BATCH / statistics.median(times),
            "cpu_ms_per_image": 1000 * cpu / ((len(times) + 2) * RAW_BATCH),
            "batch1_p50_ms": 1000 * statistics.median(single)}


@dataclass(frozen=True)
class Target:
    """What is measured: a family's repository, where its model runs, and the gateway's threads."""

    family: str
    repository: Path
    device: str = "cpu"
    dtype: str = "float32"
    preprocess_device: str = "pil"
    torch_threads: int = 0


def gateway(target: Target, workers: int, workload: Workload, concurrency: int, seconds: float,
            raw: dict[str, float], model_cpu_ms: float, log_dir: Path) -> dict[str, Any]:
    """`raw`: the forward at its best, for the ratio; `model_cpu_ms`: its CPU per image with the
    threads the gateway's model runs on, subtracted to leave the front's work."""
    settings = {"workers": str(workers), "data_dir": str(log_dir / f"data-{workers}"),
                "runtime_dir": str(log_dir / f"run-{workers}"), "torch_threads": str(target.torch_threads),
                "device": target.device, "dtype": target.dtype, "preprocess_device": target.preprocess_device,
                "families": json.dumps([target.family])}
    singles, batches = requests_of(workload, target.family, 1), requests_of(workload, target.family, BATCH_REQUEST)
    with gateway_process(target.repository, log_dir / f"gateway-{workers}.log", **settings) as (url, process):
        run_load(url, singles, concurrency, max_requests=4 * concurrency, max_seconds=seconds)  # warm every path
        batches_before = batch_sizes(httpx.get(f"{url}/metrics", timeout=10).text, target.family)
        cpu_before = tree_cpu_s(process.pid)
        load = run_load(url, singles, concurrency, max_requests=200_000, max_seconds=seconds)
        cpu_between = tree_cpu_s(process.pid)
        batches_after = batch_sizes(httpx.get(f"{url}/metrics", timeout=10).text, target.family)
        many = run_load(url, batches, BATCH_CONCURRENCY, max_requests=10_000, max_seconds=seconds / 2, processes=1)
        cpu_after = tree_cpu_s(process.pid)
        single = run_load(url, singles, 1, max_requests=2_000, max_seconds=seconds / 2, processes=1)
    images, calls = (after - before for after, before in zip(batches_after, batches_before, strict=True))
    per_request_ms = 1000 * (cpu_between - cpu_before) / max(load.requests, 1)
    images_per_s = load.requests_per_s  # one image per request
    return {
        "workers": workers,
        "concurrency": concurrency,
        **load.summary(),
        "vs_raw": images_per_s / raw["images_per_s"],
        "gateway_cpu_ms_per_request": per_request_ms,
        "front_cpu_ms_per_request": per_request_ms - model_cpu_ms,
        "mean_batch_size": images / calls if calls else 0.0,
        "batch1_p50_ms": single.summary()["p50_ms"],
        "batch1_overhead_ms": float(single.summary()["p50_ms"] or 0.0) - raw["batch1_p50_ms"],
        "batched_images_per_s": many.requests_per_s * BATCH_REQUEST,
        "batched_front_cpu_ms_per_image":
            1000 * (cpu_after - cpu_between) / max(many.requests * BATCH_REQUEST, 1) - model_cpu_ms,
    }


def batch_sizes(metrics: str, family: str) -> tuple[float, float]:
    """(images, calls) of the image model so far, from the gateway's `/metrics`."""
    values = {"sum": 0.0, "count": 0.0}
    for line in metrics.splitlines():
        for part in values:
            if line.startswith(f'focalserve_batch_size_{part}{{model="{family}_image"}}'):
                values[part] = float(line.rsplit(" ", 1)[1])
    return values["sum"], values["count"]


def requests_of(workload: Workload, family: str, images: int) -> list[bytes]:
    """Distinct requests of `images` (image, instruction) pairs each, cycling through the workload."""
    count = len(PHRASINGS) * len(workload.images)
    pairs = [(workload.image_b64(n), PHRASINGS[n % len(PHRASINGS)]) for n in range(count)]
    bodies = [{"model": family, "inputs": [{"image": image, "instruction": text}
                                           for image, text in (pairs[(n + k) % count] for k in range(images))]}
              for n in range(count)]
    return [encode_post("/embed", "127.0.0.1", json.dumps(body).encode()) for body in bodies]


def repository_of(family: str) -> Path:
    """The demo's repository as `make demo-repository` wrote it; others exported on first use."""
    return SOURCES[family].committed_repository or prepare_family(family).libtorch_repository


def gateway_threads(workers: int, target: Target) -> int:
    """The intra-op threads the gateway's model runs on, as `workers.processes` chooses them."""
    return target.torch_threads or engine_threads(workers, available_cores())


def table(raw: dict[str, float], rows: list[dict[str, Any]]) -> str:
    header = ["workers", "req/s (= img/s)", "x raw forward", "p50 ms", "p99 ms", "gateway CPU ms/req",
              "front CPU ms/req", "mean batch", "batch-1 p50 ms", "batch-1 overhead ms",
              f"{BATCH_REQUEST}-image requests: img/s", "front CPU ms/img", "load generator cores busy", "errors"]
    body = [[row["workers"], f"{row['requests_per_s']:.0f}", f"{row['vs_raw']:.2f}", f"{row['p50_ms']:.1f}",
             f"{row['p99_ms']:.1f}", f"{row['gateway_cpu_ms_per_request']:.2f}",
             f"{row['front_cpu_ms_per_request']:.2f}", f"{row['mean_batch_size']:.1f}", f"{row['batch1_p50_ms']:.2f}",
             f"{row['batch1_overhead_ms']:.2f}", f"{row['batched_images_per_s']:.0f}",
             f"{row['batched_front_cpu_ms_per_image']:.2f}", f"{row['loadgen_cores_busy']:.2f}", row["errors"]]
            for row in rows]
    raw_line = (f"Raw forward (in-process, batch {RAW_BATCH}): {raw['images_per_s']:.0f} img/s, "
                f"{raw['cpu_ms_per_image']:.2f} ms of CPU per image; batch 1: {raw['batch1_p50_ms']:.2f} ms.")
    return raw_line + "\n\n" + markdown_table(header, body)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--torch-threads", type=int, default=0, help="the gateways' torch_threads (0: the default)")
    parser.add_argument("--family", default="demo", help="demo, vitb32 or vitl14-336 (benchmarks/families.py)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--preprocess-device", default="pil")
    parser.add_argument("--json", type=Path, help="also write the measurements here")
    args = parser.parse_args(argv)
    target = Target(args.family, repository_of(args.family), args.device, args.dtype, args.preprocess_device,
                    args.torch_threads)
    workload = Workload.colorshape()
    raw = raw_forward(target, workload, args.seconds / 2)
    threads = {workers: gateway_threads(workers, target) for workers in args.workers}
    cpu_at = {count: raw_forward(target, workload, args.seconds / 4, count)["cpu_ms_per_image"]
              for count in set(threads.values()) - {0}}  # torch's default was measured above
    model_cpu_ms = {workers: cpu_at.get(count, raw["cpu_ms_per_image"]) for workers, count in threads.items()}
    with tempfile.TemporaryDirectory(prefix="fronts-") as directory:
        rows = [gateway(target, workers, workload, args.concurrency, args.seconds, raw, model_cpu_ms[workers],
                        Path(directory)) for workers in args.workers]
    command = command_of("benchmarks.fronts", argv)
    tables = {"fronts": table(raw, rows)}
    print(tables["fronts"])
    result = {"command": command, "machine": machine(), "raw": raw, "gateways": rows, "tables": tables}
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2, default=str))
    return result


if __name__ == "__main__":
    main()
