"""Replication benchmark: gateways that share their collections through one PostgreSQL.

Three measurements in one run, everything on 127.0.0.1: a private PostgreSQL (the tests'
`LocalPostgres`) and gateways started by `focalserve_devtools.launch`, on the demo family.

1. scaling: adds/s (batches of ColorShape images, one condition registered) and /search QPS
   (closed loop), first against ONE replica, then against N replicas on one database with the
   requests spread round-robin. Each cell records where the CPU went (the gateways, PostgreSQL,
   this load generator, everything else on the machine), and each add cell how busy the
   database's log lock was (sampled from `pg_locks`); a direct `put_items` of one batch gives the
   time a write holds that lock, so the most adds/s one database can take.
2. lag: a one-image add on replica A, then replica B searched (min_seq=0) until the item appears,
   which B sees when it next follows the log (every `log_poll_interval_s`); and the same write
   read through B with A's `FocalServe-Seq` as `min_seq` (B's follower is woken at once).
3. catch-up: vectors of the family's dimension written straight through `PostgresStore.put_items`
   (no embedding), then a gateway timed from process start to /readyz 200: on an empty database
   (start-up alone), on the full one from an empty data dir (rebuilt from the store), and from the
   snapshot it saved at SIGTERM plus a log tail written since; each kind twice, in rounds of opposite
   order, with the gateway's own CPU seconds beside the wall time (which other work on the machine
   stretches).

    python -m benchmarks.replication [--parts scaling lag catchup] [--replicas 3] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import random
import shlex
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import numpy as np
import orjson
import psycopg
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.clients import JSON_HEADERS, search_json
from benchmarks.faiss_bench import Mixture
from benchmarks.loadgen import Send, run_load
from benchmarks.report import machine, markdown_table, percentiles_ms, save_json
from benchmarks.targets import http_session
from benchmarks.workload import Workload
from focalserve_client.instructions import normalise_instruction
from focalserve_client.schemas import SEQ_HEADER
from focalserve_devtools.launch import gateway_process, gateway_processes
from focalserve_devtools.postgres import LocalPostgres
from focalserve_family.config import families_from_configs, read_repository
from focalserve_server.collections.indexes import VectorIndex
from focalserve_server.collections.model import NewItem
from focalserve_server.collections.postgres import LOG_LOCK, PostgresStore
from focalserve_server.collections.replica import LOG_PAGE
from focalserve_server.config import Settings
from focalserve_training.data import COLOR_NAMES

WORK_DIR = Path(__file__).parent / ".work" / "replication"
MODEL = "demo"
COLLECTION = "bench"
CATCHUP_COLLECTION = "catchup"
INSTRUCTION = "what colour is the shape?"
QUERY_KINDS = ("item_id", "text")
MAX_REQUESTS = 100_000  # cells are bounded by --seconds; this only keeps the count finite too
READY_TIMEOUT_S = 120.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Plan:
    """Sizes and bounds of one run; every loop stops at a count and at a time."""

    replicas: int = 3
    batch: int = 16  # images per add request
    add_clients: int = 3
    search_clients: int = 6
    seconds: float = 8.0  # measured part of each scaling cell
    warmup: int = 6  # requests before each cell, not measured
    lock_probes: int = 20  # direct put_items of one batch, timed
    lag_writes: int = 50
    lag_probe_s: float = 0.005  # pause between B's searches while waiting for a write
    lag_timeout_s: float = 5.0  # a write not visible on B by then counts as not visible
    poll_interval_s: float = Settings.model_fields["log_poll_interval_s"].default
    catchup_vectors: int = 100_000
    tail_vectors: int = 1_000  # written after the snapshot, replayed from the log on restart
    write_batch: int = 2_000  # vectors per put_items while loading the catch-up database
    start_rounds: int = 2  # starts of each kind


# -- CPU and lock accounting ---------------------------------------------------------------------


def process_table() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds so far) for every process we can read."""
    table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            text = Path(entry.path, "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        fields = text[text.rindex(")") + 2:].split()  # the name may hold spaces and parentheses
        table[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / CLK_TCK)
    return table


