"""VectorIndex: every kind against exact inner product on clustered, normalised vectors."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest

from focalserve_server.collections.indexes import INDEX_KINDS, IndexParams, VectorIndex, recall_at_k

DIM = 32
N = 1000
# Small IVF-PQ settings so that N vectors train it and nprobe < nlist leaves lists unprobed.
SMALL_IVF = IndexParams(ivf_nlist=16, ivf_nprobe=4, train_min_vectors=400)
CONFIGS = {
    "flat": ("flat", IndexParams()),
    "hnsw": ("hnsw", IndexParams()),
    "ivfpq": ("ivfpq", SMALL_IVF),
    "ivfpq-untrained": ("ivfpq", IndexParams(train_min_vectors=10 * N)),
}

pytestmark = pytest.mark.usefixtures("one_faiss_thread")


def clustered(n: int, seed: int, dim: int = DIM, clusters: int = 40) -> np.ndarray:
    """Gaussian blobs around random centres, L2-normalised: embeddings are clustered too."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    x = centres[rng.integers(clusters, size=n)] + 0.7 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def item_ids(n: int) -> np.ndarray:
    """Sparse, non-contiguous ids, so that no code can confuse ids with positions."""
    return np.arange(n, dtype=np.int64) * 7 + 3


def brute_force(ids: np.ndarray, vectors: np.ndarray, queries: np.ndarray, k: int):
    scores = queries @ vectors.T
    best = np.argsort(-scores, axis=1)[:, :k]
    return [[(int(ids[j]), float(s[j])) for j in row] for row, s in zip(best, scores, strict=True)]


def built(config: str, n: int = N, seed: int = 0) -> tuple[VectorIndex, np.ndarray, np.ndarray]:
    kind, params = CONFIGS[config]
    ids, vectors = item_ids(n), clustered(n, seed)
    index = VectorIndex(DIM, kind, params)
    index.add(ids, vectors)
    return index, ids, vectors


def returned(results: list[list[tuple[int, float]]]) -> set[int]:
    return {item for row in results for item, _ in row}


def assert_same_hits(found, expected) -> None:
    """Same ids in the same order; scores equal up to float32 summation order."""
    assert [[i for i, _ in row] for row in found] == [[i for i, _ in row] for row in expected]
    np.testing.assert_allclose([[s for _, s in row] for row in found],
                               [[s for _, s in row] for row in expected], rtol=1e-5, atol=1e-6)


def test_flat_equals_brute_force():
    index, ids, vectors = built("flat", n=3000)
    queries = clustered(50, seed=1)
    assert_same_hits(index.search(queries, 10), brute_force(ids, vectors, queries, 10))


@pytest.mark.parametrize(("kind", "params", "minimum"), [
    ("hnsw", IndexParams(), 0.95),  # measured 1.000 on seeds 0-3
    ("ivfpq", IndexParams(ivf_nlist=64), 0.55),  # measured 0.654-0.685 on seeds 0-3
])
def test_recall_at_10_against_flat(kind, params, minimum, record_property):
    ids, sample = item_ids(4000), clustered(4200, seed=0)  # queries from the same clusters
    vectors, queries = sample[:4000], sample[4000:]
    exact = VectorIndex(DIM)
    exact.add(ids, vectors)
    index = VectorIndex(DIM, kind, params)
    index.add(ids, vectors)
    assert index.trained
    recall = recall_at_k(exact.search(queries, 10), index.search(queries, 10), 10)
    record_property("recall_at_10", recall)
    print(f"{kind} recall@10 = {recall:.3f}")
    assert recall >= minimum


def test_untrained_ivfpq_answers_exactly():
    index, ids, vectors = built("ivfpq-untrained")
    queries = clustered(20, seed=1)
    assert not index.trained
    assert_same_hits(index.search(queries, 10), brute_force(ids, vectors, queries, 10))


def test_ivfpq_trains_when_an_add_reaches_the_threshold():
    ids, vectors = item_ids(600), clustered(600, seed=0)
    index = VectorIndex(DIM, "ivfpq", IndexParams(ivf_nlist=8, train_min_vectors=500))
    index.add(ids[:499], vectors[:499])
    assert not index.trained
    index.add(ids[499:], vectors[499:])
    assert index.trained and index.ntotal == 600
    # every vector moved into the trained index: each one's id is found by filtering on it
    for item in ids[[0, 498, 499, 599]].tolist():
        [[(found, _)]] = index.search(vectors[0], 1, allowed_ids=np.array([item]))
        assert found == item


def test_automatic_sizes():
    params = IndexParams()
    assert params.nlist_for(10_000) == 400 and params.nlist_for(1) == 1
    assert params.training_threshold(10) == 1024
    assert params.training_threshold(400) == 15_600
    assert not params.ready_to_train(20_000) and params.ready_to_train(30_000)
    assert [params.pq_subquantizers(d) for d in (512, 768, 64, 32, 12, 7)] == [64, 96, 16, 8, 3, 1]
    with pytest.raises(ValueError, match="does not divide"):
        VectorIndex(DIM, "ivfpq", IndexParams(pq_m=5))


