"""FAISS indexes over int64 item ids, in any of the kinds `index_kinds` configures.

Preconditions: vectors and queries are L2-normalised float32, so inner product is cosine.
The store is the source of truth (docs/design.md section 4); an index is a cache its owner
rebuilds, in the background, when it is missing, stale, full of tombstones, outgrown, or no
longer the kind its condition would choose (`rebuild_reason`).

FAISS keys are internal slots in insertion order. Removing or replacing an id tombstones its
slot and searches filter tombstones out inside FAISS, so every kind behaves alike, including
those FAISS cannot delete from (HNSW, refine indexes). A `VectorIndex` is not thread-safe: its
owner serialises writes and searches; a replacement is built as a separate object.

Snapshot format (`save` / `load`): one `.npz` file, written to a temporary file beside the
target and moved into place with `os.replace`, holding
  `header` - UTF-8 JSON: format version, dim, the index config, the size it was built for;
  `index`  - the FAISS index as `faiss.serialize_index` bytes;
  `ids`    - the item id of every slot, -1 for a tombstone.
"""

from __future__ import annotations

import json
import os
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from focalserve_server.collections.index_kinds import FlatConfig, IndexConfig, from_dict, to_dict

Hit = tuple[int, float]

EXACT = FlatConfig()
_GPU_MAX_K = 2048  # faiss GPU k-selection limit
_FORMAT = 2
_ADD_CHUNK = 65_536  # vectors per FAISS add during a build: bounds its temporaries