def _machine_busy_s() -> float:
    """CPU seconds every core has spent on anything but idle and I/O wait since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = values[:8]
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def descendants(table: dict[int, tuple[int, float]], roots: list[int]) -> set[int]:
    found, frontier = set(roots), list(roots)
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, (ppid, _) in table.items() if ppid == parent and pid not in found]
        found.update(children)
        frontier += children
    return found


class CpuMeter:
    """Cores kept busy by each group of processes (roots and their descendants) between start and stop.

    `loadgen` is this process alone (its children are the gateways); `other` is everything on the
    machine outside the groups: on a shared machine, other people's work.
    """

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self._groups = groups
        self._before: dict[int, tuple[int, float]] = {}
        self._began = self._busy = 0.0

    def start(self) -> None:
        self._before, self._busy, self._began = process_table(), _machine_busy_s(), time.perf_counter()

    def stop(self) -> dict[str, float]:
        after, busy, wall = process_table(), _machine_busy_s(), time.perf_counter() - self._began
        spent = {pid: cpu - self._before.get(pid, (0, 0.0))[1] for pid, (_, cpu) in after.items()}
        cores: dict[str, float] = {"loadgen": spent.get(os.getpid(), 0.0) / wall}
        for name, roots in self._groups.items():
            cores[name] = sum(spent.get(pid, 0.0) for pid in descendants(after, roots)) / wall
        cores["other"] = max(0.0, (busy - self._busy) / wall - sum(cores.values()))
        return cores


class LockSampler:
    """Samples `pg_locks` every `interval_s` in a thread: how often a writer holds the change log's
    advisory lock, and how many writers wait for it."""

    def __init__(self, database_url: str, interval_s: float = 0.01) -> None:
        self._url = database_url
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._samples: list[tuple[int, int]] = []
        self._thread = threading.Thread(target=self._run, name="lock-sampler", daemon=True)

    def __enter__(self) -> LockSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        query = ("SELECT count(*) FILTER (WHERE granted), count(*) FILTER (WHERE NOT granted) FROM pg_locks "
                 "WHERE locktype = 'advisory' AND classid::bigint = %s AND objid::bigint = %s AND objsubid = 1")
        key = (LOG_LOCK >> 32, LOG_LOCK & 0xFFFFFFFF)  # a bigint advisory key shows as two 32-bit halves
        with psycopg.connect(self._url, autocommit=True) as connection:
            while not self._stop.wait(self._interval_s):
                held, waiting = connection.execute(query, key).fetchone() or (0, 0)
                self._samples.append((int(held), int(waiting)))

    def summary(self) -> dict[str, float]:
        samples = np.asarray(self._samples or [(0, 0)], dtype=np.float64)
        return {"samples": len(self._samples), "held_fraction": float((samples[:, 0] > 0).mean()),
                "mean_waiting": float(samples[:, 1].mean())}


# -- gateways and their collection -----------------------------------------------------------------


@dataclass(frozen=True)
class Gateway:
    url: str
    pid: int


@dataclass(frozen=True)
class Dirs:
    logs: Path  # gateway logs, kept after the run (benchmarks/.work/replication)
    data: Path  # the gateways' data dirs, removed with the run


@contextmanager
def cluster(repository: Path, database_url: str, count: int, dirs: Dirs, plan: Plan) -> Iterator[list[Gateway]]:
    """`count` gateways on one database, each with its own data dir, started together; all stopped on the way out."""
    names = [f"gateway-{count}-{number}" for number in range(count)]
    configs = [(dirs.logs / f"{name}.log", {"data_dir": str(dirs.data / name), "database_url": database_url,
                                            "log_poll_interval_s": str(plan.poll_interval_s)}) for name in names]
    with gateway_processes(repository, configs) as started:
        yield [Gateway(url, process.pid) for url, process in started]


def items_body(ids: list[str], workload: Workload, first_image: int, metadata: dict[str, Any] | None = None
               ) -> dict[str, Any]:
    return {"items": [{"id": item_id, "image": workload.image_b64(first_image + n), "metadata": metadata or {}}
                      for n, item_id in enumerate(ids)]}


def _ok(response: httpx.Response) -> httpx.Response:
    if response.status_code >= 300:
        raise RuntimeError(f"{response.request.method} {response.request.url}: HTTP {response.status_code} "
                           f"{response.text[:300]}")
    return response


def prepare(gateways: list[Gateway], workload: Workload, batch: int) -> str:
    """Create the collection, register the condition, add one seed batch and wait until every replica
    has applied it; returns an item id (the anchor of item queries)."""
    with httpx.Client(base_url=gateways[0].url, timeout=120) as http:
        _ok(http.post("/collections", json={"name": COLLECTION, "model": MODEL}))
        _ok(http.post(f"/collections/{COLLECTION}/conditions", json={"instruction": INSTRUCTION}))
        deadline = time.monotonic() + READY_TIMEOUT_S
        while _ok(http.get(f"/collections/{COLLECTION}/conditions")).json()[0]["status"] != "ready":
            if time.monotonic() > deadline:
                raise TimeoutError(f"condition {INSTRUCTION!r} not ready after {READY_TIMEOUT_S} s")
            time.sleep(0.1)
        seeds = [f"seed-{n}" for n in range(batch)]
        seq = int(_ok(http.post(f"/collections/{COLLECTION}/items", json=items_body(seeds, workload, 0)))
                  .headers[SEQ_HEADER])
    for gateway in gateways:  # min_seq: answered once this replica has applied the seed batch
        _ok(httpx.post(f"{gateway.url}/search", json=probe_body(seeds[0], None, seq), timeout=60))
    return seeds[0]


def probe_body(anchor: str, probe: str | None, min_seq: int) -> dict[str, Any]:
    """A search that finds item `probe` (by its metadata) once this replica's index holds it; the
    query vector is the anchor's, read from the store, so no model runs."""
    return {"collection": COLLECTION, "condition": INSTRUCTION, "query": {"item_id": anchor}, "k": 1,
            "filter": {"probe": probe} if probe is not None else {}, "min_seq": min_seq}


# -- 1. scaling --------------------------------------------------------------------------------------


