"""Search parameters tuned to a recall target, as autofaiss tunes its indexes: when an approximate
index is built, recall@10 is measured against exact search on a sample of the collection's own
vectors, and `nprobe` and `k_factor` (IVF-PQ) or `ef_search` (HNSW) are doubled until the target is
met or a query would take longer than the budget. Defaults sized on one set of vectors do not hold
on every other: on 200k x 512 held-out vectors with very uneven clusters, IVF-PQ at its defaults
measured recall@10 0.947.

Only search parameters change (the index is not rebuilt), and only those the condition's options
and the gateway's defaults leave unset: an explicit `nprobe` is the user's choice, measured and
reported but kept.
"""

from __future__ import annotations

import time
from dataclasses import replace

import faiss
import numpy as np

from focalserve_server.collections.index_kinds import HNSWConfig, IndexConfig, IVFPQConfig, RecallTarget
from focalserve_server.collections.indexes import VectorIndex, recall_at_k

RECALL_K = 10
SAMPLE_QUERIES = 200  # queries drawn from the collection's vectors: a recall estimate within ~0.01
MAX_EF_SEARCH = 2048
MAX_K_FACTOR = 1024


def tune(index: VectorIndex, ids: np.ndarray, vectors: np.ndarray, target: RecallTarget, fixed: set[str]) -> None:
    """Raise `index`'s search parameters not named in `fixed` until recall@10 over a sample of
    `vectors` (the ones it holds, under `ids`) meets the target or the budget stops it, and record
    the recall measured with the parameters kept. Exact indexes are left as they are."""
    if not isinstance(index.config, (IVFPQConfig, HNSWConfig)) or len(ids) <= RECALL_K:
        return
    chosen = np.sort(np.random.default_rng(0).choice(len(ids), min(SAMPLE_QUERIES, len(ids)), replace=False))
    queries = np.ascontiguousarray(vectors[chosen])
    _, nearest = faiss.knn(queries, vectors, RECALL_K, faiss.METRIC_INNER_PRODUCT)
    exact = [[(int(ids[position]), 0.0) for position in row] for row in nearest]
    kept: tuple[IndexConfig, float] | None = None
    candidate: IndexConfig | None = index.config
    step = 0
    while candidate is not None:
        index.retune(candidate)
        started = time.perf_counter()
        found = index.search(queries, RECALL_K)
        per_query_ms = (time.perf_counter() - started) * 1000 / len(queries)
        if per_query_ms > target.budget_ms and kept is not None:
            break  # the previous parameters were the last within the budget
        kept = (candidate, recall_at_k(exact, found, RECALL_K))
        if kept[1] >= target.recall or per_query_ms > target.budget_ms:
            break
        candidate, step = _raised(candidate, fixed, step), step + 1
    assert kept is not None
    index.retune(kept[0], recall=kept[1])


def _raised(config: IndexConfig, fixed: set[str], step: int) -> IndexConfig | None:
    """The next parameters to try, or None when nothing is left to raise. IVF-PQ alternates between
    probing more lists and re-ranking more candidates, starting with the lists."""
    if isinstance(config, HNSWConfig):
        if "ef_search" in fixed or config.ef_search >= MAX_EF_SEARCH:
            return None
        return replace(config, ef_search=config.ef_search * 2)
    if not isinstance(config, IVFPQConfig):
        return None
    more_lists = None if "nprobe" in fixed or config.nprobe >= config.nlist else \
        replace(config, nprobe=min(config.nlist, config.nprobe * 2))
    more_candidates = None if "k_factor" in fixed or config.refine == "none" or config.k_factor >= MAX_K_FACTOR \
        else replace(config, k_factor=config.k_factor * 2)
    first, second = (more_lists, more_candidates) if step % 2 == 0 else (more_candidates, more_lists)
    return first or second
