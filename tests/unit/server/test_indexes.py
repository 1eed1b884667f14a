"""VectorIndex: every kind against exact inner product on clustered, normalised vectors; the
kinds as configs (`choose`), rebuild signals after deletes and growth, snapshots, bad input."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest

from focalserve_client.schemas import IndexOptions
from focalserve_server.collections.index_kinds import (
    AutoPolicy,
    FlatConfig,
    HNSWConfig,
    IndexConfig,
    IVFPQConfig,
    check_options,
    choose,
)
from focalserve_server.collections.indexes import VectorIndex, recall_at_k

DIM = 32
N = 1000
# Small IVF-PQ settings: N vectors train them (39 per centroid), and nprobe < nlist leaves lists unprobed.
SMALL_IVF = IVFPQConfig(nlist=16, nprobe=4, pq_m=8, pq_nbits=4)
CONFIGS: dict[str, IndexConfig] = {
    "flat": FlatConfig(),
    "hnsw": HNSWConfig(),
    "ivfpq": SMALL_IVF,
    "ivfpq-unrefined": IVFPQConfig(nlist=16, nprobe=4, pq_m=8, pq_nbits=4, refine="none"),
}
FAST_PQ = IndexOptions(pq_nbits=6)  # 64 PQ centroids: a CI-sized build trains in a second, not ten

pytestmark = pytest.mark.usefixtures("one_faiss_thread")


def clustered(n: int, seed: int, dim: int = DIM, clusters: int = 40) -> np.ndarray:
    """Gaussian blobs around random centres, L2-normalised: embeddings are clustered too."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(1000).standard_normal((clusters, dim))  # one set of centres for all
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
    ids, vectors = item_ids(n), clustered(n, seed)
    return VectorIndex.build(DIM, CONFIGS[config], ids, vectors), ids, vectors


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


POLICY = AutoPolicy(exact_max=2000)  # `auto` leaves exact search well below the test size


def recall_against_exact(index: VectorIndex, ids: np.ndarray, vectors: np.ndarray, queries: np.ndarray) -> float:
    return recall_at_k(brute_force(ids, vectors, queries, 10), index.search(queries, 10), 10)


@pytest.mark.parametrize("kind", ["hnsw", "ivfpq", "auto"])
def test_every_approximate_kind_keeps_recall_at_10_against_exact_search(kind, record_property):
    sample = clustered(12_200, seed=0)  # queries from the same clusters
    ids, vectors, queries = item_ids(12_000), sample[:12_000], sample[12_000:]
    config = choose(kind, len(ids), DIM, FAST_PQ, POLICY)
    assert config.kind == ("hnsw" if kind == "hnsw" else "ivfpq")
    index = VectorIndex.build(DIM, config, ids, vectors)
    recall = recall_against_exact(index, ids, vectors, queries)
    record_property("recall_at_10", recall)
    print(f"{kind} ({config.factory()}) recall@10 = {recall:.3f}")
    assert recall >= 0.95


@pytest.mark.parametrize("kind", ["hnsw", "ivfpq"])
def test_after_deletes_recall_holds_and_the_tombstones_ask_for_a_rebuild(kind):
    sample = clustered(12_200, seed=0)
    ids, vectors, queries = item_ids(12_000), sample[:12_000], sample[12_000:]
    config = choose(kind, len(ids), DIM, FAST_PQ, POLICY)
    index = VectorIndex.build(DIM, config, ids, vectors)
    gone = np.random.default_rng(3).choice(len(ids), 4_000, replace=False)
    index.remove(ids[gone])
    kept = np.setdiff1d(np.arange(len(ids)), gone)
    assert recall_against_exact(index, ids[kept], vectors[kept], queries) >= 0.95
    assert "tombstones" in (index.rebuild_reason(config, tombstone_ratio=0.25, growth_factor=4) or "")
    rebuilt = VectorIndex.build(DIM, choose(kind, len(kept), DIM, FAST_PQ, POLICY), ids[kept], vectors[kept])
    assert rebuilt.tombstones == 0 and rebuilt.rebuild_reason(rebuilt.config, 0.25, 4) is None
    assert recall_against_exact(rebuilt, ids[kept], vectors[kept], queries) >= 0.95


