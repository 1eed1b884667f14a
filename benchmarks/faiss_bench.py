"""FAISS benchmark: the index kinds at scale, and /search end to end against FAISS called directly.

Part `indexes` builds every kind (`flat`, `hnsw`, `ivfpq`, `auto`) as a condition of that kind gets
it from the gateway's background rebuild: `index_kinds.choose` sizes the config for the base set,
`VectorIndex.build` trains it (IVF-PQ) and adds everything. Vectors are synthetic by default, a
mixture of Gaussian clusters on the unit sphere (clusters give IVF lists and HNSW neighbourhoods
something to find; uniform noise would make every method look equally bad), or any float32
arrays from `--vectors` / `--query-vectors` (normalised here, as the gateway's are). HNSW, built
insert by insert, stops at `--build-budget-s` and is reported as partial, with its search numbers
and recall measured on the part that was built and a projected full build time.

Part `search` starts a real gateway on the demo family, loads a collection through the SDK and
drives /search with item-id and text queries; the same-sized index searched in-process gives the
floor, so the p50 ratio shows what HTTP, JSON and the service add.

    .venv/bin/python -m benchmarks.faiss_bench --sizes 100000 1000000
    .venv/bin/python -m benchmarks.faiss_bench --parts indexes --vectors base.npy --query-vectors q.npy \
        --kinds ivfpq auto --json rows.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from benchmarks.clients import search_json
from benchmarks.loadgen import run_load
from benchmarks.report import machine, markdown_table, percentiles_ms, save_json
from benchmarks.targets import http_session
from focalserve_client import Client
from focalserve_client.schemas import IndexKind
from focalserve_devtools.launch import running_gateway
from focalserve_server.collections.index_kinds import INDEX_KINDS, AutoPolicy, HNSWConfig, IndexPolicy, choose
from focalserve_server.collections.indexes import Hit, VectorIndex, recall_at_k
from focalserve_server.config import Settings
from focalserve_training.data import COLOR_NAMES, ColorShapeGenerator

WORK_DIR = Path(__file__).parent / ".work"
QUERY_KINDS = ("item_id", "text")
_CENTRES, _BASE, _QUERIES = 0, 1, 2  # random streams: base and queries never share a draw
_SAMPLE_CHUNK = 16384  # rows generated at a time: bounds the temporaries, not the output
_HNSW_CHUNK = 16384  # vectors per add while an HNSW build watches its time budget


@dataclass(frozen=True)
class Mixture:
    """Isotropic Gaussian clusters around random centres, L2-normalised, float32, reproducible.

    `spread` is the per-dimension deviation around a centre whose coordinates have deviation 1:
    1.0 puts two points of one cluster at cosine ~0.5, and points of different clusters at ~0.
    """

    dim: int = 512
    clusters: int = 1000
    spread: float = 1.0
    seed: int = 0

    def sample(self, n: int, stream: int) -> np.ndarray:
        """n vectors of one random stream, filled in place a chunk at a time (no full-size copy)."""
        centres = np.random.default_rng([self.seed, _CENTRES]).standard_normal(
            (self.clusters, self.dim), dtype=np.float32)
        rng = np.random.default_rng([self.seed, stream])
        out = np.empty((n, self.dim), dtype=np.float32)
        for start in range(0, n, _SAMPLE_CHUNK):
            part = out[start:start + _SAMPLE_CHUNK]
            rng.standard_normal(dtype=np.float32, out=part)
            part *= self.spread
            part += centres[rng.integers(self.clusters, size=len(part))]
            part /= np.linalg.norm(part, axis=1, keepdims=True)
        return out

    def base(self, n: int) -> np.ndarray:
        return self.sample(n, _BASE)

    def queries(self, n: int) -> np.ndarray:
        return self.sample(n, _QUERIES)


def exact_top_k(base: np.ndarray, queries: np.ndarray, k: int) -> list[list[Hit]]:
    """Ground truth by exhaustive inner product; ids are row numbers, as `build` assigns them.

    `faiss.knn` runs IndexFlatIP's search kernel on `base` in place, so the truth costs no copy
    of a 2 GB base set.
    """
    scores, rows = faiss.knn(queries, base, k, metric=faiss.METRIC_INNER_PRODUCT)
    return [[(int(r), float(s)) for r, s in zip(row, row_scores) if r >= 0]
            for row, row_scores in zip(rows, scores)]


@dataclass(frozen=True)
class IndexSettings:
    """How each index is built and searched; every loop is bounded in count and in time."""

    policy: IndexPolicy = field(default_factory=IndexPolicy)
    build_budget_s: float = 90.0  # HNSW only (the one kind built by plain adds); 0: unbounded
    k: int = 10
    single_queries: int = 200
    single_seconds: float = 10.0


@dataclass(frozen=True)
class Built:
    index: VectorIndex
    seconds: float


def build(kind: IndexKind, base: np.ndarray, settings: IndexSettings) -> Built:
    """The index a condition of `kind` gets for `base` (id = row number), built as the gateway's
    background rebuild builds it. HNSW, which FAISS builds insert by insert, stops at the budget."""
    dim = base.shape[1]
    config = choose(kind, len(base), dim, settings.policy.defaults, settings.policy.auto)
    ids = np.arange(len(base), dtype=np.int64)
    began = time.perf_counter()
    if not isinstance(config, HNSWConfig):
        return Built(VectorIndex.build(dim, config, ids, base), time.perf_counter() - began)
    index = VectorIndex(dim, config)
    for start in range(0, len(base), _HNSW_CHUNK):  # at least one chunk, then as the budget allows
        index.add(ids[start:start + _HNSW_CHUNK], base[start:start + _HNSW_CHUNK])
        if settings.build_budget_s and time.perf_counter() - began >= settings.build_budget_s:
            break
    index.built_for = len(index)
    return Built(index, time.perf_counter() - began)


def single_latencies(index: VectorIndex, queries: np.ndarray, k: int, count: int, seconds: float) -> list[float]:
    """Seconds per one-query search, sequentially, after one unmeasured warm-up query."""
    index.search(queries[:1], k)
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    for row in range(min(count, len(queries))):
        if time.perf_counter() >= deadline:
            break
        began = time.perf_counter()
        index.search(queries[row:row + 1], k)
        latencies.append(time.perf_counter() - began)
    return latencies


def bench_index(
    kind: IndexKind, base: np.ndarray, queries: np.ndarray, truth: list[list[Hit]], settings: IndexSettings
) -> dict[str, Any]:
    """Build time, memory, batch QPS, single-query latency and recall@k of one kind on one base set."""
    built = build(kind, base, settings)
    size = len(built.index)
    if size < len(base):  # stopped by the budget: score against the part that was built
        truth = exact_top_k(base[:size], queries, settings.k)
    began = time.perf_counter()
    found = built.index.search(queries, settings.k)
    batch_s = time.perf_counter() - began
    latencies = single_latencies(built.index, queries, settings.k, settings.single_queries, settings.single_seconds)
    single = percentiles_ms(latencies)
    config = built.index.config
    return {
        "kind": kind,
        "factory": config.factory(),
        "size": len(base),
        "built": size,
        "build_s": built.seconds,
        # partial builds only; linear, so a lower bound for HNSW, whose inserts slow as it grows
        "projected_build_s": built.seconds * len(base) / size if size < len(base) else None,
        "bytes_per_vector": config.bytes_per_vector(base.shape[1]),
        "batch_queries": len(queries),
        "batch_qps": len(queries) / batch_s,
        "single_queries": len(latencies),
        "single_p50_ms": single["p50_ms"],
        "single_p99_ms": single["p99_ms"],
        f"recall_at_{settings.k}": recall_at_k(truth, found, settings.k),
    }


@dataclass(frozen=True)
class Vectors:
    """The base and query sets: a synthetic mixture, or float32 arrays from .npy files."""

    mixture: Mixture
    base_file: Path | None = None
    query_file: Path | None = None

    @property
    def dim(self) -> int:
        return int(np.load(self.base_file, mmap_mode="r").shape[1]) if self.base_file else self.mixture.dim

    def base(self, n: int) -> np.ndarray:
        if self.base_file is None:
            return self.mixture.base(n)
        return _normalised(np.load(self.base_file, mmap_mode="r")[:n])

    def queries(self, n: int) -> np.ndarray:
        if self.query_file is None:
            return replace(self.mixture, dim=self.dim).queries(n)
        return _normalised(np.load(self.query_file, mmap_mode="r")[:n])


def _normalised(rows: np.ndarray) -> np.ndarray:
    """float32, unit length (the gateway's vectors are; files may hold anything)."""
    vectors = np.array(rows, dtype=np.float32)
    faiss.normalize_L2(vectors)
    return vectors


def bench_indexes(
    sizes: list[int], kinds: list[IndexKind], vectors: Vectors, n_queries: int, settings: IndexSettings
) -> list[dict[str, Any]]:
    """Every kind at every size; one base set in memory at a time (1M x 512 float32 is 2 GB)."""
    queries = vectors.queries(n_queries)
    rows = []
    for size in sizes:
        base = vectors.base(size)
        _progress(f"{len(base)} vectors of dim {base.shape[1]}: exact top-{settings.k}, then {kinds}")
        truth = exact_top_k(base, queries, settings.k)
        for kind in kinds:
            rows.append(bench_index(kind, base, queries, truth, settings))
            _progress(f"{len(base)} {kind} ({rows[-1]['factory']}): built {rows[-1]['built']} in "
                      f"{rows[-1]['build_s']:.1f} s, recall@{settings.k} {rows[-1][f'recall_at_{settings.k}']:.3f}")
        del base, truth
    return rows


# -- /search end to end ------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadSettings:
    """Bounds of each closed-loop /search run and of the in-process comparison."""

    requests: int = 1000
    seconds: float = 10.0
    warmup: int = 20
    concurrencies: tuple[int, ...] = (1, 16)
    k: int = 10


def item_id(number: int) -> str:
    return f"shape-{number}"


def load_collection(url: str, name: str, items: int, instruction: str, kind: IndexKind) -> dict[str, Any]:
    """Create the collection, add ColorShape images, register the condition and wait for its index."""
    shapes = ColorShapeGenerator(seed=1)
    with Client(url, timeout=120) as client:
        dim = client.create_collection(name, index=kind).dim
        began = time.perf_counter()
        client.add_items(name, ((item_id(i), shapes.sample(i).image) for i in range(items)))
        added = time.perf_counter()
        client.add_condition(name, instruction, index=kind)
        client.wait_for_condition(name, instruction, timeout=600)
        ready = time.perf_counter()
    return {"name": name, "items": items, "dim": dim, "instruction": instruction, "index": kind,
            "add_items_s": added - began, "condition_build_s": ready - added}


def search_body(collection: dict[str, Any], query_kind: str, k: int, number: int) -> dict[str, Any]:
    """Item queries walk the collection; text queries cycle through the colour names."""
    if query_kind == "item_id":
        query = {"item_id": item_id(number % collection["items"])}
    else:
        query = {"text": COLOR_NAMES[number % len(COLOR_NAMES)]}
    return {"collection": collection["name"], "condition": collection["instruction"], "query": query, "k": k}


async def gateway_load(
    url: str, collection: dict[str, Any], query_kind: str, concurrency: int, load: LoadSettings
) -> dict[str, Any]:
    """One closed-loop run of POST /search (aiohttp, as the serving benchmark: see benchmarks/clients.py)."""
    body = partial(search_body, collection, query_kind, load.k)
    async with http_session() as session:
        result = await run_load(search_json(session, url, body), concurrency, max_requests=load.requests,
                                max_seconds=load.seconds, warmup_requests=load.warmup)
    return result.summary()


def direct_search(items: int, dim: int, kind: IndexKind, mixture: Mixture, load: LoadSettings) -> dict[str, float]:
    """The floor: VectorIndex.search in-process, one query at a time, on an index like the gateway's."""
    data = replace(mixture, dim=dim)
    index = build(kind, data.base(items), IndexSettings()).index
    latencies = single_latencies(index, data.queries(load.requests), load.k, load.requests, load.seconds)
    return {"requests": len(latencies), "requests_per_s": len(latencies) / sum(latencies), **percentiles_ms(latencies)}


def bench_search(
    repository: Path, items: int, instruction: str, kind: IndexKind, mixture: Mixture, load: LoadSettings
) -> dict[str, Any]:
    """/search latency and throughput per query kind and concurrency, with its ratio to direct FAISS."""
    WORK_DIR.mkdir(exist_ok=True)
    log = WORK_DIR / "faiss_gateway.log"
    log.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="focalserve-faiss-bench-") as data_dir, \
            running_gateway(repository, log, data_dir=data_dir) as url:
        collection = load_collection(url, "bench", items, instruction, kind)
        _progress(f"{items} items added in {collection['add_items_s']:.1f} s, condition built in "
                  f"{collection['condition_build_s']:.1f} s; driving /search (gateway log: {log})")
        runs = [{"query": query_kind, **asyncio.run(gateway_load(url, collection, query_kind, concurrency, load))}
                for query_kind in QUERY_KINDS for concurrency in load.concurrencies]
    direct = direct_search(items, collection["dim"], kind, mixture, load)
    for run in runs:
        run["p50_ratio"] = run["p50_ms"] / direct["p50_ms"]
    return {"collection": collection, "gateway": runs, "direct": direct}