def add_sender(session: aiohttp.ClientSession, gateways: list[Gateway], workload: Workload, batch: int,
               added: list[str]) -> Send:
    """POST a batch of new items to the next replica in turn; ids never repeat, warm-up included."""
    serial = itertools.count()

    async def send(number: int) -> int:
        request = next(serial)
        ids = [f"r{request}-{n}" for n in range(batch)]
        url = gateways[request % len(gateways)].url
        body = orjson.dumps(items_body(ids, workload, request * batch))
        async with session.post(f"{url}/collections/{COLLECTION}/items", data=body, headers=JSON_HEADERS) as response:
            answer = await response.read()
            if response.status >= 300:
                raise RuntimeError(f"HTTP {response.status}: {answer[:300]!r}")
        added.extend(ids)
        return batch

    return send


def search_sender(session: aiohttp.ClientSession, gateways: list[Gateway], query_kind: str, ids: list[str]) -> Send:
    """POST /search to the next replica in turn: item queries walk the items added, text queries the colours."""

    def body(number: int) -> dict[str, Any]:
        if query_kind == "item_id":
            query = {"item_id": ids[(number * 7919) % len(ids)]}  # a stride, so neighbours are not reused
        else:
            query = {"text": COLOR_NAMES[number % len(COLOR_NAMES)]}
        return {"collection": COLLECTION, "condition": INSTRUCTION, "query": query, "k": 10}

    senders = [search_json(session, gateway.url, body) for gateway in gateways]
    return lambda number: senders[number % len(senders)](number)


async def batch_totals(session: aiohttp.ClientSession, gateways: list[Gateway], model: str) -> tuple[float, float]:
    """(items, backend calls) of `model` so far, summed over the gateways' /metrics."""
    items = calls = 0.0
    for gateway in gateways:
        async with session.get(f"{gateway.url}/metrics", raise_for_status=True) as response:
            text = await response.text()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.labels.get("model") == model and sample.name == "focalserve_batch_size_sum":
                    items += sample.value
                elif sample.labels.get("model") == model and sample.name == "focalserve_batch_size_count":
                    calls += sample.value
    return items, calls


def measure_cell(make_send: Callable[[aiohttp.ClientSession], Send], clients: int, plan: Plan,
                 groups: dict[str, list[int]], gateways: list[Gateway], model: str | None,
                 database_url: str | None = None) -> dict[str, Any]:
    """Warm up, then one closed-loop run with CPU metered, the mean batch of `model` read from /metrics,
    and, given a database, its log lock sampled."""

    async def run() -> dict[str, Any]:
        async with http_session() as session:
            send = make_send(session)
            await run_load(send, clients, max_requests=plan.warmup, max_seconds=plan.seconds)
            before = await batch_totals(session, gateways, model) if model else (0.0, 0.0)
            meter = CpuMeter(groups)
            with ExitStack() as stack:
                sampler = stack.enter_context(LockSampler(database_url)) if database_url else None
                meter.start()
                result = await run_load(send, clients, max_requests=MAX_REQUESTS, max_seconds=plan.seconds)
                cores = meter.stop()
            after = await batch_totals(session, gateways, model) if model else (0.0, 0.0)
        calls = after[1] - before[1]
        return {**result.summary(), "cores": cores, "lock": sampler.summary() if sampler else None,
                "batch_model": model, "mean_batch": (after[0] - before[0]) / calls if calls else None}

    return asyncio.run(run())


def lock_hold(database_url: str, dim: int, plan: Plan, workload: Workload) -> dict[str, float]:
    """How long one `put_items` of a batch holds the log lock (it is taken first): the floor of each add's
    serial part, with nothing else writing. Its own collection, so the benchmark's stays as measured."""
    store = PostgresStore(database_url, pool_size=1)
    try:
        store.create_collection("lockprobe", MODEL)
        condition, _, _ = store.add_condition("lockprobe", normalise_instruction(INSTRUCTION), "flat", 64)
        store.complete_build(condition.rowid)
        vectors = Mixture(dim=dim).base(plan.batch * plan.lock_probes)
        held = []
        for probe in range(plan.lock_probes):
            items = [NewItem(f"p{probe}-{n}", workload.image(n), {}, {condition.rowid: vectors[probe * plan.batch + n]})
                     for n in range(plan.batch)]
            began = time.perf_counter()
            store.put_items("lockprobe", items, {condition.rowid})
            held.append(time.perf_counter() - began)
    finally:
        store.close()
    p50_ms = percentiles_ms(held)["p50_ms"]
    return {"batch": plan.batch, "p50_ms": p50_ms, "bound_images_per_s": plan.batch / (p50_ms / 1000)}


@dataclass
class Cluster:
    """Gateways on one database, with the collection `prepare` made and the ids added to it since."""

    database_url: str
    gateways: list[Gateway]
    anchor: str
    added: list[str] = field(default_factory=list)

    @property
    def replicas(self) -> int:
        return len(self.gateways)


def bench_scaling(clusters: list[Cluster], postgres_pid: int, workload: Workload, plan: Plan) -> list[dict[str, Any]]:
    """The add cell on every cluster, then a search cell per query kind on every cluster, interleaved (in
    alternating order) so that other work on the machine drifts over both sides of each ratio alike."""
    cells: list[tuple[Cluster, str]] = []
    for step, workload_name in enumerate(["add", *(f"search {kind}" for kind in QUERY_KINDS)]):
        cells += [(c, workload_name) for c in (clusters if step % 2 == 0 else clusters[::-1])]
    rows = [scaling_cell(c, name, postgres_pid, workload, plan) for c, name in cells]
    order = ["add", *(f"search {kind}" for kind in QUERY_KINDS)]
    return sorted(rows, key=lambda row: (row["replicas"], order.index(row["workload"])))


