"""A soak run: two gateways on one PostgreSQL under mixed traffic for a long while, sampled every
interval, to show that nothing grows that should not (memory, open files, threads, connections, the
change log) and that latency holds.

    python -m benchmarks.soak [--minutes 30] [--sample-s 60] [--json PATH] [--plot PATH]
    python -m benchmarks --parts soak

Traffic, closed loop, bounded in time: adds of small batches, deletes of items added earlier,
searches (text queries, both gateways in turn), and a new condition registered after the first
sample and then every few samples. Each sample records, per gateway process: resident memory, open
files, threads; the database's connections from the gateways; the change log's rows; and the
interval's search p99 and 5xx count. At the end every acknowledged item that was not deleted must be
stored.

The goals hold after the first fifth of the run, the warm-up, in which every kind of traffic has
run once (a condition's build included): memory and open files within 10%, search p99 within 20%
(medians of the first and last three samples); no thread or connection growth; zero 5xx; nothing
acknowledged lost. Threads and connections come from pools that fill on demand up to a cap (the
event loop's executor, `min(32, cores + 4)` threads; the database pool, 8) and may shrink again, so
growth is judged on their peaks: the last third of the samples may not peak above the first.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
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

COLLECTION = "soak"
ADD_BATCH = 4
SIZE = 400  # items the collection holds once warm
WARM_UP_SHARE = 0.2  # the first fifth of the samples: models warm, caches filled, indexes rebuilt
GOALS = {"memory": 0.10, "open_files": 0.10, "p99": 0.20}


def proc_status(pid: int) -> dict[str, int]:
    """Resident memory (bytes), threads and open files of one process, from /proc."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {"rss": int(fields["VmRSS"].split()[0]) * 1024, "threads": int(fields["Threads"]),
            "open_files": len(os.listdir(f"/proc/{pid}/fd"))}


class Traffic:
    """The mixed load, in one thread per gateway: what was acknowledged, latencies and errors per interval."""

    def __init__(self, urls: list[str], workload: Workload, seed: int = 7) -> None:
        self.urls, self.workload = urls, workload
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.kept: set[str] = set()  # acknowledged adds, less acknowledged deletes
        self.next_id = 0
        self.latencies: list[float] = []
        self.server_errors = 0
        self.requests = 0
        self.stop = threading.Event()

    def run(self, url: str) -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            while not self.stop.is_set():
                roll = self.random.random()
                if roll < 0.3 and len(self.kept) < SIZE:  # grows to its size, then turns over: memory need not grow
                    self._add(http)
                elif roll < 0.4:
                    self._delete(http)
                else:
                    self._search(http)

    def _count(self, response: httpx.Response) -> httpx.Response:
        with self.lock:
            self.requests += 1
            self.server_errors += response.status_code >= 500
        return response

    def _add(self, http: httpx.Client) -> None:
        with self.lock:
            ids = [f"s{self.next_id + k}" for k in range(ADD_BATCH)]
            self.next_id += ADD_BATCH
        items = [{"id": item_id, "image": self.workload.image_b64(int(item_id[1:]))} for item_id in ids]
        if self._count(http.post(f"/collections/{COLLECTION}/items", json={"items": items})).status_code == 201:
            with self.lock:
                self.kept.update(ids)

    def _delete(self, http: httpx.Client) -> None:
        with self.lock:
            if len(self.kept) < 50:
                return
            victim = self.random.choice(sorted(self.kept))
            self.kept.discard(victim)  # gone or going: not counted as kept either way
        self._count(http.delete(f"/collections/{COLLECTION}/items/{victim}"))

    def _search(self, http: httpx.Client) -> None:
        body = {"collection": COLLECTION, "condition": PHRASINGS[0], "k": 10,
                "query": {"text": self.random.choice(["red", "blue", "a circle", "a green square"])}}
        started = time.perf_counter()
        answer = self._count(http.post("/search", json=body))
        if answer.status_code == 200:
            with self.lock:
                self.latencies.append(time.perf_counter() - started)

    def interval(self) -> tuple[list[float], int, int]:
        """(search latencies, 5xx, requests) since the last call."""
        with self.lock:
            taken = (self.latencies, self.server_errors, self.requests)
            self.latencies, self.server_errors, self.requests = [], 0, 0
        return taken


def sample(processes: list[int], database: str, traffic: Traffic, elapsed_s: float) -> dict[str, Any]:
    latencies, errors, requests = traffic.interval()
    with psycopg.connect(database, autocommit=True) as connection:
        connections = _count(connection, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                         "AND pid <> pg_backend_pid()")
        log_rows = _count(connection, "SELECT count(*) FROM changes")
    statuses = [proc_status(pid) for pid in processes]
    latencies.sort()
    return {
        "minute": elapsed_s / 60, "requests": requests, "server_errors": errors,
        "search_p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))] if latencies else None,
        "rss_mb": sum(s["rss"] for s in statuses) / 2**20, "threads": sum(s["threads"] for s in statuses),
        "open_files": sum(s["open_files"] for s in statuses), "db_connections": connections,
        "log_rows": log_rows,
    }


def _count(connection: psycopg.Connection[Any], query: str) -> int:
    row = connection.execute(query.encode()).fetchone()
    return int(row[0]) if row else 0


