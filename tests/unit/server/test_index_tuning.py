"""Approximate indexes are tuned to a recall target when built: search parameters rise until
recall@10 on the collection's own vectors meets it, within a latency budget, and options a user
set are kept."""

from __future__ import annotations

import numpy as np
import pytest

from focalserve_server.collections.index_kinds import HNSWConfig, IVFPQConfig, RecallTarget
from focalserve_server.collections.indexes import VectorIndex
from focalserve_server.collections.tuning import tune

DIM = 32


@pytest.fixture(scope="module")
def uneven() -> tuple[np.ndarray, np.ndarray]:
    """8,000 unit vectors in clusters of very uneven sizes (a few huge and dense, many small)."""
    generator = np.random.default_rng(3)
    sizes = np.maximum(4, (4000 / np.arange(1, 60) ** 1.3).astype(int))
    centres = generator.standard_normal((len(sizes), DIM))
    vectors = np.concatenate([centre + generator.standard_normal((size, DIM)) * 0.3
                              for centre, size in zip(centres, sizes)])[:8000].astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.arange(len(vectors), dtype=np.int64), vectors


LOOSE = IVFPQConfig(nlist=64, nprobe=1, pq_m=8, pq_nbits=6, refine="flat", k_factor=2)


def test_ivfpq_parameters_rise_until_the_target_is_met(uneven):
    ids, vectors = uneven
    index = VectorIndex.build(DIM, LOOSE, ids, vectors)
    tune(index, ids, vectors, RecallTarget(recall=0.01, budget_ms=1000), fixed=set())
    first = index.recall
    assert first is not None and first < 0.95 and index.config == LOOSE  # met at once: nothing raised

    tune(index, ids, vectors, RecallTarget(recall=0.95, budget_ms=1000), fixed=set())
    assert index.recall is not None and index.recall >= 0.95
    assert isinstance(index.config, IVFPQConfig)
    assert index.config.nprobe > LOOSE.nprobe and index.config.k_factor > LOOSE.k_factor
    assert index.describe()["recall_at_10"] == index.recall


def test_options_the_user_set_are_kept_and_the_budget_stops_the_raising(uneven):
    ids, vectors = uneven
    index = VectorIndex.build(DIM, LOOSE, ids, vectors)
    tune(index, ids, vectors, RecallTarget(recall=0.99, budget_ms=1000), fixed={"nprobe"})
    assert isinstance(index.config, IVFPQConfig) and index.config.nprobe == LOOSE.nprobe
    assert index.config.k_factor > LOOSE.k_factor

    index = VectorIndex.build(DIM, LOOSE, ids, vectors)
    tune(index, ids, vectors, RecallTarget(recall=0.99, budget_ms=1e-9), fixed=set())
    assert index.config == LOOSE and index.recall is not None  # measured, but no raise fits the budget


def test_hnsw_raises_ef_search_and_the_recall_survives_a_snapshot(uneven, tmp_path):
    ids, vectors = uneven
    index = VectorIndex.build(DIM, HNSWConfig(m=8, ef_construction=40, ef_search=1), ids, vectors)
    tune(index, ids, vectors, RecallTarget(recall=0.95, budget_ms=1000), fixed=set())
    assert isinstance(index.config, HNSWConfig) and index.config.ef_search > 1 and index.recall >= 0.95
    index.save(tmp_path / "hnsw.index")
    loaded = VectorIndex.load(tmp_path / "hnsw.index")
    assert (loaded.config, loaded.recall) == (index.config, index.recall)
