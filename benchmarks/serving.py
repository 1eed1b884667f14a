"""Serving benchmark: images/s and p50/p95/p99 latency, one image + one instruction per request.

For each model family, on the same exported weights: (a) the raw TorchScript image forward
in-process (the limit), (b) the gateway on its embedded backend, (c) the gateway in front of
tritonserver, (d) PyTriton with its dynamic batcher, (e) a naive FastAPI + open_clip server,
(f) infinity-emb serving a transformers CLIP of the same image geometry (its own virtual
environment, `.venv-infinity`; image only, as a plain CLIP takes no instruction);
closed-loop load at each concurrency, each server started once per family. On (b), at
concurrency 16, the condition cache (one repeated vs all-distinct instructions), the request
body (JSON vs multipart) and the output encoding (float vs base64) are measured as well.

    .venv/bin/python -m benchmarks.serving [--models demo vitb32] [--concurrency 1 16 64] [--seconds S]
        [--max-requests N] [--systems raw gateway-embedded gateway-triton pytriton naive infinity] [--no-variants]
        [--device cuda --dtype float16 --preprocess-device cuda]

`--device`, `--dtype` and `--preprocess-device` place the raw forward and the embedded gateway
(the Triton gateway takes `--preprocess-device`); PyTriton, the naive server and infinity-emb stay on the CPU.

Prints markdown tables, writes benchmarks/results/serving.json and the figures
benchmarks/serving_throughput.png and benchmarks/serving_latency_cdf.png.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys
import time
from pathlib import Path

from benchmarks.families import CPU_MODELS, SOURCES, WORK_DIR, BenchFamily, prepare_family
from benchmarks.loadgen import Send
from benchmarks.measure import Measurement, measure
from benchmarks.plots import plot_latency_cdf, plot_throughput
from benchmarks.raw import raw_forward
from benchmarks.report import machine, markdown_table, save_json
from benchmarks.scripted import ScriptedFamily
from benchmarks.targets import DEFAULT_MAX_BATCH_SIZE, SYSTEMS, remote_gateway
from benchmarks.variants import VARIANTS
from benchmarks.workload import PHRASINGS, Workload

FIGURES_DIR = Path(__file__).resolve().parent
VARIANT_SYSTEM, VARIANT_CONCURRENCY = "gateway-embedded", 16
RAW = "raw"
STARTED = time.perf_counter()  # progress lines and the JSON's elapsed_s count from here


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=list(SOURCES), default=list(CPU_MODELS))
    parser.add_argument("--systems", nargs="+", choices=[RAW, *SYSTEMS], default=[RAW, *SYSTEMS])
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 16, 64])
    parser.add_argument("--seconds", type=float, default=5.0, help="timed part of each measurement (after warm-up)")
    parser.add_argument("--max-requests", type=int, default=100_000, help="per measurement")
    parser.add_argument("--no-variants", action="store_true", help=f"skip the {VARIANT_SYSTEM} variants")
    parser.add_argument("--device", default="cpu", help="raw forward and embedded gateway: cpu, cuda, cuda:N")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                        help="raw forward and embedded gateway")
    parser.add_argument("--preprocess-device", default="pil", help="gateways: pil, cpu, cuda, cuda:N")
    parser.add_argument("--gateway-url", default=None,
                        help="measure this running gateway (e.g. a GPU deployment) instead of starting systems here")
    return parser.parse_args(argv)


async def benchmark_family(name: str, args: argparse.Namespace, workload: Workload) -> tuple[dict, list[Measurement]]:
    """Every selected system on one family; each server is started once and reused across concurrencies."""
    if args.gateway_url:
        return {"family": {"remote": args.gateway_url}}, await _measure_remote(name, args, workload)
    family = prepare_family(name)
    logs = WORK_DIR / "logs" / name
    logs.mkdir(parents=True, exist_ok=True)
    summary: dict[str, object] = {"family": _describe(family)}
    max_batch_size = DEFAULT_MAX_BATCH_SIZE
    if RAW in args.systems:
        raw = raw_forward(ScriptedFamily(family.libtorch_repository, name, args.device, args.dtype), workload,
                          seconds_per_size=args.seconds / 4, max_seconds=6 * args.seconds)
        summary[RAW] = raw
        max_batch_size = raw["best_batch_size"]
        _progress(f"{name} raw: {raw['images_per_s']:.1f} img/s at batch {raw['best_batch_size']}")
    summary["max_batch_size"] = max_batch_size
    measurements: list[Measurement] = []
    for system in (system for system in SYSTEMS if system in args.systems):
        _progress(f"{name} {system}: starting")
        async with SYSTEMS[system](family, logs, max_batch_size, placement(args)) as target:
            _progress(f"{name} {system}: ready")
            sends: list[tuple[str | None, int, Send]] = [
                (None, concurrency, target.send_for(workload)) for concurrency in args.concurrency
            ]
            if system == VARIANT_SYSTEM and target.gateway is not None and not args.no_variants:
                sends += [(variant, VARIANT_CONCURRENCY, make(target.gateway, name, workload))
                          for variant, make in VARIANTS.items()]
            for variant, concurrency, send in sends:
                measurement = await measure(target, name, send, concurrency, args.seconds, args.max_requests, variant)
                measurements.append(measurement)
                _progress(_one_line(measurement))
    return summary, measurements


def placement(args: argparse.Namespace) -> dict[str, str]:
    return {"device": args.device, "dtype": args.dtype, "preprocess_device": args.preprocess_device}


async def _measure_remote(name: str, args: argparse.Namespace, workload: Workload) -> list[Measurement]:
    async with remote_gateway(args.gateway_url, name) as target:
        measurements = [await measure(target, name, target.send_for(workload), concurrency, args.seconds,
                                      args.max_requests) for concurrency in args.concurrency]
    for measurement in measurements:
        _progress(_one_line(measurement))
    return measurements


def results_table(measurements: list[Measurement], families: dict[str, dict]) -> str:
    rows = []
    for m in (m for m in measurements if m.variant is None):
        s = m.result.summary()
        raw = families[m.model].get(RAW)
        share = f"{100 * m.result.images_per_s / raw['images_per_s']:.0f}%" if raw else "-"
        batch = m.counters.summary()["mean_image_batch"] if m.counters else "-"
        rows.append([m.model, m.system, m.result.concurrency, s["images_per_s"], share, s["p50_ms"], s["p95_ms"],
                     s["p99_ms"], m.result.requests, m.result.errors, batch, m.load_average])
    headers = ["model", "system", "concurrency", "img/s", "of raw", "p50 ms", "p95 ms", "p99 ms", "requests", "errors",
               "mean image batch", "load avg"]
    return markdown_table(headers, rows)


def raw_table(families: dict[str, dict]) -> str:
    rows = [
        [model, raw["best_batch_size"], raw["images_per_s"], raw["batch1_p50_ms"],
         ", ".join(f"{row['batch_size']}: {row['images_per_s']:.1f}" for row in raw["sweep"])]
        for model, summary in families.items() if (raw := summary.get(RAW))
    ]
    return markdown_table(["model", "best batch", "img/s", "batch-1 p50 ms", "img/s by batch size"], rows)


def variants_table(measurements: list[Measurement]) -> str:
    chosen = [(m, m.counters) for m in measurements if m.counters is not None and m.system == VARIANT_SYSTEM
              and m.result.concurrency == VARIANT_CONCURRENCY]
    rows = []
    for m, counters in chosen:
        s, c = m.result.summary(), counters.summary()
        rows.append([m.model, m.variant or "json, 8 phrasings in turn (default)", s["images_per_s"], s["p50_ms"],
                     s["p95_ms"], s["p99_ms"], m.result.errors, m.result.requests + m.result.errors + m.warmup_requests,
                     int(c["instruction_calls"]), int(c["instruction_items"]), int(c["cache_hits"]),
                     int(c["cache_misses"])])
    headers = ["model", "request", "img/s", "p50 ms", "p95 ms", "p99 ms", "errors", "requests incl. warm-up",
               "instruction calls", "instructions encoded", "cache hits", "cache misses"]
    return markdown_table(headers, rows)


def notes(cores: int | None) -> list[str]:
    return [
        f"The load generator (this process: asyncio with aiohttp or tritonclient) and every server process share the "
        f"same {cores} CPU cores; with Triton, three processes (client, gateway, tritonserver and its python-backend "
        "stubs) share them. Other work on the machine adds noise.",
        "Closed loop: each of `concurrency` workers sends one request (one PNG image + one instruction), waits for "
        "the answer and sends the next; requests in flight at the deadline are waited for and counted.",
        f"Default instructions: {len(PHRASINGS)} trained ColorShape phrasings in turn. The gateway's condition cache "
        "serves them after their first use; PyTriton encodes each distinct instruction of a batch once (no cache "
        "across batches); the naive server encodes the instruction on every request.",
        "raw: the image forward alone (pixels and condition precomputed), in the benchmark process, no server "
        "running; batch sizes double until past the peak or a time budget.",
        "vitb32: open_clip ViT-B-32 FocalLens with random weights (seed 0): a speed measurement, not a quality one.",
        "infinity: infinity-emb 0.0.78 (torch engine, CPU, batches up to the gateways' largest) serving a transformers "
        "CLIPModel built with the family's open_clip image geometry and eval preprocessing, random weights; it embeds "
        "the image alone (a plain CLIP takes no instruction), sent as a PNG data URI.",
        "Gateway counters (instruction calls, cache hits, mean image batch) come from its /metrics, warm-up included.",
    ]


async def run(args: argparse.Namespace) -> dict:
    workload = Workload.colorshape()
    families: dict[str, dict] = {}
    measurements: list[Measurement] = []
    for name in args.models:
        families[name], family_measurements = await benchmark_family(name, args, workload)
        measurements += family_measurements
    tables = {"serving": results_table(measurements, families)}
    if any(RAW in summary for summary in families.values()):
        tables["raw"] = raw_table(families)
    if any(m.variant for m in measurements):
        tables["variants"] = variants_table(measurements)
    for name, table in tables.items():
        print(f"\n## {name}\n\n{table}")
    figures = _figures(measurements, families)
    payload = {
        "command": shlex.join(sys.orig_argv),
        "machine": machine(),
        "settings": {**vars(args), "variant_concurrency": VARIANT_CONCURRENCY, "images": len(workload.images),
                     "instructions": list(PHRASINGS)},
        "notes": notes(os.cpu_count()),
        "families": families,
        "measurements": [m.row() for m in measurements],
        "figures": [str(path.relative_to(FIGURES_DIR.parent)) for path in figures],
        "elapsed_s": time.perf_counter() - STARTED,
        "tables": tables,
    }
    print(f"\nwrote {save_json('serving', payload)} and {', '.join(map(str, figures))} "
          f"in {payload['elapsed_s']:.0f} s")
    return payload


def _figures(measurements: list[Measurement], families: dict[str, dict]) -> list[Path]:
    if not measurements:
        return []
    raw = {model: summary[RAW]["images_per_s"] for model, summary in families.items() if RAW in summary}
    figures = [plot_throughput(measurements, raw, FIGURES_DIR / "serving_throughput.png")]
    if any(m.result.concurrency == VARIANT_CONCURRENCY for m in measurements):
        figures.append(plot_latency_cdf(measurements, VARIANT_CONCURRENCY, FIGURES_DIR / "serving_latency_cdf.png"))
    return figures


def _describe(family: BenchFamily) -> dict[str, object]:
    spec = family.spec
    return {"open_clip_model": spec.open_clip_model, "checkpoint_hash": spec.checkpoint_hash,
            "image_size": spec.image_size, "embedding_dim": spec.embedding_dim, "condition_dim": spec.condition_dim,
            "libtorch_repository": str(family.libtorch_repository), "python_repository": str(family.python_repository)}


def _one_line(m: Measurement) -> str:
    s = m.result.summary()
    label = f"{m.model} {m.system}" + (f" [{m.variant}]" if m.variant else "")
    error = f" first error: {s['first_error']}" if s["first_error"] else ""
    return (f"{label} c={m.result.concurrency}: {s['images_per_s']:.1f} img/s, p50 {s['p50_ms']:.1f} ms, "
            f"p99 {s['p99_ms']:.1f} ms, {m.result.requests} ok, {m.result.errors} errors{error}")


def _progress(line: str) -> None:
    print(f"[{time.perf_counter() - STARTED:4.0f} s] {line}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> None:
    asyncio.run(run(parse_args(argv)))


if __name__ == "__main__":
    main()