def test_an_ivfpq_grown_past_its_training_size_asks_to_be_retrained():
    sample = clustered(26_200, seed=0)
    ids, vectors, queries = item_ids(26_000), sample[:26_000], sample[26_000:]
    first = choose("ivfpq", 5_000, DIM, FAST_PQ, POLICY)
    index = VectorIndex.build(DIM, first, ids[:5_000], vectors[:5_000])
    index.add(ids[5_000:], vectors[5_000:])  # the replica adds as the log arrives
    wanted = choose("ivfpq", index.ntotal, DIM, FAST_PQ, POLICY)
    assert "grown from 5000 to 26000" in (index.rebuild_reason(wanted, 0.25, growth_factor=4) or "")
    retrained = VectorIndex.build(DIM, wanted, ids, vectors)
    assert isinstance(wanted, IVFPQConfig) and isinstance(first, IVFPQConfig) and wanted.nlist > 2 * first.nlist
    assert retrained.rebuild_reason(wanted, 0.25, 4) is None
    assert recall_against_exact(retrained, ids, vectors, queries) >= 0.95


def test_refine_turns_product_quantisation_error_into_recall():
    sample = clustered(12_200, seed=0)
    ids, vectors, queries = item_ids(12_000), sample[:12_000], sample[12_000:]
    recalls = {}
    for refine in ("none", "sq8", "flat"):
        config = choose("ivfpq", len(ids), DIM, IndexOptions(pq_nbits=6, refine=refine), POLICY)
        recalls[refine] = recall_against_exact(VectorIndex.build(DIM, config, ids, vectors), ids, vectors, queries)
    print(recalls)
    assert recalls["none"] < 0.9 <= 0.95 <= recalls["sq8"] <= recalls["flat"]


def test_choose_follows_size_memory_and_options():
    options = IndexOptions()
    assert choose("flat", 10**7, 512, options, AutoPolicy()) == FlatConfig()
    assert choose("auto", 50_000, 512, options, AutoPolicy()) == FlatConfig()  # exact while cheap
    auto = choose("auto", 1_000_000, 512, options, AutoPolicy(memory_budget_bytes=8 << 30))
    assert isinstance(auto, IVFPQConfig) and auto.refine == "flat" and auto.nlist == 1000 and auto.pq_m == 64
    tight = choose("auto", 1_000_000, 512, options, AutoPolicy(memory_budget_bytes=1 << 30))
    assert isinstance(tight, IVFPQConfig) and tight.refine == "sq8"  # exact vectors would not fit
    assert tight.factory() == "IVF1000,PQ64x8np,Refine(SQ8)"
    assert choose("ivfpq", 5_000, 512, options, AutoPolicy()) == FlatConfig()  # too few to train: exact
    tuned = choose("ivfpq", 100_000, 512, IndexOptions(nprobe=40, k_factor=4, nlist=500), AutoPolicy())
    assert isinstance(tuned, IVFPQConfig) and (tuned.nlist, tuned.nprobe, tuned.k_factor) == (500, 40, 4)
    assert choose("hnsw", 10, 512, IndexOptions(ef_search=200), AutoPolicy()) == HNSWConfig(ef_search=200)
    assert [choose("ivfpq", 10**5, d, options, AutoPolicy()).pq_m for d in (512, 768, 64, 32)] == [64, 96, 16, 8]
    with pytest.raises(ValueError, match="does not divide"):
        check_options(IndexOptions(pq_m=5), 32)


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
    assert index.tombstones == tombstones + 1  # the replaced slot waits for a rebuild


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


def test_tombstones_past_the_ratio_signal_a_rebuild_and_re_adds_work():
    index, ids, vectors = built("hnsw", n=200)
    index.remove(ids[:40])
    assert index.tombstones == 40 and index.rebuild_reason(index.config, 0.25, 4) is None  # 40 is not > 40
    index.remove(ids[40:41])
    assert "41 tombstones" in (index.rebuild_reason(index.config, 0.25, 4) or "")
    index.add(ids[:1], vectors[:1])
    assert index.ntotal == 160 and index.tombstones == 41
    assert index.search(vectors[0], 1)[0][0][0] == ids[0]
    assert returned(index.search(vectors[:41], 10)) & set(ids[:41].tolist()) == {int(ids[0])}
    live_ids, live_vectors = index.live()
    assert sorted(live_ids.tolist()) == sorted([int(ids[0]), *ids[41:].tolist()])
    np.testing.assert_allclose(live_vectors[live_ids == ids[0]][0], vectors[0], atol=1e-6)


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
    index, ids, _ = built(config, n=700)
    index.remove(ids[:20])
    for row in index.search(clustered(3, seed=1), 10_000):
        assert len(row) == 680 and len({i for i, _ in row}) == 680


@pytest.mark.parametrize("config", [FlatConfig(), HNSWConfig()])
def test_an_empty_index_returns_empty_lists(config):
    index = VectorIndex(DIM, config)
    assert index.search(clustered(3, seed=1), 5) == [[], [], []]
    assert index.search(clustered(1, seed=1)[0], 5) == [[]]
    assert len(index) == 0 and index.rebuild_reason(config, 0.25, 4) is None


