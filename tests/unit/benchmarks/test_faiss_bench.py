"""The FAISS benchmark's index part at a tiny size: its data, its numbers and its report.

The /search part starts a gateway, which integration tests cover; nothing here does.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import benchmarks.report
from benchmarks import faiss_bench
from benchmarks.faiss_bench import IndexSettings, Mixture, bench_index, exact_top_k, main
from focalserve_client.schemas import IndexOptions
from focalserve_server.collections.index_kinds import INDEX_KINDS, AutoPolicy, IndexPolicy

DIM = 64
N = 3000
K = 10
# 16 lists of 4-bit codes train on N vectors, so IVF-PQ (and `auto`, past exact_max) is approximate
# here as it is at scale.
POLICY = IndexPolicy(defaults=IndexOptions(nlist=16, pq_nbits=4), auto=AutoPolicy(exact_max=1000))
SETTINGS = IndexSettings(policy=POLICY, build_budget_s=0, k=K, single_queries=20, single_seconds=2)
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
    assert row["single_queries"] == 20 and row["projected_build_s"] is None
    assert 0.0 <= row["recall_at_10"] <= 1.0 and row["bytes_per_vector"] > 0
    if kind == "flat":
        assert row["recall_at_10"] == 1.0 and row["factory"] == "Flat"
    if kind in ("ivfpq", "auto"):
        assert row["factory"].startswith("IVF16,PQ16x4np")


def test_an_hnsw_build_over_budget_is_partial_and_scored_on_what_was_built(data, monkeypatch):
    monkeypatch.setattr(faiss_bench, "_HNSW_CHUNK", 500)
    base, queries = data
    settings = IndexSettings(build_budget_s=1e-9, k=K, single_queries=5)
    row = bench_index("hnsw", base, queries, exact_top_k(base, queries, K), settings)
    assert row["built"] == 500 and row["size"] == N
    assert row["projected_build_s"] == pytest.approx(row["build_s"] * N / 500)
    assert row["recall_at_10"] >= 0.9  # the truth was recomputed over the 500 built rows


def test_main_prints_tables_and_saves_json(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(benchmarks.report, "RESULTS_DIR", tmp_path)
    argv = ["--parts", "indexes", "--sizes", "1000", "--dim", "32", "--clusters", "20", "--queries", "20",
            "--single-queries", "5", "--threads", "1"]
    main(argv)
    saved = json.loads((tmp_path / "faiss.json").read_text())
    assert saved["command"].endswith("-m benchmarks.faiss_bench " + " ".join(argv))
    assert saved["settings"]["faiss_threads"] == 1 and "cpu" in saved["machine"] and "search" not in saved
    assert [row["kind"] for row in saved["indexes"]] == list(INDEX_KINDS)
    assert "| 1000 | hnsw | `HNSW32` |" in capsys.readouterr().out


def test_vectors_from_files_and_rows_as_json(tmp_path, monkeypatch):
    """Any float32 arrays, of any dimension, normalised or not; the rows come back as a JSON list."""
    monkeypatch.setattr(benchmarks.report, "RESULTS_DIR", tmp_path)
    rng = np.random.default_rng(0)
    np.save(tmp_path / "base.npy", (3 * rng.standard_normal((800, 24))).astype(np.float32))
    np.save(tmp_path / "queries.npy", rng.standard_normal((10, 24)).astype(np.float32))
    main(["--parts", "indexes", "--vectors", str(tmp_path / "base.npy"), "--query-vectors",
          str(tmp_path / "queries.npy"), "--kinds", "flat", "auto", "--json", str(tmp_path / "rows.json"),
          "--single-queries", "5"])
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert [(row["kind"], row["size"], row["factory"]) for row in rows] == [("flat", 800, "Flat"),
                                                                             ("auto", 800, "Flat")]
    assert all({"recall_at_10", "single_p99_ms", "build_s", "bytes_per_vector"} <= set(row) for row in rows)
    assert rows[0]["recall_at_10"] == 1.0
