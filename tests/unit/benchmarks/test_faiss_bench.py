"""The FAISS benchmark's index part at a tiny size: its data, its numbers and its report.

The /search part starts a gateway, which integration tests cover; nothing here does.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import benchmarks.report
from benchmarks.faiss_bench import IndexSettings, Mixture, bench_index, exact_top_k, main
from focalserve_server.collections.indexes import INDEX_KINDS, IndexParams

DIM = 64
N = 3000
K = 10
# IVF-PQ trains at the second add of 500 (threshold 1000), so it is approximate here as it is at scale.
SETTINGS = IndexSettings(params=IndexParams(ivf_nlist=16, train_min_vectors=1000), add_chunk=500,
                         build_budget_s=0, k=K, single_queries=20, single_seconds=2)
MIXTURE = Mixture(dim=DIM, clusters=30)

pytestmark = pytest.mark.usefixtures("one_faiss_thread")


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    return MIXTURE.base(N), MIXTURE.queries(50)


def test_mixture_is_normalised_reproducible_and_queries_are_not_in_the_base(data):
    base, queries = data
    assert base.dtype == np.float32 and base.shape == (N, DIM)
    np.testing.assert_allclose(np.linalg.norm(base, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(MIXTURE.base(N), base)
    assert not np.array_equal(Mixture(dim=DIM, clusters=30, seed=1).base(N), base)
    assert (queries @ base.T).max() < 1 - 1e-4


def test_mixture_is_clustered(data):
    """A query's nearest neighbour is much closer than a random vector: the data has structure."""
    base, queries = data
    nearest = exact_top_k(base, queries, 1)
    assert np.mean([hits[0][1] for hits in nearest]) > np.mean(queries @ base[:100].T) + 0.3


@pytest.mark.parametrize("kind", INDEX_KINDS)
def test_bench_index_reports_every_field(data, kind):
    base, queries = data
    row = bench_index(kind, base, queries, exact_top_k(base, queries, K), SETTINGS)
    assert row["kind"] == kind and row["size"] == row["built"] == N
    assert row["build_s"] > 0 and row["batch_qps"] > 0 and row["batch_queries"] == len(queries)
    assert 0 < row["single_p50_ms"] <= row["single_p99_ms"]
    assert row["single_queries"] == 20 and row["projected_build_s"] is None and row["trained"]
    assert 0.0 <= row["recall_at_k"] <= 1.0
    if kind == "flat":
        assert row["recall_at_k"] == 1.0
    assert row["nlist"] == (16 if kind == "ivfpq" else None)


def test_a_build_over_budget_is_partial_and_scored_on_what_was_built(data):
    base, queries = data
    settings = IndexSettings(add_chunk=500, build_budget_s=1e-9, k=K, single_queries=5)
    row = bench_index("flat", base, queries, exact_top_k(base, queries, K), settings)
    assert row["built"] == 500 and row["size"] == N
    assert row["projected_build_s"] == pytest.approx(row["build_s"] * N / 500)
    assert row["recall_at_k"] == 1.0  # the truth was recomputed over the 500 built rows


def test_main_prints_tables_and_saves_json(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(benchmarks.report, "RESULTS_DIR", tmp_path)
    argv = ["--parts", "indexes", "--sizes", "1000", "--dim", "32", "--clusters", "20", "--queries", "20",
            "--single-queries", "5", "--threads", "1"]
    main(argv)
    saved = json.loads((tmp_path / "faiss.json").read_text())
    assert saved["command"].endswith("-m benchmarks.faiss_bench " + " ".join(argv))
    assert saved["settings"]["faiss_threads"] == 1 and "cpu" in saved["machine"] and "search" not in saved
    assert [row["kind"] for row in saved["indexes"]] == list(INDEX_KINDS)
    assert "| 1000 | hnsw |" in capsys.readouterr().out