def scaling_cell(cluster: Cluster, name: str, postgres_pid: int, workload: Workload, plan: Plan) -> dict[str, Any]:
    """One measured cell; CPU is metered for this cluster's gateways (the idle cluster's count as other work)."""
    groups = {"gateways": [g.pid for g in cluster.gateways], "postgres": [postgres_pid]}
    if name == "add":
        make_send = partial(add_sender, gateways=cluster.gateways, workload=workload, batch=plan.batch,
                            added=cluster.added)
        measured = measure_cell(make_send, plan.add_clients, plan, groups, cluster.gateways, f"{MODEL}_image",
                                cluster.database_url)
        rate, clients = measured["images_per_s"], plan.add_clients
    else:
        kind = name.removeprefix("search ")
        make_send = partial(search_sender, gateways=cluster.gateways, query_kind=kind, ids=[*cluster.added])
        model = f"{MODEL}_text" if kind == "text" else None  # an item query runs no model
        measured = measure_cell(make_send, plan.search_clients, plan, groups, cluster.gateways, model)
        rate, clients = measured["requests_per_s"], plan.search_clients
    _progress(f"{cluster.replicas} replica(s), {name}: {rate:.0f}/s, {measured['errors']} errors")
    return {"replicas": cluster.replicas, "workload": name, "clients": clients, "rate": rate,
            "collection_items": len(cluster.added) + plan.batch, **measured}


# -- 2. lag ------------------------------------------------------------------------------------------


def measure_lag(writer_gateway: Gateway, reader_gateway: Gateway, anchor: str, workload: Workload,
                plan: Plan) -> dict[str, Any]:
    """Seconds from A's acknowledgement of a one-item add to the item being found on B, both ways."""
    rng = random.Random(0)
    passive: list[float] = []
    with_seq: list[float] = []
    probes: list[float] = []
    missed = {"passive": 0, "min_seq": 0}
    with httpx.Client(base_url=writer_gateway.url, timeout=30) as writer, \
            httpx.Client(base_url=reader_gateway.url, timeout=30) as reader:
        for number in range(2 * plan.lag_writes):
            time.sleep(rng.uniform(0, plan.poll_interval_s))  # writes land at every phase of B's poll
            token = f"lag-{number}"
            response = _ok(writer.post(f"/collections/{COLLECTION}/items",
                                       json=items_body([token], workload, number, {"probe": token})))
            acked, seq = time.perf_counter(), int(response.headers[SEQ_HEADER])
            if number < plan.lag_writes:
                seen = _poll_until_visible(reader, anchor, token, acked, plan, probes)
                if seen is not None:
                    passive.append(seen)
                else:
                    missed["passive"] += 1
            else:
                found = _ok(reader.post("/search", json=probe_body(anchor, token, seq))).json()["results"]
                if found:
                    with_seq.append(time.perf_counter() - acked)
                else:
                    missed["min_seq"] += 1
    return {
        "writer": writer_gateway.url, "reader": reader_gateway.url, "poll_interval_s": plan.poll_interval_s,
        "probe_pause_ms": plan.lag_probe_s * 1000, "probe_search_p50_ms": percentiles_ms(probes)["p50_ms"],
        "passive": _lag_summary(passive, missed["passive"]), "min_seq": _lag_summary(with_seq, missed["min_seq"]),
    }


def _poll_until_visible(reader: httpx.Client, anchor: str, token: str, acked: float, plan: Plan,
                        probes: list[float]) -> float | None:
    """Search B until the item is found; the time its answer arrived, or None past the timeout."""
    body = probe_body(anchor, token, 0)
    while True:
        sent = time.perf_counter()
        found = _ok(reader.post("/search", json=body)).json()["results"]
        now = time.perf_counter()
        probes.append(now - sent)
        if found:
            return now - acked
        if now - acked > plan.lag_timeout_s:
            return None
        time.sleep(plan.lag_probe_s)


def _lag_summary(lags: list[float], missed: int) -> dict[str, Any]:
    return {"writes": len(lags) + missed, "not_visible": missed, **percentiles_ms(lags),
            "max_ms": max(lags) * 1000 if lags else float("nan")}


# -- 3. catch-up -------------------------------------------------------------------------------------


def family_dim(repository: Path, family: str) -> int:
    return families_from_configs(read_repository(repository))[family].embedding_dim


def timed_start(repository: Path, log: Path, check: bool, **settings: str) -> dict[str, Any]:
    """A gateway's start: seconds from spawning it to /readyz answering 200 (polled every 0.2 s), the CPU
    seconds it spent meanwhile, how many cores the whole machine kept busy meanwhile (the contention it
    started under), and seconds from SIGTERM to its exit (which saves the snapshots). `check`: its index
    must answer a search."""
    began, busy = time.perf_counter(), _machine_busy_s()
    with gateway_process(repository, log, **settings) as (url, process):
        ready_s = time.perf_counter() - began
        machine_cores = (_machine_busy_s() - busy) / ready_s
        table = process_table()
        gateway_cpu_s = sum(table[pid][1] for pid in descendants(table, [process.pid]) if pid in table)
        if check:
            body = {"collection": CATCHUP_COLLECTION, "condition": INSTRUCTION, "query": {"item_id": "v0"}, "k": 5}
            hits = _ok(httpx.post(f"{url}/search", json=body, timeout=30)).json()["results"]
            if len(hits) != 5:
                raise RuntimeError(f"the caught-up replica found {len(hits)} of 5 neighbours")
        stopping = time.perf_counter()
    return {"ready_s": ready_s, "gateway_cpu_s": gateway_cpu_s, "machine_cores": machine_cores,
            "stop_s": time.perf_counter() - stopping}