# -- report and command line ---------------------------------------------------------------------


def index_table(rows: list[dict[str, Any]], k: int) -> str:
    headers = ["size", "kind", "FAISS index", "built", "build s", "full build s (projected)", "bytes / vector",
               "batch QPS", "single p50 ms", "single p99 ms", f"recall@{k}"]
    return markdown_table(headers, [
        [r["size"], r["kind"], f"`{r['factory']}`", r["built"], r["build_s"], r["projected_build_s"] or "-",
         r["bytes_per_vector"], r["batch_qps"], r["single_p50_ms"], r["single_p99_ms"], r[f"recall_at_{k}"]]
        for r in rows])


def search_table(result: dict[str, Any]) -> str:
    headers = ["path", "query", "concurrency", "requests", "errors", "QPS", "p50 ms", "p99 ms", "p50 / direct"]
    direct = result["direct"]
    rows = [["gateway /search", r["query"], r["concurrency"], r["requests"], r["errors"], r["requests_per_s"],
             r["p50_ms"], r["p99_ms"], r["p50_ratio"]] for r in result["gateway"]]
    rows.append(["VectorIndex.search", "vector", 1, direct["requests"], 0, direct["requests_per_s"],
                 direct["p50_ms"], direct["p99_ms"], 1.0])
    return markdown_table(headers, rows)