class VectorIndex:
    """Nearest neighbours by inner product over int64 ids; adding an existing id replaces it."""

    def __init__(self, dim: int, config: IndexConfig = EXACT) -> None:
        """An empty index; kinds that train (IVF-PQ) are made with `build` instead."""
        if dim < 1:
            raise ValueError(f"dim must be at least 1, got {dim}")
        self.dim = dim
        self.config = config
        self.built_for = 0  # vectors it was sized for
        self.recall: float | None = None  # recall@10 measured when its search parameters were tuned
        self.snapshot_meta: dict[str, Any] = {}
        self._index = faiss.index_factory(dim, config.factory(), faiss.METRIC_INNER_PRODUCT)
        config.configure(self._index)
        self._slot_ids: list[int] = []  # item id of each slot
        self._slot_of: dict[int, int] = {}  # live item id -> its slot
        self._dead: set[int] = set()  # tombstoned slots
        self._dead_selector: faiss.IDSelector | None = None
        self._gpu_index: faiss.Index | None = None

    @classmethod
    def build(cls, dim: int, config: IndexConfig, ids: np.ndarray, vectors: np.ndarray) -> VectorIndex:
        """An index of `config` trained on (if it trains) and holding these vectors."""
        index = cls(dim, config)
        vectors = index._check_vectors(vectors, "vectors")
        if not index._index.is_trained:
            if len(vectors) < config.training_vectors():
                raise ValueError(f"{config.factory()} needs {config.training_vectors()} vectors to train, "
                                 f"got {len(vectors)}")
            if len(vectors) > config.training_sample():
                chosen = np.random.default_rng(0).choice(len(vectors), config.training_sample(), replace=False)
                index._index.train(vectors[np.sort(chosen)])
            else:
                index._index.train(vectors)
        for start in range(0, len(ids), _ADD_CHUNK):
            index.add(ids[start:start + _ADD_CHUNK], vectors[start:start + _ADD_CHUNK])
        index.built_for = len(ids)
        return index

    @property
    def kind(self) -> str:
        return self.config.kind

    @property
    def ntotal(self) -> int:
        """Live vectors (tombstones excluded)."""
        return len(self._slot_of)

    def __len__(self) -> int:
        return self.ntotal

    @property
    def tombstones(self) -> int:
        """Removed or replaced slots still inside the FAISS index."""
        return len(self._dead)

    def rebuild_reason(self, wanted: IndexConfig, tombstone_ratio: float, growth_factor: float) -> str | None:
        """Why the owner should replace this index now, or None.

        `wanted` is what the condition would choose for the vectors held now: another kind (an
        IVF-PQ that can now train, `auto` moving on from exact) means a rebuild, as does an
        IVF-PQ holding `growth_factor` times what it was sized for (its lists and quantiser were
        trained on far fewer), or tombstones past `tombstone_ratio` of the live vectors.
        """
        if self._dead and len(self._dead) > tombstone_ratio * self.ntotal:
            return f"{len(self._dead)} tombstones for {self.ntotal} live vectors"
        if type(wanted) is not type(self.config):
            return f"{self.config.kind} -> {wanted.kind} at {self.ntotal} vectors"
        if wanted.kind == "ivfpq" and self.ntotal > growth_factor * max(self.built_for, 1):
            return f"grown from {self.built_for} to {self.ntotal} vectors"
        return None

    def describe(self) -> dict[str, Any]:
        return {**to_dict(self.config), "vectors": self.ntotal, "tombstones": self.tombstones,
                "built_for": self.built_for, "recall_at_10": self.recall}

    def retune(self, config: IndexConfig, recall: float | None = None) -> None:
        """Search with other parameters of the same index (`tuning.tune`), recording the recall they
        measured."""
        if config.factory() != self.config.factory():
            raise ValueError(f"{config.factory()} is another index than {self.config.factory()}")
        self.config, self.recall = config, recall
        self._changed()  # a GPU clone bakes in its nprobe

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
        if not self._index.is_trained:
            raise ValueError(f"{self.config.factory()} is untrained: make it with VectorIndex.build")
        self.remove(ids)
        first = len(self._slot_ids)
        self._index.add(vectors)
        self._slot_ids.extend(ids.tolist())
        self._slot_of.update((item, first + n) for n, item in enumerate(ids.tolist()))
        self._changed()

    def remove(self, ids: np.ndarray) -> int:
        """Remove the given ids (absent ones are ignored); returns how many were present."""
        present = [i for i in np.unique(_check_ids(ids, "ids")).tolist() if i in self._slot_of]
        if present:
            self._dead.update(self._slot_of.pop(i) for i in present)
            self._changed()
        return len(present)

    def live(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of the live vectors as the index holds them (exact for flat and HNSW)."""
        keys = self._live_keys()
        return np.array([self._slot_ids[k] for k in keys.tolist()], np.int64), self._reconstruct(keys)

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
        header = {"format": _FORMAT, "dim": self.dim, "config": to_dict(self.config),
                  "built_for": self.built_for, "recall": self.recall, "meta": meta or {}}
        saved = np.array(self._slot_ids, dtype=np.int64)
        saved[list(self._dead)] = -1
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, header=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8),
                         index=faiss.serialize_index(self._index), ids=saved)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: Path) -> VectorIndex:
        """Read a snapshot written by `save`; a snapshot of another format is refused (ValueError)."""
        with np.load(Path(path), allow_pickle=False) as snapshot:
            header = json.loads(snapshot["header"].tobytes())
            if header.get("format") != _FORMAT:
                raise ValueError(f"{path}: unsupported snapshot format {header.get('format')!r}")
            index = cls(header["dim"], from_dict(header["config"]))
            index._index = faiss.deserialize_index(snapshot["index"])
            index._slot_ids = snapshot["ids"].tolist()
            index._dead = {slot for slot, item in enumerate(index._slot_ids) if item < 0}
            index._slot_of = {item: slot for slot, item in enumerate(index._slot_ids) if item >= 0}
            index.built_for = int(header["built_for"])
            index.recall = header.get("recall")
            index.snapshot_meta = header.get("meta", {})
        return index

    # -- ids and FAISS keys (slots) ------------------------------------------------------

    def _changed(self) -> None:
        self._dead_selector = None
        self._gpu_index = None

    def _keys_of(self, ids: np.ndarray) -> np.ndarray:
        """FAISS keys of the live ids among `ids`, each once."""
        keys = [self._slot_of[i] for i in np.unique(ids).tolist() if i in self._slot_of]
        return np.array(keys, dtype=np.int64)

    def _live_keys(self) -> np.ndarray:
        return np.fromiter(self._slot_of.values(), dtype=np.int64, count=len(self._slot_of))

    def _reconstruct(self, keys: np.ndarray) -> np.ndarray:
        if not len(keys):
            return np.empty((0, self.dim), np.float32)
        return self._index.reconstruct_batch(keys)

    # -- searching -----------------------------------------------------------------------

    def _faiss_search(
        self, queries: np.ndarray, k: int, keys: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        gpu = self._gpu_copy() if keys is None and not self._dead and k <= _GPU_MAX_K else None
        if gpu is not None:
            return gpu.search(queries, k)
        selector = faiss.IDSelectorBatch(keys) if keys is not None else self._tombstone_filter()
        params = self.config.search_parameters(k)
        # a refine index passes its base index's parameters down: the filter belongs there
        filtered = getattr(params, "base_index_params", None) or params
        if selector is not None:
            filtered.sel = selector
        return self._index.search(queries, k, params=params)

    def _tombstone_filter(self) -> faiss.IDSelector | None:
        """Selects every slot but the tombstones; cached until the next change."""
        if not self._dead:
            return None
        if self._dead_selector is None:
            dead = np.fromiter(self._dead, dtype=np.int64, count=len(self._dead))
            self._dead_selector = faiss.IDSelectorNot(faiss.IDSelectorBatch(dead))
        return self._dead_selector

    def _hits(self, keys: np.ndarray, scores: np.ndarray) -> list[Hit]:
        return [(self._slot_ids[key], float(score))
                for key, score in zip(keys.tolist(), scores.tolist(), strict=True) if key >= 0]

    def _exact(self, queries: np.ndarray, k: int, keys: np.ndarray) -> list[list[Hit]]:
        """Top k by inner product with the stored (for IVF-PQ: decoded) vectors of `keys`."""
        scores = queries @ self._reconstruct(keys).T
        best = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return [self._hits(keys[row], row_scores[row])
                for row, row_scores in zip(best, scores, strict=True)]

    def _gpu_copy(self) -> faiss.Index | None:
        """A GPU clone (flat, IVF-PQ) for unfiltered searches, refreshed after each change."""
        resources = _gpu_resources()
        if resources is None:
            return None
        if self._gpu_index is None:
            self._gpu_index = self.config.to_gpu(self._index, resources)
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