def write_vectors(store: PostgresStore, condition: int, vectors: np.ndarray, first: int, plan: Plan,
                  workload: Workload) -> float:
    """Items v{first}... with the given vectors (tiny PNGs as their images), `write_batch` per put_items."""
    began = last_report = time.perf_counter()
    for start in range(0, len(vectors), plan.write_batch):
        items = [NewItem(f"v{first + start + n}", workload.image(start + n), {}, {condition: vector})
                 for n, vector in enumerate(vectors[start:start + plan.write_batch])]
        store.put_items(CATCHUP_COLLECTION, items, {condition})
        if time.perf_counter() - last_report > 15:
            last_report = time.perf_counter()
            _progress(f"catch-up: {start + len(items)} of {len(vectors)} vectors written")
    return time.perf_counter() - began


def load_catchup_database(store: PostgresStore, dim: int, plan: Plan, workload: Workload) -> tuple[int, float]:
    """The collection with one ready condition and `catchup_vectors` items; (condition rowid, seconds)."""
    store.create_collection(CATCHUP_COLLECTION, MODEL)
    condition, _, _ = store.add_condition(CATCHUP_COLLECTION, normalise_instruction(INSTRUCTION), "flat", 64)
    store.complete_build(condition.rowid)  # no items yet: nothing to backfill
    seconds = write_vectors(store, condition.rowid, Mixture(dim=dim).base(plan.catchup_vectors), 0, plan, workload)
    return condition.rowid, seconds


def rebuild_parts(store: PostgresStore, condition: int, dim: int) -> dict[str, float]:
    """What a replica with no snapshot does at start, in this process: read every vector, add them to FAISS."""
    began = time.perf_counter()
    ids, vectors = store.all_vectors(condition)
    read_s = time.perf_counter() - began
    began = time.perf_counter()
    VectorIndex(dim).add(ids, vectors)
    return {"read_vectors_s": read_s, "faiss_add_s": time.perf_counter() - began, "vectors": len(ids)}


def replay_parts(store: PostgresStore, snapshot: Path, after: int) -> dict[str, float]:
    """What a replica with a snapshot does at start, in this process: load it, read the log tail and its vectors."""
    began = time.perf_counter()
    VectorIndex.load(snapshot)
    load_s = time.perf_counter() - began
    began = time.perf_counter()
    changes = 0
    while page := store.changes(after, LOG_PAGE):
        store.vectors_of([(c.condition, c.item) for c in page if c.condition is not None and c.item is not None])
        changes, after = changes + len(page), page[-1].seq
    return {"snapshot_load_s": load_s, "read_tail_s": time.perf_counter() - began, "tail_changes": changes}


START_KINDS = ("empty database", "from nothing", "from snapshot + tail")


def start_order(rounds: int) -> list[str]:
    """Each kind of start `rounds` times, every other round in reverse, so that each kind meets the
    machine's other work early and late alike; less the first start from nothing, which comes before
    the tail is written (it makes the snapshot the others copy)."""
    order = [kind for r in range(rounds) for kind in (START_KINDS if r % 2 else START_KINDS[::-1])]
    order.remove("from nothing")
    return order


def bench_catchup(postgres: LocalPostgres, repository: Path, dirs: Dirs, plan: Plan,
                  workload: Workload) -> dict[str, Any]:
    """Load the database, start from nothing (its snapshot at SIGTERM is the one later starts copy), write
    the tail, then the other starts; an empty database of its own gives the start-up alone."""
    urls = {"full": postgres.create_database("catchup"), "empty": postgres.create_database("catchup_empty")}
    dim = family_dim(repository, MODEL)
    log, first = dirs.logs / "catchup.log", dirs.data / "catchup-0"
    starts: dict[str, list[dict[str, Any]]] = {kind: [] for kind in START_KINDS}
    store = PostgresStore(urls["full"])
    try:
        _progress(f"catch-up: writing {plan.catchup_vectors} vectors of dim {dim} through PostgresStore.put_items")
        condition, write_s = load_catchup_database(store, dim, plan, workload)
        rebuild = rebuild_parts(store, condition, dim)
        starts["from nothing"].append(timed_start(repository, log, True, data_dir=str(first),
                                                  database_url=urls["full"]))
        snapshot = first / "indexes" / f"{condition}.index"
        snapshot_seq = int(VectorIndex.load(snapshot).snapshot_meta["seq"])
        tail = Mixture(dim=dim, seed=1).base(plan.tail_vectors)
        tail_write_s = write_vectors(store, condition, tail, plan.catchup_vectors, plan, workload)
        replay = replay_parts(store, snapshot, snapshot_seq)
        head = store.head()
    finally:
        store.close()
    for number, kind in enumerate(start_order(plan.start_rounds), start=1):
        data = dirs.data / f"catchup-{number}"
        if kind == "from snapshot + tail":
            shutil.copytree(first, data)  # the snapshot as saved, before the tail: each start replays it
        url = urls["empty"] if kind == "empty database" else urls["full"]
        starts[kind].append(timed_start(repository, log, kind != "empty database", data_dir=str(data),
                                        database_url=url))
    _progress("catch-up, best start: " + ", ".join(f"{kind} {best(runs)['ready_s']:.1f} s"
                                                    for kind, runs in starts.items()))
    return {"vectors": plan.catchup_vectors, "dim": dim, "tail_vectors": plan.tail_vectors, "head": head,
            "write_s": write_s, "write_vectors_per_s": plan.catchup_vectors / write_s, "tail_write_s": tail_write_s,
            "snapshot_seq": snapshot_seq, "snapshot_bytes": snapshot.stat().st_size,
            "starts": starts, "rebuild": rebuild, "replay": replay}


