"""What keys and limits cost a request: one gateway without keys beside one with them, the same
single-image `/embed` load on each in turn, in one run (the demo family).

    .venv/bin/python -m benchmarks.access [--concurrency 32] [--seconds S] [--rounds 2]

- open: no keys (the embedded default);
- key: a key with a grant (a SHA-256 of the presented key finds its verified entry, the grant is
  checked in memory);
- key + limits: the same with every limit set (requests, images, a burst, concurrency), high enough
  never to refuse: each request is counted against quotas leased from the store in shares, and
  holds a request slot. The store's writes for it are counted from the shares the gateway took.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

import httpx

from benchmarks.fronts import repository_of
from benchmarks.http_load import encode_post
from benchmarks.http_load import run as run_load
from benchmarks.report import command_of, machine, markdown_table
from benchmarks.workload import PHRASINGS, Workload
from focalserve_devtools.launch import gateway_process

ADMIN_KEY = "benchmark-admin-key"
LIMITS = {"requests": 10_000_000, "images": 10_000_000, "window_s": 60, "burst": 1_000_000, "concurrency": 4096}
CONFIGS = ("open", "key", "key + limits")


def requests_for(workload: Workload, key: str | None) -> list[bytes]:
    headers = {"Authorization": f"Bearer {key}"} if key else None
    bodies = [{"model": "demo", "inputs": [{"image": workload.image_b64(n),
                                            "instruction": PHRASINGS[n % len(PHRASINGS)]}]}
              for n in range(len(workload.images))]
    return [encode_post("/embed", "127.0.0.1", json.dumps(body).encode(), headers=headers) for body in bodies]


def make_key(url: str, name: str, limits: dict[str, int]) -> str:
    answer = httpx.post(f"{url}/admin/keys", headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30,
                        json={"name": name, "grants": [{"collections": "*", "action": "read"}], "limits": limits})
    answer.raise_for_status()
    return str(answer.json()["key"])


def measure(concurrency: int, seconds: float, rounds: int, directory: Path) -> dict[str, Any]:
    repository, workload = repository_of("demo"), Workload.colorshape()
    common = {"families": json.dumps(["demo"])}
    opened = gateway_process(repository, directory / "open.log", data_dir=str(directory / "open"), **common)
    keyed = gateway_process(repository, directory / "keyed.log", data_dir=str(directory / "keyed"),
                            admin_key=ADMIN_KEY, **common)
    with opened as (open_url, _), keyed as (keyed_url, _):
        loads = {"open": (open_url, requests_for(workload, None)),
                 "key": (keyed_url, requests_for(workload, make_key(keyed_url, "plain", {}))),
                 "key + limits": (keyed_url, requests_for(workload, make_key(keyed_url, "limited", LIMITS)))}
        for url, requests in loads.values():  # warm every path
            run_load(url, requests, concurrency, max_requests=4 * concurrency, max_seconds=seconds)
        measured: dict[str, list[dict[str, Any]]] = {name: [] for name in CONFIGS}
        for _ in range(rounds):  # in turn, so drift of the machine falls on every configuration alike
            for name, (url, requests) in loads.items():
                measured[name].append(run_load(url, requests, concurrency, max_requests=500_000,
                                               max_seconds=seconds).summary())
        shares = httpx.get(f"{keyed_url}/metrics", timeout=10).text
    rows = [{"config": name, "requests": sum(int(run["requests"]) for run in runs),
             "errors": sum(int(run["errors"]) for run in runs),
             "requests_per_s": statistics.mean(float(run["requests_per_s"]) for run in runs),
             "p50_ms": statistics.mean(float(run["p50_ms"] or 0) for run in runs),
             "p99_ms": statistics.mean(float(run["p99_ms"] or 0) for run in runs)} for name, runs in measured.items()]
    return {"rows": rows, "leases": _leases(shares)}


def _leases(metrics: str) -> int:
    """Shares leased from the store, every quota together, from the gateway's `/metrics`."""
    return sum(int(float(line.rsplit(" ", 1)[1])) for line in metrics.splitlines()
               if line.startswith("focalserve_quota_leases_total{"))


def table(result: dict[str, Any]) -> str:
    rows = result["rows"]
    base = rows[0]["requests_per_s"]
    body = [[row["config"], f"{row['requests_per_s']:.0f}", f"{row['requests_per_s'] / base:.3f}",
             f"{row['p50_ms']:.2f}", f"{row['p99_ms']:.2f}", str(row["requests"]), str(row["errors"])] for row in rows]
    limited = rows[-1]["requests"]
    note = (f"\n\nStore writes for the limits: {result['leases']} quota leases for {limited} limited requests "
            f"(and their warm-up), one per share, not one per request.")
    return markdown_table(["", "req/s", "x open", "p50 ms", "p99 ms", "requests", "errors"], body) + note


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="access-") as directory:
        result = measure(args.concurrency, args.seconds, args.rounds, Path(directory))
    command = command_of("benchmarks.access", argv)
    tables = {"access": table(result)}
    print(tables["access"])
    return {"command": command, "machine": machine(), **result, "tables": tables}


if __name__ == "__main__":
    main()
