"""The change log stays bounded: a million writes through two gateways on one PostgreSQL, with the
log's rows and on-disk size sampled every second.

    python -m benchmarks.compaction [--writes 1000000] [--conditions 32] [--batch 64] [--max-minutes 30]
        [--family demo-readout|demo]
    python -m benchmarks --parts compaction

A write is one change-log row: an item added under a collection's condition. The collection uses
the readout demo family by default (one trunk pass serves all of an image's conditions), so the
database, not the model, sets the pace; `make demo-repository` exports it. Each gateway takes adds
from its own client thread; the gateways run with the default `log_retention_s`, so the bound
measured is the one a deployment gets. Every `heartbeat_s` (`LogRetention.of`) a gateway records
its position and compacts what both have applied: while both keep up, the log holds at most about
the writes of two heartbeats, `2 x rate x heartbeat_s`, whatever the total. At the end both
gateways must hold every vector in their indexes: compaction never deleted what a live gateway
still needed.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg

from benchmarks.fronts import repository_of
from benchmarks.report import command_of, finished, markdown_table, output_arguments
from benchmarks.workload import PHRASINGS, Workload
from focalserve_devtools.launch import gateway_processes
from focalserve_devtools.postgres import LocalPostgres
from focalserve_server.collections.replica import LogRetention
from focalserve_server.config import Settings

COLLECTION = "compaction"
FAMILIES = ("demo-readout", "demo")
SETTLE_S = 120.0  # the most the gateways may take to apply the last writes


class Writer:
    """Adds of `batch` new items, from one thread per gateway, until told to stop."""

    def __init__(self, workload: Workload, batch: int) -> None:
        self.workload, self.batch = workload, batch
        self.lock = threading.Lock()
        self.next_id = 0
        self.acknowledged = 0
        self.failed: dict[str, int] = {}  # 'status code' -> count
        self.stop = threading.Event()

    def run(self, url: str) -> None:
        with httpx.Client(base_url=url, timeout=120) as http:
            while not self.stop.is_set():
                with self.lock:
                    first, self.next_id = self.next_id, self.next_id + self.batch
                items = [{"id": f"i{n}", "image": self.workload.image_b64(n)} for n in range(first, first + self.batch)]
                answer = http.post(f"/collections/{COLLECTION}/items", json={"items": items})
                with self.lock:
                    if answer.status_code == 201:
                        self.acknowledged += self.batch
                    else:
                        failure = f"{answer.status_code} {answer.json().get('error', {}).get('code')}"
                        self.failed[failure] = self.failed.get(failure, 0) + 1


def log_state(connection: psycopg.Connection[Any]) -> dict[str, int]:
    """The log's head (as `Store.head`: kept when every row is compacted), rows, bytes on disk
    (table and indexes) and compacted horizon."""
    row = connection.execute(
        "SELECT coalesce((SELECT max(seq) FROM changes), 0), (SELECT count(*) FROM changes), "
        "pg_total_relation_size('changes'), "
        "coalesce((SELECT value::bigint FROM meta WHERE key = 'log_compacted_through'), 0)"
    ).fetchone()
    assert row is not None
    newest, rows, size, compacted = (int(value) for value in row)
    return {"head": max(newest, compacted), "rows": rows, "bytes": size, "compacted_through": compacted}


def register_conditions(url: str, count: int) -> None:
    """`count` conditions, each a trained phrasing made distinct, all ready before any add."""
    for number in range(count):
        text = f"{PHRASINGS[number % len(PHRASINGS)]} (view {number})"
        httpx.post(f"{url}/collections/{COLLECTION}/conditions", json={"instruction": text},
                   timeout=60).raise_for_status()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        conditions = httpx.get(f"{url}/collections/{COLLECTION}/conditions", timeout=60).json()
        if all(c["status"] == "ready" for c in conditions):
            return
        time.sleep(0.5)
    raise TimeoutError("conditions not ready within 120 s")


def indexed_everywhere(urls: list[str], items: int) -> bool:
    """Whether every gateway's index of every condition holds `items` vectors, waiting up to SETTLE_S."""
    deadline = time.monotonic() + SETTLE_S
    while time.monotonic() < deadline:
        counts = [c["index_in_use"]["vectors"] if c["index_in_use"] else 0 for url in urls
                  for c in httpx.get(f"{url}/collections/{COLLECTION}/conditions", timeout=60).json()]
        if all(count == items for count in counts):
            return True
        time.sleep(1)
    return False