def best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The fastest start of a kind: the one least delayed by other work on the machine."""
    return min(runs, key=lambda run: run["ready_s"])


# -- the run -----------------------------------------------------------------------------------------


def postmaster_pid(postgres: LocalPostgres) -> int:
    return int((postgres.data_dir / "postmaster.pid").read_text().split()[0])


def bench_clusters(postgres: LocalPostgres, repository: Path, dirs: Dirs, plan: Plan, parts: list[str],
                   workload: Workload) -> dict[str, Any]:
    """One replica and `plan.replicas` replicas, each on a database of its own, running side by side
    (the idle one only follows its log); the scaling cells interleaved, then the lag on the larger."""
    result: dict[str, Any] = {"scaling": [], "lock_hold": None, "lag": None}
    counts = [1, plan.replicas] if "scaling" in parts else [plan.replicas]
    with ExitStack() as stack:
        clusters = []
        for count in counts:
            url = postgres.create_database(f"replicas_{count}")
            _progress(f"starting {count} gateway(s) on one database (logs: {dirs.logs})")
            gateways = stack.enter_context(cluster(repository, url, count, dirs, plan))
            clusters.append(Cluster(url, gateways, prepare(gateways, workload, plan.batch)))
        larger = clusters[-1]
        if "scaling" in parts:
            result["scaling"] = bench_scaling(clusters, postmaster_pid(postgres), workload, plan)
        if "lag" in parts:
            result["lag"] = lag = measure_lag(larger.gateways[0], larger.gateways[1], larger.anchor, workload, plan)
            _progress(f"lag: passive p99 {lag['passive']['p99_ms']:.0f} ms, "
                      f"min_seq p99 {lag['min_seq']['p99_ms']:.0f} ms")
        if "scaling" in parts:
            result["lock_hold"] = lock_hold(larger.database_url, family_dim(repository, MODEL), plan, workload)
    return result


def run(args: argparse.Namespace, plan: Plan) -> dict[str, Any]:
    workload = Workload.colorshape(count=64)
    shutil.rmtree(WORK_DIR, ignore_errors=True)
    WORK_DIR.mkdir(parents=True)
    payload: dict[str, Any] = {}
    with LocalPostgres() as postgres, tempfile.TemporaryDirectory(prefix="focalserve-replication-") as data:
        dirs = Dirs(WORK_DIR, Path(data))
        if {"scaling", "lag"} & set(args.parts):
            payload.update(bench_clusters(postgres, args.repository, dirs, plan, args.parts, workload))
        if "catchup" in args.parts:
            payload["catchup"] = bench_catchup(postgres, args.repository, dirs, plan, workload)
    return payload


# -- report ------------------------------------------------------------------------------------------


def scaling_table(rows: list[dict[str, Any]]) -> str:
    headers = ["replicas", "workload", "clients", "requests", "errors", "rate", "vs 1 replica", "p50 ms", "p99 ms",
               "mean model batch", "log lock held", "writers waiting", "gateway CPU ms per image/query",
               "cores: gateways", "postgres", "load generator", "other"]
    one = {row["workload"]: row["rate"] for row in rows if row["replicas"] == 1}
    table = []
    for row in rows:
        unit = "images/s" if row["workload"] == "add" else "QPS"
        lock, cores = row["lock"], row["cores"]
        table.append([row["replicas"], row["workload"], row["clients"], row["requests"], row["errors"],
                      f"{row['rate']:.1f} {unit}", _ratio(row["rate"], one.get(row["workload"])),
                      row["p50_ms"], row["p99_ms"], row["mean_batch"] or "-",
                      f"{lock['held_fraction']:.0%}" if lock else "-", lock["mean_waiting"] if lock else "-",
                      _cpu_ms(row), cores["gateways"],
                      cores["postgres"], cores["loadgen"], cores["other"]])
    return markdown_table(headers, table)


def _ratio(value: float, base: float | None) -> str:
    return f"{value / base:.2f}x" if base else "-"


def lag_table(lag: dict[str, Any]) -> str:
    headers = ["how B reads the write", "writes", "not visible", "p50 ms", "p95 ms", "p99 ms", "max ms",
               "p99 < 1 s"]
    labels = {"passive": f"follows the log on its own (poll {lag['poll_interval_s']:g} s); searched with min_seq=0 "
                         "until found",
              "min_seq": "searched once with A's FocalServe-Seq as min_seq"}
    rows = []
    for key, label in labels.items():
        s = lag[key]
        meets = s["not_visible"] == 0 and s["p99_ms"] < 1000
        rows.append([label, s["writes"], s["not_visible"], s["p50_ms"], s["p95_ms"], s["p99_ms"], s["max_ms"],
                     "**yes**" if meets else "**no**"])
    return markdown_table(headers, rows)


def catchup_table(catchup: dict[str, Any]) -> str:
    headers = ["start", "vectors in the database", "log tail applied", "process start to /readyz 200 s, each",
               "best s", "best beyond an empty database's best s", "gateway CPU s to ready (best)",
               "machine cores busy (best)", "SIGTERM to exit s (saves snapshots)"]
    base = best(catchup["starts"]["empty database"])["ready_s"]
    vectors = {"empty database": "0", "from nothing": f"{catchup['vectors']} (then {catchup['tail_vectors']} more)",
               "from snapshot + tail": str(catchup["vectors"] + catchup["tail_vectors"])}
    tails = {"empty database": "-", "from nothing": "- (rebuilt from the vectors table)",
             "from snapshot + tail": f"{catchup['head'] - catchup['snapshot_seq']} changes"}
    rows = []
    for kind, runs in catchup["starts"].items():
        fastest = best(runs)
        rows.append([kind, vectors[kind], tails[kind], ", ".join(f"{run['ready_s']:.1f}" for run in runs),
                     fastest["ready_s"], fastest["ready_s"] - base, fastest["gateway_cpu_s"],
                     fastest["machine_cores"], max(run["stop_s"] for run in runs)])
    return markdown_table(headers, rows)


def summary(payload: dict[str, Any], plan: Plan) -> str:
    """The run's numbers in sentences: ratios, where the time went, the lag target, catch-up parts."""
    lines = scaling_sentences(payload, plan) if payload.get("scaling") else []
    if payload.get("lag"):
        lines.append(lag_sentence(payload["lag"]))
    if payload.get("catchup"):
        lines.append(catchup_sentence(payload["catchup"]))
    return "\n".join(lines)


