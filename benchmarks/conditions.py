"""Many conditions for one image: what K instructions cost, full against readout conditioning.

    .venv/bin/python -m benchmarks.conditions [--models vitb32 vitl14-336] [--counts 1 2 4 8 16]
        [--seconds S] [--no-raw | --no-gateway] [--device cuda --dtype float16]

For each open_clip geometry, one set of random weights (seed 0) built as a full and as a readout
FocalLens family. Raw: the exported TorchScript image model on one preprocessed image under K
precomputed conditions (full: a batch of K rows, the image repeated; readout: one row holding K
conditions). Gateway: POST /embed of one 256 px JPEG with `instructions` of K (all cached after
warm-up), one request at a time, on the embedded backend. Also the rate of adding items to a
collection with four conditions registered. Prints markdown tables, writes
benchmarks/results/conditions.json.
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import torch

from benchmarks.families import RANDOM_SEED, WORK_DIR, export_dir
from benchmarks.latency import jpeg_256
from benchmarks.raw import time_calls
from benchmarks.report import command_of, machine, markdown_table, save_json
from benchmarks.scripted import ScriptedFamily
from benchmarks.workload import PHRASINGS
from focalserve_devtools.launch import gateway_processes
from focalserve_family import CONDITIONINGS, Conditioning
from focalserve_training.export import export_family
from focalserve_training.models import load_family_model

GEOMETRIES = {"vitb32": "ViT-B-32", "vitl14-336": "ViT-L-14-336"}
COUNTS = (1, 2, 4, 8, 16)
ADD_ITEMS = 16  # items added (in one request) to the four-condition collection
ADD_CONDITIONS = 4


def export_both(name: str, work_dir: Path) -> Path:
    """One repository holding NAME-full and NAME-readout on the same random weights (once; reused)."""
    repository = export_dir(work_dir / "conditions", name, GEOMETRIES[name])
    for conditioning in CONDITIONINGS:
        family = f"{name}-{conditioning}"
        if not (repository / f"{family}_image" / "1" / "model.pt").is_file():
            torch.manual_seed(RANDOM_SEED)  # the same random weights for both conditionings
            model = load_family_model("focallens", GEOMETRIES[name], conditioning=conditioning)
            export_family(model, "focallens", GEOMETRIES[name], family, repository, "libtorch")
    return repository


def raw_costs(
    repository: Path, name: str, counts: tuple[int, ...], seconds: float, placement: dict[str, str]
) -> dict[Conditioning, list[float]]:
    """p50 ms of the image model for one image under each count of conditions."""
    costs: dict[Conditioning, list[float]] = {}
    image = jpeg_256()
    for conditioning in CONDITIONINGS:
        family = ScriptedFamily(repository, f"{name}-{conditioning}", placement["device"], placement["dtype"])
        pixels = family.pixels([image])
        condition = family.conditions([PHRASINGS[0]])
        row = []
        for count in counts:
            conditions = condition.expand(count, -1).contiguous()
            if conditioning == "readout":
                inputs = (pixels, conditions.unsqueeze(0))
            else:
                inputs = (pixels.expand(count, -1, -1, -1).contiguous(), conditions)
            times = time_calls(partial(family.embed, *inputs), seconds, warmup=2)
            row.append(statistics.median(times) * 1000)
        costs[conditioning] = row
    return costs


def gateway_costs(
    repository: Path, name: str, counts: tuple[int, ...], seconds: float, placement: dict[str, str]
) -> dict[str, Any]:
    """p50 ms of POST /embed with K instructions, and items/s added under four conditions, per conditioning."""
    image = base64.b64encode(jpeg_256()).decode("ascii")
    logs = WORK_DIR / "logs" / "conditions"
    logs.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {}
    families = [f"{name}-{conditioning}" for conditioning in CONDITIONINGS]  # one gateway serves both
    # No start-up warm-up: it runs every model at its largest batch (minutes for ViT-L-14-336 on a
    # CPU), and each cell below warms up with its own request first. Loading still takes minutes, and
    # one ViT-L-14-336 request under 16 instructions on the full family ~70 s: deadlines to match.
    settings = {"families": json.dumps(families), "data_dir": str(logs / f"{name}-data"), "warmup": "false",
                "request_timeout_s": "900", "stall_timeout_s": "900", **placement}
    with gateway_processes(repository, [(logs / f"{name}.log", settings)], ready_timeout_s=900) as [(url, _)], \
            httpx.Client(base_url=url, timeout=600) as client:
        for conditioning, family in zip(CONDITIONINGS, families):
            latencies = []
            for count in counts:
                body = {"model": family, "inputs": [{"image": image, "instructions": _instructions(count)}]}
                latencies.append(statistics.median(_time_posts(client, body, seconds)) * 1000)
            result[conditioning] = {"embed_p50_ms": latencies, "add_items_per_s": _add_rate(client, family, image)}
    return result


def _instructions(count: int) -> list[str]:
    """`count` distinct instructions (the workload's phrasings, numbered past its end)."""
    return [PHRASINGS[i % len(PHRASINGS)] + ("" if i < len(PHRASINGS) else f" ({i})") for i in range(count)]


def _time_posts(client: httpx.Client, body: dict, seconds: float) -> list[float]:
    client.post("/embed", json=body).raise_for_status()  # warm-up: instructions cached, first-call costs paid
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < 3 or (time.perf_counter() < deadline and len(times) < 200):
        started = time.perf_counter()
        client.post("/embed", json=body).raise_for_status()
        times.append(time.perf_counter() - started)
    return times


def _add_rate(client: httpx.Client, family: str, image: str) -> float:
    """Items/s of one POST of ADD_ITEMS items to a collection with ADD_CONDITIONS conditions."""
    name = f"bench-{family}-{int(time.time())}"
    client.post("/collections", json={"name": name, "model": family}).raise_for_status()
    for instruction in _instructions(ADD_CONDITIONS):
        client.post(f"/collections/{name}/conditions", json={"instruction": instruction}).raise_for_status()
    items = [{"id": f"i{n}", "image": image} for n in range(ADD_ITEMS)]
    client.post(f"/collections/{name}/items", json={"items": items[:1]}).raise_for_status()  # warm-up
    started = time.perf_counter()
    client.post(f"/collections/{name}/items", json={"items": items}).raise_for_status()
    return ADD_ITEMS / (time.perf_counter() - started)


def tables(rows: list[dict[str, Any]], counts: tuple[int, ...]) -> dict[str, str]:
    """Milliseconds per K, and each larger K's cost relative to K=1 (the target reads K=8 / K=1)."""
    ratios = [f"K={k} / K=1" for k in counts[1:]]

    def cells(costs: list[float]) -> list[float]:
        return [*costs, *(cost / costs[0] for cost in costs[1:])]

    columns = ["model", "conditioning", *(f"K={k} (ms)" for k in counts), *ratios]
    generated: dict[str, str] = {}
    measured_raw = [row for row in rows if "raw" in row]
    if measured_raw:
        generated["conditions_raw"] = markdown_table(
            columns, [[row["model"], c, *cells(row["raw"][c])] for row in measured_raw for c in CONDITIONINGS])
    with_gateway = [row for row in rows if "gateway" in row]
    if with_gateway:
        generated["conditions_gateway"] = markdown_table(
            [*columns, f"items/s added, {ADD_CONDITIONS} conditions"],
            [[row["model"], c, *cells(row["gateway"][c]["embed_p50_ms"]), row["gateway"][c]["add_items_per_s"]]
             for row in with_gateway for c in CONDITIONINGS],
        )
    return generated


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=list(GEOMETRIES), default=list(GEOMETRIES))
    parser.add_argument("--counts", nargs="+", type=int, default=list(COUNTS))
    parser.add_argument("--seconds", type=float, default=3.0, help="timed part of each measurement")
    skip = parser.add_mutually_exclusive_group()
    skip.add_argument("--no-gateway", action="store_true", help="the raw image model only")
    skip.add_argument("--no-raw", action="store_true", help="through the gateway only")
    parser.add_argument("--device", default="cpu", help="raw forward and embedded gateway: cpu, cuda, cuda:N")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    args = parser.parse_args(argv)
    counts = tuple(args.counts)
    placement = {"device": args.device, "dtype": args.dtype}
    rows = []
    for name in args.models:
        repository = export_both(name, WORK_DIR)
        row: dict[str, Any] = {"model": name, **placement}
        if not args.no_raw:
            row["raw"] = raw_costs(repository, name, counts, args.seconds, placement)
            print(json.dumps(row), file=sys.stderr, flush=True)  # kept in the log if the gateway part fails
        if not args.no_gateway:
            row["gateway"] = gateway_costs(repository, name, counts, args.seconds, placement)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    generated = tables(rows, counts)
    for table in generated.values():
        print(table, end="\n\n")
    command = command_of("benchmarks.conditions", argv)
    payload = {"command": command, "machine": machine(), "rows": rows, "tables": generated}
    save_json("conditions", payload)
    return payload


if __name__ == "__main__":
    main()