def measure(
    family: str, writes: int, conditions: int, batch: int, max_minutes: float, directory: Path
) -> dict[str, Any]:
    retention = LogRetention.of(Settings().log_retention_s)
    repository = repository_of("demo")
    if not (repository / f"{family}_image").is_dir():
        raise SystemExit(f"{repository} has no {family} family: run `make demo-repository`")
    with LocalPostgres() as postgres:
        database = postgres.create_database("compaction")
        settings = {"database_url": database, "families": json.dumps([family])}
        configs = [(directory / f"{name}.log", {**settings, "data_dir": str(directory / name)}) for name in "ab"]
        with gateway_processes(repository, configs) as started, \
                psycopg.connect(database, autocommit=True) as connection:
            urls = [url for url, _ in started]
            httpx.post(f"{urls[0]}/collections", json={"name": COLLECTION, "model": family},
                       timeout=60).raise_for_status()
            register_conditions(urls[0], conditions)
            writer = Writer(Workload.colorshape(), batch)
            threads = [threading.Thread(target=writer.run, args=(url,), daemon=True) for url in urls]
            samples: list[dict[str, Any]] = []
            started_at = time.monotonic()
            for thread in threads:
                thread.start()
            while time.monotonic() - started_at < 60 * max_minutes:
                samples.append({"second": time.monotonic() - started_at, **log_state(connection)})
                if samples[-1]["head"] >= writes:
                    break
                time.sleep(1)
            writer.stop.set()
            for thread in threads:
                thread.join(timeout=120)
            elapsed = time.monotonic() - started_at
            complete = indexed_everywhere(urls, writer.acknowledged)
            final = log_state(connection)
    rate = samples[-1]["head"] / samples[-1]["second"]
    return {
        "family": family, "writes": final["head"], "items": writer.acknowledged, "conditions": conditions,
        "seconds": elapsed,
        "writes_per_s": rate, "failed": writer.failed, "indexed_everywhere": complete,
        "heartbeat_s": retention.heartbeat_s, "retention_s": retention.retention_s, "batch": retention.batch,
        "expected_bound": 2 * rate * retention.heartbeat_s, "samples": samples, "final": final,
    }


def table(result: dict[str, Any]) -> str:
    samples = result["samples"]
    settled = [s for s in samples if s["head"] >= 0.1 * result["writes"]]  # past the first tenth: the steady state
    max_rows = max(s["rows"] for s in samples)
    rows = [
        ["writes (log rows ever written)", f"{result['writes']:,}"],
        [f"items added x conditions of {result['family']}", f"{result['items']:,} x {result['conditions']}"],
        ["write rate, rows/s", f"{result['writes_per_s']:,.0f}"],
        ["heartbeat_s (from log_retention_s = {:g})".format(result["retention_s"]), f"{result['heartbeat_s']:g}"],
        ["expected bound 2 x rate x heartbeat_s", f"{result['expected_bound']:,.0f}"],
        ["log rows, max over the run", f"{max_rows:,}"],
        ["log rows, median after the first tenth", f"{sorted(s['rows'] for s in settled)[len(settled) // 2]:,}"],
        ["log rows at the end", f"{result['final']['rows']:,}"],
        ["log on disk (table + index), max / end, MB",
         f"{max(s['bytes'] for s in samples) / 2**20:.1f} / {result['final']['bytes'] / 2**20:.1f}"],
        ["log on disk after the first tenth, min - max, MB",
         f"{min(s['bytes'] for s in settled) / 2**20:.1f} - {max(s['bytes'] for s in settled) / 2**20:.1f}"],
        ["failed adds (status and code: count)", json.dumps(result["failed"]) if result["failed"] else "none"],
        ["both gateways index every vector at the end", "yes" if result["indexed_everywhere"] else "**no**"],
    ]
    return markdown_table(["", "value"], rows)


def plot(result: dict[str, Any], path: Path) -> Path:
    from benchmarks.plots import plt, save_figure  # matplotlib only where a figure is drawn

    samples = result["samples"]
    writes = [s["head"] / 1000 for s in samples]
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    axes[0].plot(writes, [s["rows"] for s in samples], label="log rows")
    axes[0].axhline(result["expected_bound"], color="grey", linestyle="--", label="2 x rate x heartbeat_s")
    axes[0].set(xlabel="writes, thousands", ylabel="change log rows")
    axes[0].legend()
    axes[1].plot(writes, [s["bytes"] / 2**20 for s in samples])
    axes[1].set(xlabel="writes, thousands", ylabel="change log on disk, MB")
    for axis in axes:
        axis.grid(True, alpha=0.3)
    return save_figure(figure, path)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=1_000_000)
    parser.add_argument("--conditions", type=int, default=32)
    parser.add_argument("--batch", type=int, default=64, help="items per add")
    parser.add_argument("--max-minutes", type=float, default=30.0, help="stops there even short of --writes")
    parser.add_argument("--family", choices=FAMILIES, default=FAMILIES[0])
    output_arguments(parser, "compaction.png")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="compaction-") as directory:
        result = measure(args.family, args.writes, args.conditions, args.batch, args.max_minutes, Path(directory))
    command = command_of("benchmarks.compaction", argv)
    tables = {"compaction": table(result)}
    plot(result, args.plot)
    return finished(result, command, tables, args.json)


if __name__ == "__main__":
    main()
