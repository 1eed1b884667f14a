"""Two single-request latencies: the first request after `/readyz`, and the gateway's batch-1 overhead.

    .venv/bin/python -m benchmarks.latency [--models demo vitb32] [--device cpu] [--dtype float32]

First request: a fresh gateway, warm-up on and then off; as soon as it is ready, eleven
`/embed` requests go one after another, each one image under an instruction never sent before
(every request runs the instruction model and the image model, so the first does no more work
than the others). Goal: the first no slower than 3x the median of the next ten.

Overhead: a 256 px JPEG sent as multipart, one request at a time under one instruction (the
condition cache answers it), against the raw TorchScript image forward of that image at batch 1
(pixels and condition precomputed). The difference is what the gateway adds: HTTP, multipart,
JPEG decode, preprocessing, batching and JSON. Goal: at most 3 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import statistics
import time
from functools import partial
from typing import Any

import httpx

from benchmarks.clients import embed_multipart
from benchmarks.families import CPU_MODELS, SOURCES, WORK_DIR, BenchFamily, prepare_family
from benchmarks.loadgen import run_load
from benchmarks.raw import time_calls
from benchmarks.report import command_of, machine, markdown_table
from benchmarks.scripted import ScriptedFamily
from benchmarks.targets import http_session
from benchmarks.workload import PHRASINGS, Workload, distinct, repeated
from focalserve_devtools.launch import running_gateway
from focalserve_training.data import ColorShapeGenerator

FOLLOWING = 10
OVERHEAD_REQUESTS = 200  # and at most OVERHEAD_SECONDS
OVERHEAD_SECONDS = 20.0


def first_request_times_ms(url: str, family: str, workload: Workload) -> list[float]:
    """Wall time of each of 1 + FOLLOWING sequential /embed calls, in milliseconds."""
    instruction_for = distinct()
    times = []
    with httpx.Client(base_url=url, timeout=300) as client:
        for number in range(1 + FOLLOWING):
            body = {"model": family, "inputs": [{"image": workload.image_b64(number),
                                                 "instruction": instruction_for(number)}]}
            started = time.perf_counter()
            response = client.post("/embed", json=body)
            times.append((time.perf_counter() - started) * 1000)
            response.raise_for_status()
    return times


def jpeg_256() -> bytes:
    buffer = io.BytesIO()
    ColorShapeGenerator(seed=1).sample(0).image.resize((256, 256)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def multipart_p50_ms(url: str, family: str, image: bytes) -> float:
    """p50 of sequential multipart /embed calls through aiohttp, the serving benchmark's client
    (httpx's own per-request cost is a few milliseconds here, as large as what is measured)."""
    workload = Workload((image,), (base64.b64encode(image).decode("ascii"),), repeated)

    async def run() -> float:
        async with http_session() as session:
            result = await run_load(embed_multipart(session, url, family, workload), 1, max_requests=OVERHEAD_REQUESTS,
                                    max_seconds=OVERHEAD_SECONDS, warmup_requests=3)
        return float(result.summary()["p50_ms"])  # type: ignore[arg-type]

    return asyncio.run(run())


def gateway_settings(family: BenchFamily, warmup: bool, placement: dict[str, str]) -> dict[str, str]:
    logs = WORK_DIR / "logs" / family.name
    logs.mkdir(parents=True, exist_ok=True)
    return {"families": json.dumps([family.name]), "data_dir": str(logs / "latency-data"),
            "warmup": str(warmup).lower(), **placement}


def measure(name: str, placement: dict[str, str], workload: Workload) -> dict[str, Any]:
    family = prepare_family(name)
    log = WORK_DIR / "logs" / name / "latency.log"
    first = {}
    for warmup in (True, False):
        with running_gateway(family.libtorch_repository, log, **gateway_settings(family, warmup, placement)) as url:
            times = first_request_times_ms(url, name, workload)
            if warmup:
                gateway_p50 = multipart_p50_ms(url, name, jpeg_256())
        first[warmup] = (times[0], statistics.median(times[1:]))
    scripted = ScriptedFamily(family.libtorch_repository, name, placement["device"], placement["dtype"])
    forward = partial(scripted.embed, scripted.pixels([jpeg_256()]), scripted.conditions([PHRASINGS[0]]))
    raw_p50 = statistics.median(time_calls(forward, seconds=3.0, warmup=3)) * 1000
    return {"model": name, "first": first, "gateway_p50_ms": gateway_p50, "raw_p50_ms": raw_p50}


def tables(rows: list[dict[str, Any]], placement: dict[str, str]) -> dict[str, str]:
    where = f"{placement['device']}, {placement['dtype']}"
    first = markdown_table(
        ["model", "device, dtype", "warm-up", "first request (ms)", f"median of the next {FOLLOWING} (ms)",
         "first / median"],
        [[row["model"], where, "on" if warmup else "off", first_ms, median_ms, first_ms / median_ms]
         for row in rows for warmup, (first_ms, median_ms) in row["first"].items()],
    )
    overhead = markdown_table(
        ["model", "device, dtype", "gateway p50, 256 px JPEG multipart (ms)", "raw forward p50, batch 1 (ms)",
         "overhead (ms)"],
        [[row["model"], where, row["gateway_p50_ms"], row["raw_p50_ms"], row["gateway_p50_ms"] - row["raw_p50_ms"]]
         for row in rows],
    )
    return {"first_request": first, "overhead": overhead}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=list(SOURCES), default=list(CPU_MODELS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    args = parser.parse_args(argv)
    placement = {"device": args.device, "dtype": args.dtype}
    workload = Workload.colorshape()
    generated = tables([measure(name, placement, workload) for name in args.models], placement)
    for table in generated.values():
        print(table, end="\n\n")
    command = command_of("benchmarks.latency", argv)
    return {"command": command, "machine": machine(), "tables": generated}


if __name__ == "__main__":
    main()
