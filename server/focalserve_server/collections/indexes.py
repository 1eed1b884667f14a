"""FAISS indexes over int64 item ids: exact (flat), HNSW or IVF-PQ.

Preconditions: vectors and queries are L2-normalised float32, so inner product is cosine.
The store is the source of truth (docs/design.md section 4); an index is a snapshot that its owner
rebuilds when it is missing, stale or, for HNSW, when `needs_rebuild` says tombstones have
piled up. A `VectorIndex` is not thread-safe: its owner serialises writes and searches.

Snapshot format (`save` / `load`): one `.npz` file, written to a temporary file beside the
target and moved into place with `os.replace`, holding
  `header` - UTF-8 JSON: format version, kind, dim, params, trained;
  `index`  - the FAISS index as `faiss.serialize_index` bytes (an untrained IVF-PQ is its
             exact index, so its raw vectors travel inside);
  `ids`    - HNSW: the external id of every internal slot, -1 for a tombstone;
             flat and IVF-PQ: the live ids.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any, cast, get_args

import faiss
import numpy as np

from focalserve_client.schemas import IndexKind  # the API names the kinds; the indexes implement them

INDEX_KINDS: tuple[IndexKind, ...] = get_args(IndexKind)

Hit = tuple[int, float]

# Bytes per code that faiss's GPU IVF-PQ accepts (8-bit codes): choosing from these keeps an
# automatically sized index clonable to a GPU.
_GPU_PQ_CODE_SIZES = (1, 2, 3, 4, 8, 12, 16, 20, 24, 28, 32, 40, 48, 56, 64, 96)
_GPU_MAX_K = 2048  # faiss GPU k-selection limit
_FORMAT = 1


@dataclass(frozen=True)
class IndexParams:
    """Build and search settings; a 0 means "choose from the data" where noted."""

    hnsw_m: int = 32
    hnsw_ef_construction: int = 80
    hnsw_ef_search: int = 64
    ivf_nlist: int = 0  # 0: about 4 * sqrt(n) at training time
    ivf_nprobe: int = 16
    pq_m: int = 0  # 0: see `pq_subquantizers`
    pq_nbits: int = 8
    train_min_vectors: int = 0  # 0: max(1024, 39 * nlist)
    rebuild_ratio: float = 0.25

    def __post_init__(self) -> None:
        for name in ("hnsw_m", "hnsw_ef_construction", "hnsw_ef_search", "ivf_nprobe"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        for name in ("ivf_nlist", "pq_m", "train_min_vectors"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be 0 (automatic) or positive")
        if not 1 <= self.pq_nbits <= 16:
            raise ValueError("pq_nbits must be between 1 and 16")
        if self.rebuild_ratio < 0:
            raise ValueError("rebuild_ratio must not be negative")

    def nlist_for(self, n: int) -> int:
        """Coarse lists for n training vectors; never more than n, as k-means needs a point each."""
        nlist = self.ivf_nlist or round(4 * math.sqrt(n))
        return max(1, min(nlist, n))

    def training_threshold(self, nlist: int) -> int:
        """Vectors needed before IVF-PQ trains: k-means wants ~39 per list and one per PQ code."""
        wanted = self.train_min_vectors or max(1024, 39 * nlist)
        return max(wanted, 2**self.pq_nbits)

    def ready_to_train(self, n: int) -> bool:
        return n >= self.training_threshold(self.nlist_for(n))

    def pq_subquantizers(self, dim: int) -> int:
        """pq_m, or the largest GPU-supported code size that divides dim and is at most dim / 4."""
        if self.pq_m:
            if dim % self.pq_m:
                raise ValueError(f"pq_m={self.pq_m} does not divide dim={dim}")
            return self.pq_m
        limit = max(1, dim // 4)
        return max(m for m in _GPU_PQ_CODE_SIZES if m <= limit and dim % m == 0)


class VectorIndex:
    """Nearest neighbours by inner product over int64 ids; adding an existing id replaces it.

    HNSW cannot delete in FAISS, so its removals are tombstoned internal slots that searches
    filter out inside FAISS; a re-added id gets a fresh slot. IVF-PQ answers exactly from a
    flat index until `IndexParams.ready_to_train` holds, then trains on everything it holds.
    """

    def __init__(self, dim: int, kind: IndexKind = "flat", params: IndexParams = IndexParams()):
        if dim < 1:
            raise ValueError(f"dim must be at least 1, got {dim}")
        if kind not in INDEX_KINDS:
            raise ValueError(f"unknown index kind {kind!r}; expected one of {INDEX_KINDS}")
        self.dim = dim
        self.kind: IndexKind = kind
        self.params = params
        self.snapshot_meta: dict[str, Any] = {}
        self._pq_m = params.pq_subquantizers(dim) if kind == "ivfpq" else 0
        self._trained = kind != "ivfpq"
        self._index = self._new_hnsw() if kind == "hnsw" else _new_exact(dim)
        self._live: set[int] = set()  # flat, IVF-PQ: the ids held (FAISS ids are item ids)
        self._slot_ids: list[int] = []  # HNSW: item id of each internal slot
        self._slot_of: dict[int, int] = {}  # HNSW: live item id -> its slot
        self._dead: set[int] = set()  # HNSW: tombstoned slots
        self._dead_selector: faiss.IDSelector | None = None
        self._gpu_index: faiss.Index | None = None

    @property
    def ntotal(self) -> int:
        """Live vectors (tombstones excluded)."""
        return len(self._slot_of) if self.kind == "hnsw" else len(self._live)

    def __len__(self) -> int:
        return self.ntotal

    @property
    def trained(self) -> bool:
        """False only for an IVF-PQ index still answering exactly below its training threshold."""
        return self._trained

    @property
    def tombstones(self) -> int:
        """Removed or replaced HNSW slots still in the graph; always 0 for other kinds."""
        return len(self._dead)

    @property
    def needs_rebuild(self) -> bool:
        """True when tombstones exceed rebuild_ratio * live vectors: rebuild from the source."""
        return self.tombstones > self.params.rebuild_ratio * self.ntotal

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add (n,) int64 ids with (n, dim) float32 vectors; ids already present are replaced."""
        ids = _check_ids(ids, "ids")
        vectors = self._check_vectors(vectors, "vectors")
        if len(ids) != len(vectors):
            raise ValueError(f"got {len(ids)} ids for {len(vectors)} vectors")
        if len(np.unique(ids)) != len(ids):
            raise ValueError("ids must be unique within one add")
        if not len(ids):
            return
        self.remove(ids)
        if self.kind == "hnsw":
            self._add_slots(ids, vectors)
        else:
            self._index.add_with_ids(vectors, ids)
            self._live.update(ids.tolist())
            if not self._trained and self.params.ready_to_train(self.ntotal):
                self._train()
        self._changed()

    def remove(self, ids: np.ndarray) -> int:
        """Remove the given ids (absent ones are ignored); returns how many were present."""
        present = [i for i in np.unique(_check_ids(ids, "ids")).tolist() if self._holds(i)]
        if not present:
            return 0
        if self.kind == "hnsw":
            self._dead.update(self._slot_of.pop(i) for i in present)
        else:
            # faiss's Python wrapper takes an id array here; its stub lists only IDSelector.
            self._index.remove_ids(np.array(present, dtype=np.int64))  # type: ignore[arg-type]
            self._live.difference_update(present)
        self._changed()
        return len(present)

    def search(
        self, queries: np.ndarray, k: int, allowed_ids: np.ndarray | None = None
    ) -> list[list[Hit]]:
        """Per query, up to k (id, score) pairs best first; `allowed_ids` restricts the ids.

        When FAISS finds fewer than exist (a selective filter in HNSW or IVF-PQ, or k close to
        the index size), the query is answered by exact scoring over the candidates instead.
        """
        if isinstance(queries, np.ndarray) and queries.ndim == 1:
            queries = queries.reshape(1, -1)
        queries = self._check_vectors(queries, "queries")
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        keys = None
        if allowed_ids is not None:
            keys = self._keys_of(_check_ids(allowed_ids, "allowed_ids"))
        available = self.ntotal if keys is None else len(keys)
        if available == 0:
            return [[] for _ in range(len(queries))]
        k = min(k, available)
        scores, found = self._faiss_search(queries, k, keys)
        hits = [self._hits(f, s) for f, s in zip(found, scores, strict=True)]
        short = [q for q, row in enumerate(hits) if len(row) < k]
        if short:
            candidates = self._live_keys() if keys is None else keys
            for q, row in zip(short, self._exact(queries[short], k, candidates), strict=True):
                hits[q] = row
        return hits

    def save(self, path: Path, meta: dict[str, Any] | None = None) -> None:
        """Write the snapshot atomically (see the module docstring for the format); `meta` is the
        owner's record of what the snapshot holds, given back as `snapshot_meta` by `load`."""
        path = Path(path)
        header = {"format": _FORMAT, "kind": self.kind, "dim": self.dim,
                  "params": asdict(self.params), "trained": self._trained, "meta": meta or {}}
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, header=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8),
                         index=faiss.serialize_index(self._index), ids=self._saved_ids())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: Path) -> VectorIndex:
        """Read a snapshot written by `save`."""
        with np.load(Path(path), allow_pickle=False) as snapshot:
            header = json.loads(snapshot["header"].tobytes())
            if header.get("format") != _FORMAT:
                raise ValueError(f"{path}: unsupported snapshot format {header.get('format')!r}")
            index = cls(header["dim"], header["kind"], IndexParams(**header["params"]))
            index._restore(faiss.deserialize_index(snapshot["index"]), snapshot["ids"],
                           header["trained"])
            index.snapshot_meta = header.get("meta", {})
        return index

    # -- building ------------------------------------------------------------------------

    def _new_hnsw(self) -> faiss.Index:
        index = faiss.IndexHNSWFlat(self.dim, self.params.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = self.params.hnsw_ef_construction
        index.hnsw.efSearch = self.params.hnsw_ef_search
        return index

    def _add_slots(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        first = len(self._slot_ids)
        self._index.add(vectors)
        self._slot_ids.extend(ids.tolist())
        self._slot_of.update((item, first + n) for n, item in enumerate(ids.tolist()))

    def _train(self) -> None:
        """Replace the exact index by an IVF-PQ trained on, and holding, all its vectors."""
        exact = cast(faiss.IndexIDMap2, self._index)  # untrained IVF-PQ holds the exact index
        ids = faiss.vector_to_array(exact.id_map)
        vectors = exact.index.reconstruct_n(0, exact.ntotal)
        nlist = self.params.nlist_for(len(ids))
        index = faiss.IndexIVFPQ(faiss.IndexFlatIP(self.dim), self.dim, nlist, self._pq_m,
                                 self.params.pq_nbits, faiss.METRIC_INNER_PRODUCT)
        index.nprobe = self.params.ivf_nprobe
        index.train(vectors)
        # A hash table from id to list position makes removal O(removed), not O(ntotal).
        # (faiss's stub omits DirectMap.)
        index.set_direct_map_type(faiss.DirectMap.Hashtable)  # type: ignore[attr-defined]
        index.add_with_ids(vectors, ids)
        self._index = index
        self._trained = True

    def _restore(self, index: faiss.Index, ids: np.ndarray, trained: bool) -> None:
        self._index = index
        self._trained = trained
        if self.kind == "hnsw":
            self._slot_ids = ids.tolist()
            self._dead = {slot for slot, item in enumerate(self._slot_ids) if item < 0}
            self._slot_of = {item: slot for slot, item in enumerate(self._slot_ids) if item >= 0}
        else:
            self._live = set(ids.tolist())

    def _saved_ids(self) -> np.ndarray:
        if self.kind != "hnsw":
            return np.fromiter(self._live, dtype=np.int64, count=len(self._live))
        saved = np.array(self._slot_ids, dtype=np.int64)
        saved[list(self._dead)] = -1
        return saved

    def _changed(self) -> None:
        self._dead_selector = None
        self._gpu_index = None

    # -- ids and FAISS keys (item ids, or internal slots for HNSW) -----------------------

    def _holds(self, item: int) -> bool:
        return item in (self._slot_of if self.kind == "hnsw" else self._live)

    def _keys_of(self, ids: np.ndarray) -> np.ndarray:
        """FAISS keys of the live ids among `ids`, each once."""
        items = np.unique(ids).tolist()
        if self.kind == "hnsw":
            keys = [self._slot_of[i] for i in items if i in self._slot_of]
        else:
            keys = [i for i in items if i in self._live]
        return np.array(keys, dtype=np.int64)

    def _live_keys(self) -> np.ndarray:
        live = self._slot_of.values() if self.kind == "hnsw" else self._live
        return np.fromiter(live, dtype=np.int64, count=len(live))

    def _item_of(self, key: int) -> int:
        return self._slot_ids[key] if self.kind == "hnsw" else key

    # -- searching -----------------------------------------------------------------------

    def _faiss_search(
        self, queries: np.ndarray, k: int, keys: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        gpu = self._gpu_copy() if keys is None and k <= _GPU_MAX_K else None
        if gpu is not None:
            return gpu.search(queries, k)
        return self._index.search(queries, k, params=self._search_params(k, keys))

    def _search_params(self, k: int, keys: np.ndarray | None) -> faiss.SearchParameters:
        if self.kind == "hnsw":
            # faiss's stub lacks SearchParametersHNSW and the keyword constructor its wrapper adds.
            ef_search = max(self.params.hnsw_ef_search, k)
            params = faiss.SearchParametersHNSW(efSearch=ef_search)  # type: ignore[attr-defined]
        elif self._trained and self.kind == "ivfpq":
            params = faiss.SearchParametersIVF(nprobe=self.params.ivf_nprobe)  # type: ignore[call-arg]
        else:
            params = faiss.SearchParameters()
        selector = faiss.IDSelectorBatch(keys) if keys is not None else self._tombstone_filter()
        if selector is not None:
            params.sel = selector
        return params

    def _tombstone_filter(self) -> faiss.IDSelector | None:
        """Selects every HNSW slot but the tombstones; cached until the next change."""
        if not self._dead:
            return None
        if self._dead_selector is None:
            dead = np.fromiter(self._dead, dtype=np.int64, count=len(self._dead))
            self._dead_selector = faiss.IDSelectorNot(faiss.IDSelectorBatch(dead))
        return self._dead_selector

    def _hits(self, keys: np.ndarray, scores: np.ndarray) -> list[Hit]:
        return [(self._item_of(key), float(score))
                for key, score in zip(keys.tolist(), scores.tolist(), strict=True) if key >= 0]

    def _exact(self, queries: np.ndarray, k: int, keys: np.ndarray) -> list[list[Hit]]:
        """Top k by inner product with the stored (for IVF-PQ: decoded) vectors of `keys`."""
        scores = queries @ self._index.reconstruct_batch(keys).T
        best = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return [self._hits(keys[row], row_scores[row])
                for row, row_scores in zip(best, scores, strict=True)]

    def _gpu_copy(self) -> faiss.Index | None:
        """A GPU clone for unfiltered flat / IVF-PQ searches, refreshed after each change."""
        resources = _gpu_resources()
        if resources is None or self.kind == "hnsw":
            return None
        if self._gpu_index is None:
            self._gpu_index = faiss.index_cpu_to_gpu(resources, 0, self._index)
        return self._gpu_index

    def _check_vectors(self, vectors: np.ndarray, what: str) -> np.ndarray:
        if not isinstance(vectors, np.ndarray) or vectors.dtype != np.float32:
            raise ValueError(f"{what} must be a float32 numpy array, got {_describe(vectors)}")
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"{what} must have shape (n, {self.dim}), got {vectors.shape}")
        return np.ascontiguousarray(vectors)


def recall_at_k(exact: list[list[Hit]], approximate: list[list[Hit]], k: int) -> float:
    """Mean share of each query's exact top-k ids found in its approximate top-k.

    A query with fewer than k exact neighbours is scored against those it has; one with
    none counts as fully recalled.
    """
    if len(exact) != len(approximate):
        raise ValueError(f"{len(exact)} exact result lists but {len(approximate)} approximate")
    if not exact:
        raise ValueError("no queries to compare")
    shares = []
    for truth, found in zip(exact, approximate, strict=True):
        wanted = {item for item, _ in truth[:k]}
        got = {item for item, _ in found[:k]}
        shares.append(len(wanted & got) / len(wanted) if wanted else 1.0)
    return float(np.mean(shares))


def _new_exact(dim: int) -> faiss.IndexIDMap2:
    """Exact inner product over item ids; IDMap2 adds removal and reconstruction by id."""
    return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))


def _check_ids(ids: np.ndarray, what: str) -> np.ndarray:
    if not isinstance(ids, np.ndarray) or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"{what} must be an integer numpy array, got {_describe(ids)}")
    if ids.ndim != 1:
        raise ValueError(f"{what} must be one-dimensional, got shape {ids.shape}")
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if len(ids) and ids.min() < 0:  # also catches uint64 ids past the int64 range
        raise ValueError(f"{what} must be non-negative int64 (FAISS uses -1 for 'no result')")
    return ids


def _describe(value: object) -> str:
    return f"{value.dtype} array" if isinstance(value, np.ndarray) else type(value).__name__


@cache
def _gpu_resources() -> faiss.StandardGpuResources | None:
    """One set of GPU resources per process; None with faiss-cpu or no visible GPU."""
    return faiss.StandardGpuResources() if faiss.get_num_gpus() > 0 else None