def test_an_untrained_kind_is_built_not_added_to():
    with pytest.raises(ValueError, match="untrained"):
        VectorIndex(DIM, SMALL_IVF).add(item_ids(2), clustered(2, seed=0))
    with pytest.raises(ValueError, match="needs 624 vectors to train"):
        VectorIndex.build(DIM, SMALL_IVF, item_ids(100), clustered(100, seed=0))


def hnsw_with_tombstones():
    index, ids, vectors = built("hnsw")
    index.remove(ids[:100])
    index.add(ids[:10], vectors[:10])
    return index


@pytest.mark.parametrize("make", [
    lambda: built("flat")[0],
    hnsw_with_tombstones,
    lambda: built("ivfpq")[0],
    lambda: built("ivfpq-unrefined")[0],
], ids=["flat", "hnsw-tombstones", "ivfpq", "ivfpq-unrefined"])
def test_save_and_load_give_identical_searches(make, tmp_path: Path):
    index = make()
    path = tmp_path / "snapshot.npz"
    index.save(path)
    index.save(path)  # overwriting an existing snapshot is the normal case
    loaded = VectorIndex.load(path)
    assert [p.name for p in tmp_path.iterdir()] == ["snapshot.npz"]
    attributes = ("kind", "dim", "config", "built_for", "ntotal", "tombstones")
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


def test_bad_construction_raises_value_error():
    with pytest.raises(ValueError, match="dim"):
        VectorIndex(0)


def test_recall_at_k():
    exact = [[(1, 0.9), (2, 0.8)], [(3, 0.7)], []]
    approximate = [[(2, 0.8), (9, 0.1)], [(3, 0.7)], []]
    assert recall_at_k(exact, approximate, 2) == pytest.approx((0.5 + 1 + 1) / 3)
    assert recall_at_k(exact, exact, 1) == 1.0
    with pytest.raises(ValueError):
        recall_at_k(exact, exact[:1], 2)


@pytest.mark.gpu
@pytest.mark.skipif(faiss.get_num_gpus() == 0, reason="needs faiss-gpu and a CUDA device")
def test_gpu_copy_answers_like_the_cpu_index():
    index, ids, vectors = built("flat")
    queries = clustered(20, seed=1)
    on_gpu = index.search(queries, 10)
    assert index._gpu_copy() is not None
    assert_same_hits(on_gpu, brute_force(ids, vectors, queries, 10))
    index.remove(ids[:1])  # a change drops the GPU copy; the next search clones afresh
    assert int(ids[0]) not in returned(index.search(vectors[:1], 10))


@pytest.mark.parametrize("refine", ["sq8", "flat"])
def test_the_refine_stage_rebuilt_around_a_copy_of_the_base_searches_like_the_original(refine):
    """What the GPU clone of an IVF-PQ relies on (faiss clones the base, not the refine wrapper);
    here the copy is a CPU clone, the same call a GPU clone goes through."""
    config = IVFPQConfig(nlist=16, nprobe=16, pq_m=8, pq_nbits=4, refine=refine)
    vectors, queries = clustered(N, seed=0), clustered(20, seed=1)
    index = faiss.index_factory(DIM, config.factory(), faiss.METRIC_INNER_PRODUCT)
    index.train(vectors)
    index.add(vectors)
    base = faiss.clone_index(faiss.downcast_index(index).base_index)
    faiss.ParameterSpace().set_index_parameter(base, "nprobe", config.nprobe)
    copied = config.refined(index, base)
    expected = index.search(queries, 10, params=config.search_parameters(10))
    for found, wanted in zip(copied.search(queries, 10), expected, strict=True):
        np.testing.assert_array_equal(found, wanted)


@pytest.mark.gpu
@pytest.mark.skipif(faiss.get_num_gpus() == 0, reason="needs faiss-gpu and a GPU")
@pytest.mark.parametrize("kind", ["flat", "ivfpq"])
def test_gpu_clones_answer_like_the_cpu_index(kind):
    index, ids, vectors = built(kind, n=3000)
    queries = clustered(50, seed=1)
    _, cpu = index._index.search(queries, 10, params=index.config.search_parameters(10))
    gpu_index = index._gpu_copy()
    assert gpu_index is not None  # unfiltered searches go to the GPU
    _, gpu = gpu_index.search(queries, 10)
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(cpu.tolist(), gpu.tolist(), strict=True)])
    assert overlap >= (1.0 if kind == "flat" else 0.95)