def verdict(samples: list[dict[str, Any]], missing: int, server_errors: int) -> dict[str, Any]:
    settled = samples[max(1, int(len(samples) * WARM_UP_SHARE)):] or samples

    def ends(key: str) -> tuple[float, float]:
        """Medians of the first and the last three settled samples: a build's passing threads and
        connections, or one slow interval, are not growth."""
        values = [s[key] for s in settled if s[key] is not None]
        return statistics.median(values[:3]), statistics.median(values[-3:])

    def growth(key: str) -> float:
        first, last = ends(key)
        return (last - first) / first if first else 0.0

    def peak_added(key: str) -> float:
        """How far the last third's peak is above the first third's: a pool at its cap adds nothing, a leak does."""
        third = max(1, len(settled) // 3)
        return max(s[key] for s in settled[-third:]) - max(s[key] for s in settled[:third])

    checks = {
        "memory_growth": (growth("rss_mb"), growth("rss_mb") <= GOALS["memory"]),
        "open_files_growth": (growth("open_files"), growth("open_files") <= GOALS["open_files"]),
        "threads_peak_growth": (peak_added("threads"), peak_added("threads") <= 0),
        "connections_peak_growth": (peak_added("db_connections"), peak_added("db_connections") <= 0),
        "search_p99_drift": (growth("search_p99_ms"), abs(growth("search_p99_ms")) <= GOALS["p99"]),
        "server_errors": (server_errors, server_errors == 0),
        "acknowledged_missing": (missing, missing == 0),
        "log_rows_max": (max(s["log_rows"] for s in samples), True),
    }
    return {name: {"value": value, "met": met} for name, (value, met) in checks.items()}


def measure(minutes: float, sample_s: float, directory: Path) -> dict[str, Any]:
    repository, workload = repository_of("demo"), Workload.colorshape()
    with LocalPostgres() as postgres:
        database = postgres.create_database("soak")
        settings = {"database_url": database, "families": json.dumps(["demo"]), "log_retention_s": "600"}
        configs = [(directory / f"{name}.log", {**settings, "data_dir": str(directory / name)}) for name in "ab"]
        with gateway_processes(repository, configs) as started:
            urls, processes = [url for url, _ in started], [process.pid for _, process in started]
            httpx.post(f"{urls[0]}/collections", json={"name": COLLECTION, "model": "demo"}, timeout=60)
            httpx.post(f"{urls[0]}/collections/{COLLECTION}/conditions", json={"instruction": PHRASINGS[0]}, timeout=60)
            traffic = Traffic(urls, workload)
            threads = [threading.Thread(target=traffic.run, args=(url,), daemon=True) for url in urls]
            for thread in threads:
                thread.start()
            samples, errors, started_at = [], 0, time.monotonic()
            conditions = iter(PHRASINGS[1:])
            while (elapsed := time.monotonic() - started_at) < 60 * minutes:
                time.sleep(min(sample_s, max(0.0, 60 * minutes - elapsed)))
                samples.append(sample(processes, database, traffic, time.monotonic() - started_at))
                errors += samples[-1]["server_errors"]
                if len(samples) % 5 == 1 and (text := next(conditions, None)) is not None:  # the first in warm-up
                    httpx.post(f"{urls[len(samples) % 2]}/collections/{COLLECTION}/conditions",
                               json={"instruction": text}, timeout=60)
            traffic.stop.set()
            for thread in threads:
                thread.join(timeout=120)
            stored = {entry["id"] for entry in _all_items(urls[1])}
    missing = len(traffic.kept - stored)
    return {"samples": samples, "verdict": verdict(samples, missing, errors), "kept": len(traffic.kept),
            "minutes": minutes, "sample_s": sample_s}


def _all_items(url: str) -> list[dict[str, Any]]:
    items, after = [], ""
    while True:
        page = httpx.get(f"{url}/collections/{COLLECTION}/items", params={"after": after, "limit": 1000},
                         timeout=60).json()
        items += page["items"]
        if page["next_after"] is None:
            return items
        after = page["next_after"]


def table(result: dict[str, Any]) -> str:
    rows = [[f"{s['minute']:.1f}", s["requests"], s["server_errors"], _number(s["search_p99_ms"]),
             f"{s['rss_mb']:.0f}", s["open_files"], s["threads"], s["db_connections"], s["log_rows"]]
            for s in result["samples"]]
    samples = markdown_table(["minute", "requests", "5xx", "search p99 ms", "RSS MB (2 gateways)", "open files",
                              "threads", "DB connections", "log rows"], rows)
    goals = markdown_table(["check", "value", "met"],
                           [[name, _number(check["value"]), "yes" if check["met"] else "**no**"]
                            for name, check in result["verdict"].items()])
    return f"{samples}\n\n{goals}\n\nItems kept (acknowledged, not deleted) at the end: {result['kept']}."


def _number(value: float | int | None) -> str:
    return "-" if value is None else f"{value:.3g}" if isinstance(value, float) else str(value)


def plot(result: dict[str, Any], path: Path) -> Path:
    from benchmarks.plots import plt, save_figure  # matplotlib only where a figure is drawn

    samples = result["samples"]
    minutes = [s["minute"] for s in samples]
    figure, axes = plt.subplots(1, 3, figsize=(15, 4))
    for axis, (key, label) in zip(axes, [("rss_mb", "resident memory, MB"), ("search_p99_ms", "search p99, ms"),
                                          ("log_rows", "change log rows")]):
        axis.plot(minutes, [s[key] for s in samples], marker="o")
        axis.set(xlabel="minute", ylabel=label)
        axis.grid(True, alpha=0.3)
    return save_figure(figure, path)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--sample-s", type=float, default=60.0)
    output_arguments(parser, "soak.png")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="soak-") as directory:
        result = measure(args.minutes, args.sample_s, Path(directory))
    command = command_of("benchmarks.soak", argv)
    tables = {"soak": table(result)}
    plot(result, args.plot)
    return finished(result, command, tables, args.json)


if __name__ == "__main__":
    main()