def parse_args(argv: list[str]) -> argparse.Namespace:
    defaults, load = IndexSettings(), LoadSettings()
    parser = argparse.ArgumentParser(prog="python -m benchmarks.faiss_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", nargs="+", choices=["indexes", "search"], default=["indexes", "search"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[100_000, 1_000_000],
                        help="base set sizes (with --vectors: the first rows of the file; default: all of it)")
    parser.add_argument("--kinds", nargs="+", choices=INDEX_KINDS, default=list(INDEX_KINDS))
    parser.add_argument("--vectors", type=Path, help="float32 .npy (n, d) base vectors instead of synthetic ones")
    parser.add_argument("--query-vectors", type=Path, help="float32 .npy (m, d) queries (default: synthetic)")
    parser.add_argument("--json", type=Path, help="also write the index rows to this file, as a JSON list")
    parser.add_argument("--dim", type=int, default=Mixture.dim)
    parser.add_argument("--clusters", type=int, default=Mixture.clusters)
    parser.add_argument("--spread", type=float, default=Mixture.spread)
    parser.add_argument("--seed", type=int, default=Mixture.seed)
    parser.add_argument("--queries", type=int, default=1000, help="batch queries; also the recall set")
    parser.add_argument("--single-queries", type=int, default=defaults.single_queries)
    parser.add_argument("--single-seconds", type=float, default=defaults.single_seconds)
    parser.add_argument("--exact-max", type=int, default=Settings.model_fields["index_exact_max"].default,
                        help="`auto` is exact up to this many vectors (the gateway's index_exact_max)")
    parser.add_argument("--memory-budget-mb", type=int,
                        default=Settings.model_fields["index_memory_budget_mb"].default,
                        help="`auto` re-ranks with exact vectors while the index fits this (index_memory_budget_mb)")
    parser.add_argument("--build-budget-s", type=float, default=defaults.build_budget_s,
                        help="stop an HNSW build past this many seconds and report it as partial; 0: unbounded")
    parser.add_argument("--threads", type=int, default=1,
                        help="faiss OpenMP threads here (the gateway leaves faiss at all cores). 1 by default: on "
                             "2 cores shared with other jobs, 2 spin-waiting threads made single flat queries 9x "
                             "and the IVF-PQ build 4x slower; give the core count on a dedicated machine")
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--search-items", type=int, default=2000)
    parser.add_argument("--search-index", choices=INDEX_KINDS, default="flat")
    parser.add_argument("--instruction", default="what colour is the shape?")
    parser.add_argument("--search-requests", type=int, default=load.requests)
    parser.add_argument("--search-seconds", type=float, default=load.seconds)
    parser.add_argument("--concurrency", nargs="+", type=int, default=list(load.concurrencies))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    gateway_threads = faiss.omp_get_max_threads()  # what a fresh process, such as the gateway, starts with
    faiss.omp_set_num_threads(args.threads)
    mixture = Mixture(args.dim, args.clusters, args.spread, args.seed)
    vectors = Vectors(mixture, args.vectors, args.query_vectors)
    policy = IndexPolicy(auto=AutoPolicy(args.exact_max, args.memory_budget_mb << 20))
    settings = IndexSettings(policy=policy, build_budget_s=args.build_budget_s,
                             single_queries=args.single_queries, single_seconds=args.single_seconds)
    payload: dict[str, Any] = {
        "machine": machine(),
        "command": shlex.join([sys.executable, "-m", "benchmarks.faiss_bench", *argv]),
        "settings": {**vars(args), **{key: str(getattr(args, key)) for key in ("repository", "vectors",
                                                                              "query_vectors", "json")},
                     "faiss_threads": faiss.omp_get_max_threads(), "gateway_faiss_threads": gateway_threads,
                     "k": settings.k},
    }
    if "indexes" in args.parts:
        sizes = args.sizes if args.vectors is None or "--sizes" in argv else [len(np.load(args.vectors,
                                                                                          mmap_mode="r"))]
        payload["indexes"] = bench_indexes(sizes, args.kinds, vectors, args.queries, settings)
        payload.setdefault("tables", {})["faiss_indexes"] = index_table(payload["indexes"], settings.k)
        print(payload["tables"]["faiss_indexes"], end="\n\n")
        if args.json is not None:
            args.json.write_text(json.dumps(payload["indexes"], indent=2))
    if "search" in args.parts:
        load = LoadSettings(args.search_requests, args.search_seconds, concurrencies=tuple(args.concurrency))
        payload["search"] = bench_search(args.repository, args.search_items, args.instruction, args.search_index,
                                         mixture, load)
        payload.setdefault("tables", {})["faiss_search"] = search_table(payload["search"])
        print(payload["tables"]["faiss_search"], end="\n\n")
    print(f"saved {save_json('faiss', payload)}")
    return payload


def _progress(message: str) -> None:
    print(f"[faiss_bench] {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