@pytest.mark.parametrize("config", CONFIGS)
def test_adding_an_existing_id_replaces_it(config):
    index, ids, vectors = built(config)
    tombstones = index.tombstones
    target, far = int(ids[5]), int(np.argmin(vectors @ vectors[5]))
    index.add(np.array([target]), vectors[far : far + 1])
    assert index.ntotal == N
    assert target not in returned(index.search(vectors[5], 10))
    hits = dict(index.search(vectors[far], 10)[0])
    assert hits[target] == pytest.approx(hits[int(ids[far])], abs=1e-5)
    assert index.tombstones == tombstones + (config == "hnsw")


@pytest.mark.parametrize("config", CONFIGS)
def test_removed_ids_are_never_returned(config):
    index, ids, vectors = built(config)
    gone = ids[::2]
    assert index.remove(np.concatenate([gone, gone[:3], [10**9]])) == len(gone)
    assert index.remove(gone) == 0
    assert index.ntotal == len(index) == N - len(gone)
    found = returned(index.search(vectors[::25], 50))
    assert found and not found & set(gone.tolist())
    assert not returned(index.search(vectors[::25], 50, allowed_ids=gone))


def test_hnsw_tombstones_rebuild_signal_and_re_add():
    index, ids, vectors = built("hnsw", n=200)
    index.remove(ids[:40])
    assert index.tombstones == 40 and not index.needs_rebuild  # 40 is not > 0.25 * 160
    index.remove(ids[40:41])
    assert index.needs_rebuild
    index.add(ids[:1], vectors[:1])
    assert index.ntotal == 160 and index.tombstones == 41
    assert index.search(vectors[0], 1)[0][0][0] == ids[0]
    assert returned(index.search(vectors[:41], 10)) & set(ids[:41].tolist()) == {int(ids[0])}


@pytest.mark.parametrize("config", CONFIGS)
def test_allowed_ids_restrict_results(config):
    index, ids, vectors = built(config)
    queries = clustered(20, seed=1)
    allowed = np.random.default_rng(2).choice(ids, size=300, replace=False)
    found = index.search(queries, 10, allowed_ids=allowed)
    assert all(len(row) == 10 for row in found)
    assert returned(found) <= set(allowed.tolist())
    if config == "flat":
        mask = np.isin(ids, allowed)
        assert_same_hits(found, brute_force(ids[mask], vectors[mask], queries, 10))


@pytest.mark.parametrize("config", CONFIGS)
def test_a_selective_filter_returns_every_allowed_id(config):
    index, ids, _ = built(config)
    allowed = ids[[3, 170, 333, 640, 901]]
    index.remove(ids[[333]])
    filter_ = np.concatenate([allowed, allowed[:2], [10**9]])  # repeats and unknown ids
    for row in index.search(clustered(20, seed=1), 10, allowed_ids=filter_):
        assert sorted(i for i, _ in row) == sorted(set(allowed.tolist()) - {int(ids[333])})
        assert [s for _, s in row] == sorted((s for _, s in row), reverse=True)


@pytest.mark.parametrize("config", CONFIGS)
def test_k_beyond_the_size_returns_everything(config):
    index, ids, _ = built(config, n=500)
    index.remove(ids[:20])
    for row in index.search(clustered(3, seed=1), 10_000):
        assert len(row) == 480 and len({i for i, _ in row}) == 480


@pytest.mark.parametrize("kind", INDEX_KINDS)
def test_an_empty_index_returns_empty_lists(kind):
    index = VectorIndex(DIM, kind)
    assert index.search(clustered(3, seed=1), 5) == [[], [], []]
    assert index.search(clustered(1, seed=1)[0], 5) == [[]]
    assert len(index) == 0 and not index.needs_rebuild


def hnsw_with_tombstones():
    index, ids, vectors = built("hnsw")
    index.remove(ids[:100])
    index.add(ids[:10], vectors[:10])
    return index


@pytest.mark.parametrize("make", [
    lambda: built("flat")[0],
    hnsw_with_tombstones,
    lambda: built("ivfpq")[0],
    lambda: built("ivfpq-untrained")[0],
], ids=["flat", "hnsw-tombstones", "ivfpq", "ivfpq-untrained"])
def test_save_and_load_give_identical_searches(make, tmp_path: Path):
    index = make()
    path = tmp_path / "snapshot.npz"
    index.save(path)
    index.save(path)  # overwriting an existing snapshot is the normal case
    loaded = VectorIndex.load(path)
    assert [p.name for p in tmp_path.iterdir()] == ["snapshot.npz"]
    attributes = ("kind", "dim", "params", "trained", "ntotal", "tombstones", "needs_rebuild")
    assert [getattr(loaded, a) for a in attributes] == [getattr(index, a) for a in attributes]
    queries, allowed = clustered(20, seed=1), item_ids(N)[::3]
    assert loaded.search(queries, 10) == index.search(queries, 10)
    assert loaded.search(queries, 10, allowed) == index.search(queries, 10, allowed)
    # the loaded index keeps working (not compared: HNSW's level generator is not saved)
    replacement, gone = clustered(1, seed=9), item_ids(N)[500:510]
    loaded.add(item_ids(1), replacement)
    loaded.remove(gone)
    assert loaded.search(replacement, 1)[0][0][0] == item_ids(1)[0]
    assert not returned(loaded.search(queries, 50)) & set(gone.tolist())


