"""What a new batch size costs the exported image model, with TorchScript's optimising executor on and off.

    .venv/bin/python -m benchmarks.batch_shapes [--models vitb32] [--device cuda] [--dtype float16]

The embedded backend and Triton's libtorch backend run the exported TorchScript files, and a
dynamic batcher forms every batch size from 1 to its maximum. On CUDA the optimising executor
specialises the graph again for each new input shape (measured on an H200: benchmarks/RESULTS.md,
GPU), so those pauses reach the users whose requests form a new size.
Each mode loads its own copy of the model and calls it at sizes in an order a batcher might form
them: per size, the first call, the second, and the median of the calls after them. The plain
mode is `torch.jit.optimized_execution(False)`: the graph runs as exported, never specialised;
it is how the embedded backend runs on every device (`OPTIMISE_GRAPHS`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TypedDict

import torch

from benchmarks.families import SOURCES, prepare_family
from benchmarks.report import markdown_table
from benchmarks.scripted import ScriptedFamily
from benchmarks.workload import PHRASINGS, Workload

SIZES = (1, 2, 3, 64, 5, 8, 13, 21, 34, 40)  # not in order: a batcher forms sizes as load comes
STEADY_CALLS = 5
MODES = {"optimised": True, "plain": False}


class ShapeCost(TypedDict):
    mode: str
    batch_size: int
    first_ms: float
    second_ms: float
    steady_ms: float


def shape_costs(repository: Path, name: str, device: str, dtype: str, workload: Workload,
                sizes: tuple[int, ...] = SIZES) -> list[ShapeCost]:
    """Per mode and batch size: the first, second and steady (median) call times of the image forward."""
    rows: list[ShapeCost] = []
    for mode, optimise in MODES.items():
        family = ScriptedFamily(repository, name, device, dtype, optimise)  # a fresh module: nothing specialised yet
        pixels = family.pixels(workload.images)
        condition = family.conditions([PHRASINGS[0]])
        for size in sizes:
            rows_of_batch = torch.arange(size) % len(pixels)
            times = [_timed(partial(family.embed, pixels[rows_of_batch], condition.expand(size, -1)))
                     for _ in range(2 + STEADY_CALLS)]
            rows.append({"mode": mode, "batch_size": size, "first_ms": times[0] * 1000,
                         "second_ms": times[1] * 1000, "steady_ms": statistics.median(times[2:]) * 1000})
    return rows


def _timed(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def table(rows: list[ShapeCost]) -> str:
    return markdown_table(
        ["mode", "batch size", "first call ms", "second call ms", "steady ms"],
        [[row["mode"], row["batch_size"], row["first_ms"], row["second_ms"], row["steady_ms"]] for row in rows],
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["vitb32"], choices=sorted(SOURCES))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    workload = Workload.colorshape()
    results = {}
    for name in args.models:
        family = prepare_family(name)
        results[name] = shape_costs(family.libtorch_repository, name, args.device, args.dtype, workload)
        print(f"## {name}, {args.device}, {args.dtype}\n\n{table(results[name])}\n", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