def scaling_sentences(payload: dict[str, Any], plan: Plan) -> list[str]:
    by = {(row["replicas"], row["workload"]): row for row in payload["scaling"]}
    n = plan.replicas
    one, many = by[(1, "add")], by[(n, "add")]
    cores = many["cores"]
    lines = [f"- **Adds** ({plan.batch} images a request, {plan.add_clients} clients): {one['rate']:.0f} images/s on "
             f"one replica, {many['rate']:.0f} on {n} ({_ratio(many['rate'], one['rate'])}), in image-model "
             f"batches of {one['mean_batch'] or 0:.1f} and {many['mean_batch'] or 0:.1f}. On {n} replicas all "
             f"processes together kept {sum(cores.values()):.2f} of {os.cpu_count()} cores busy (gateways "
             f"{cores['gateways']:.2f}, PostgreSQL {cores['postgres']:.2f}, load generator {cores['loadgen']:.2f}, "
             f"other work on the machine {cores['other']:.2f})."]
    hold = payload.get("lock_hold")
    if hold:
        lines.append(f"- **Log lock**: one {hold['batch']}-image `put_items` holds it {hold['p50_ms']:.1f} ms (p50, "
                     f"nothing else running), so one database takes at most ~{hold['bound_images_per_s']:.0f} "
                     f"images/s; the {n}-replica adds reached {many['rate'] / hold['bound_images_per_s']:.0%} of "
                     f"that. Under the add load the lock was held {many['lock']['held_fraction']:.0%} of the time "
                     f"({_held_ms(one, plan):.0f} ms per batch on one replica, {_held_ms(many, plan):.0f} ms on {n}), "
                     f"with {one['lock']['mean_waiting']:.2f} and {many['lock']['mean_waiting']:.2f} writers "
                     f"waiting for it on average.")
    for kind in QUERY_KINDS:
        one, many = by[(1, f"search {kind}")], by[(n, f"search {kind}")]
        batches = (f"; text-model batches of {one['mean_batch']:.1f} -> {many['mean_batch']:.1f} queries"
                   if one["mean_batch"] and many["mean_batch"] else "")
        lines.append(f"- **/search by {kind}** ({plan.search_clients} clients): {one['rate']:.0f} QPS on one "
                     f"replica, {many['rate']:.0f} on {n} ({_ratio(many['rate'], one['rate'])}); the gateways used "
                     f"{one['cores']['gateways']:.2f} -> {many['cores']['gateways']:.2f} cores, "
                     f"{_cpu_ms(one):.1f} -> {_cpu_ms(many):.1f} ms of CPU per query{batches}.")
    return lines


def _cpu_ms(row: dict[str, Any]) -> float:
    """Gateway CPU per image added or query answered, in milliseconds."""
    return 1000 * row["cores"]["gateways"] / row["rate"] if row["rate"] else float("nan")


def _held_ms(row: dict[str, Any], plan: Plan) -> float:
    """Mean time one add's transaction held the log lock during a cell: held fraction / batches per second."""
    return 1000 * row["lock"]["held_fraction"] / (row["rate"] / plan.batch) if row["rate"] else float("nan")