def test_untrained_snapshot_trains_after_loading(tmp_path: Path):
    index = VectorIndex(DIM, "ivfpq", IndexParams(ivf_nlist=8, train_min_vectors=500))
    index.add(item_ids(400), clustered(400, seed=0))
    index.save(tmp_path / "ivf.npz")
    loaded = VectorIndex.load(tmp_path / "ivf.npz")
    loaded.add(item_ids(600)[400:], clustered(200, seed=3))
    assert loaded.trained and loaded.ntotal == 600


def test_a_snapshot_of_another_format_is_refused(tmp_path: Path):
    header = np.frombuffer(b'{"format": 99}', dtype=np.uint8)
    np.savez(tmp_path / "future.npz", header=header)
    with pytest.raises(ValueError, match="format 99"):
        VectorIndex.load(tmp_path / "future.npz")


vectors_ok = np.ones((2, DIM), dtype=np.float32)
ids_ok = np.array([1, 2], dtype=np.int64)


@pytest.mark.parametrize(("call", "message"), [
    (lambda ix: ix.add(ids_ok.astype(np.float64), vectors_ok), "integer"),
    (lambda ix: ix.add(ids_ok.reshape(2, 1), vectors_ok), "one-dimensional"),
    (lambda ix: ix.add(np.array([1, -1]), vectors_ok), "non-negative"),
    (lambda ix: ix.add(np.array([1, 1]), vectors_ok), "unique"),
    (lambda ix: ix.add(ids_ok, vectors_ok.astype(np.float64)), "float32"),
    (lambda ix: ix.add(ids_ok, [[0.0] * DIM] * 2), "float32"),
    (lambda ix: ix.add(ids_ok, vectors_ok[:, :-1]), r"shape \(n, 32\)"),
    (lambda ix: ix.add(ids_ok, vectors_ok[0]), r"shape \(n, 32\)"),
    (lambda ix: ix.add(ids_ok[:1], vectors_ok), "1 ids for 2 vectors"),
    (lambda ix: ix.remove(np.array([0.5])), "integer"),
    (lambda ix: ix.search(vectors_ok[:, :8], 5), "queries"),
    (lambda ix: ix.search(vectors_ok.astype(np.float16), 5), "float32"),
    (lambda ix: ix.search(vectors_ok, 0), "k must be"),
    (lambda ix: ix.search(vectors_ok, 5, allowed_ids=np.array([1.0])), "allowed_ids"),
])
def test_bad_input_raises_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call(VectorIndex(DIM))


@pytest.mark.parametrize(("make", "message"), [
    (lambda: VectorIndex(0), "dim"),
    (lambda: VectorIndex(DIM, "lsh"), "unknown index kind"),
    (lambda: IndexParams(hnsw_m=0), "hnsw_m"),
    (lambda: IndexParams(pq_nbits=0), "pq_nbits"),
    (lambda: IndexParams(train_min_vectors=-1), "train_min_vectors"),
])
def test_bad_construction_raises_value_error(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_recall_at_k():
    exact = [[(1, 0.9), (2, 0.8)], [(3, 0.7)], []]
    approximate = [[(2, 0.8), (9, 0.1)], [(3, 0.7)], []]
    assert recall_at_k(exact, approximate, 2) == pytest.approx((0.5 + 1 + 1) / 3)
    assert recall_at_k(exact, exact, 1) == 1.0
    with pytest.raises(ValueError):
        recall_at_k(exact, exact[:1], 2)


@pytest.mark.gpu
@pytest.mark.skipif(faiss.get_num_gpus() == 0, reason="needs faiss-gpu and a CUDA device")
@pytest.mark.parametrize("config", ["flat", "ivfpq"])
def test_gpu_copy_answers_like_the_cpu_index(config):
    index, ids, vectors = built(config)
    queries = clustered(20, seed=1)
    on_gpu = index.search(queries, 10)
    on_cpu = index.search(queries, 10, allowed_ids=ids)  # filtered searches stay on the CPU
    assert index._gpu_copy() is not None
    if config == "flat":
        assert_same_hits(on_gpu, brute_force(ids, vectors, queries, 10))
    else:
        assert recall_at_k(on_cpu, on_gpu, 10) >= 0.9
    index.remove(ids[:1])  # a change drops the GPU copy; the next search clones afresh
    assert int(ids[0]) not in returned(index.search(vectors[:1], 10))