def lag_sentence(lag: dict[str, Any]) -> str:
    passive, waited = lag["passive"], lag["min_seq"]
    met = passive["p99_ms"] < 1000 and not passive["not_visible"]
    return (f"- **Lag** A -> B over {passive['writes']} writes: p50 {passive['p50_ms']:.0f} ms, p99 "
            f"{passive['p99_ms']:.0f} ms following the log every {lag['poll_interval_s']:g} s (target p99 < 1 s: "
            f"{'met' if met else 'missed'}); read with min_seq, p50 {waited['p50_ms']:.0f} ms, p99 "
            f"{waited['p99_ms']:.0f} ms. Resolution: B was searched every {lag['probe_pause_ms']:g} ms plus the "
            f"search itself ({lag['probe_search_p50_ms']:.1f} ms p50).")


def catchup_sentence(catchup: dict[str, Any]) -> str:
    fastest = {kind: best(runs) for kind, runs in catchup["starts"].items()}
    empty, nothing, snapshot = (fastest[kind] for kind in START_KINDS)
    rebuild, replay = catchup["rebuild"], catchup["replay"]
    return (f"- **Catch-up** of {catchup['vectors']:,} vectors (dim {catchup['dim']}, written through `put_items` "
            f"at {catchup['write_vectors_per_s']:.0f} vectors/s), best of each kind of start: "
            f"{nothing['ready_s']:.1f} s from nothing, {snapshot['ready_s']:.1f} s from the snapshot "
            f"({catchup['snapshot_bytes'] / 1e6:.1f} MB) plus {replay['tail_changes']} changes of log tail, against "
            f"{empty['ready_s']:.1f} s for a gateway on an empty database: "
            f"{nothing['ready_s'] - empty['ready_s']:+.1f} s and {snapshot['ready_s'] - empty['ready_s']:+.1f} s "
            f"for the vectors (gateway CPU {nothing['gateway_cpu_s'] - empty['gateway_cpu_s']:+.1f} s and "
            f"{snapshot['gateway_cpu_s'] - empty['gateway_cpu_s']:+.1f} s). The parts, timed in the benchmark's "
            f"process: reading the vectors {rebuild['read_vectors_s']:.2f} s, adding them to FAISS "
            f"{rebuild['faiss_add_s']:.2f} s; loading the snapshot {replay['snapshot_load_s']:.2f} s, reading the "
            f"tail {replay['read_tail_s']:.2f} s.")


def tables(payload: dict[str, Any], plan: Plan) -> dict[str, str]:
    out = {"replication_summary": summary(payload, plan)}
    if payload.get("scaling"):
        out["replication_scaling"] = scaling_table(payload["scaling"])
    if payload.get("lag"):
        out["replication_lag"] = lag_table(payload["lag"])
    if payload.get("catchup"):
        out["replication_catchup"] = catchup_table(payload["catchup"])
    return out


def parse_args(argv: list[str]) -> argparse.Namespace:
    plan = Plan()
    parser = argparse.ArgumentParser(prog="python -m benchmarks.replication", description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", nargs="+", choices=["scaling", "lag", "catchup"],
                        default=["scaling", "lag", "catchup"])
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--replicas", type=int, default=plan.replicas, help="the larger cluster (at least 2)")
    parser.add_argument("--batch", type=int, default=plan.batch, help="images per add request")
    parser.add_argument("--add-clients", type=int, default=plan.add_clients)
    parser.add_argument("--search-clients", type=int, default=plan.search_clients)
    parser.add_argument("--seconds", type=float, default=plan.seconds, help="measured part of each scaling cell")
    parser.add_argument("--warmup", type=int, default=plan.warmup)
    parser.add_argument("--lock-probes", type=int, default=plan.lock_probes)
    parser.add_argument("--lag-writes", type=int, default=plan.lag_writes)
    parser.add_argument("--catchup-vectors", type=int, default=plan.catchup_vectors)
    parser.add_argument("--tail-vectors", type=int, default=plan.tail_vectors)
    parser.add_argument("--write-batch", type=int, default=plan.write_batch)
    parser.add_argument("--start-rounds", type=int, default=plan.start_rounds, help="catch-up starts of each kind")
    args = parser.parse_args(argv)
    if args.replicas < 2:
        parser.error("--replicas must be at least 2: the lag is measured between two replicas")
    return args


def plan_of(args: argparse.Namespace) -> Plan:
    return Plan(replicas=args.replicas, batch=args.batch, add_clients=args.add_clients,
                search_clients=args.search_clients, seconds=args.seconds, warmup=args.warmup,
                lock_probes=args.lock_probes, lag_writes=args.lag_writes, catchup_vectors=args.catchup_vectors,
                tail_vectors=args.tail_vectors, write_batch=args.write_batch, start_rounds=args.start_rounds)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    plan = plan_of(args)
    began = time.perf_counter()
    payload: dict[str, Any] = {
        "machine": machine(),
        "command": shlex.join([sys.executable, "-m", "benchmarks.replication", *argv]),
        "plan": asdict(plan),
        "parts": args.parts,
        **run(args, plan),
    }
    payload["seconds"] = time.perf_counter() - began
    payload["tables"] = tables(payload, plan)
    for table in payload["tables"].values():
        print(table, end="\n\n")
    print(f"saved {save_json('replication', payload)} after {payload['seconds']:.0f} s")
    return payload


def _progress(message: str) -> None:
    print(f"[replication] {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
