"""Index kinds as configurations, not switches.

Each kind is a small frozen config that names its FAISS index (an `index_factory` string), the
search parameters it wants for a query of k, how many vectors it needs before it can be built,
and what one vector costs in memory. `choose` turns what a condition asks for (`flat`, `hnsw`,
`ivfpq` or `auto`, with optional `IndexOptions`) into a config for the number of vectors at hand;
`VectorIndex` (indexes.py) runs whichever config it is given.

IVF-PQ is built with a refine stage (`Refine(SQ8)`, or `RFlat` where memory allows): the PQ codes
pick `k_factor * k` candidates, which are re-scored with (almost) exact vectors, so product
quantisation no longer costs recall. `auto` is exact while a brute-force scan is cheap, then
IVF-PQ sized to the collection and its memory budget, in the spirit of autofaiss.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, ClassVar, Literal, cast, get_args

import faiss

from focalserve_client.schemas import IndexKind, IndexOptions

INDEX_KINDS: tuple[IndexKind, ...] = get_args(IndexKind)
Refine = Literal["flat", "sq8", "none"]

# Bytes per code that faiss's GPU IVF-PQ accepts (8-bit codes): choosing from these keeps an
# automatically sized index clonable to a GPU.
_GPU_PQ_CODE_SIZES = (1, 2, 3, 4, 8, 12, 16, 20, 24, 28, 32, 40, 48, 56, 64, 96)
_POINTS_PER_CENTROID = 39  # faiss's k-means warns below this many training points per centroid
_SAMPLE_PER_CENTROID = 64
_ID_BYTES = 8  # the slot -> item id map


@dataclass(frozen=True)
class FlatConfig:
    """Exact inner product: every vector scored, recall 1.0 by definition."""

    kind: ClassVar[IndexKind] = "flat"

    def factory(self) -> str:
        return "Flat"

    def configure(self, index: faiss.Index) -> None:
        pass

    def search_parameters(self, k: int) -> faiss.SearchParameters:
        return faiss.SearchParameters()

    def training_vectors(self) -> int:
        return 0

    def training_sample(self) -> int:
        return 0

    def bytes_per_vector(self, dim: int) -> int:
        return 4 * dim + _ID_BYTES

    def to_gpu(self, index: faiss.Index, resources: faiss.StandardGpuResources) -> faiss.Index | None:
        """A GPU copy for unfiltered searches (faiss-gpu, a visible GPU)."""
        return faiss.index_cpu_to_gpu(resources, 0, index)


@dataclass(frozen=True)
class HNSWConfig:
    """A graph over the full vectors: high recall without training, but slow to build at scale."""

    kind: ClassVar[IndexKind] = "hnsw"
    m: int = 32
    ef_construction: int = 80
    ef_search: int = 64

    def factory(self) -> str:
        return f"HNSW{self.m}"

    def configure(self, index: faiss.Index) -> None:
        hnsw = cast(faiss.IndexHNSWFlat, faiss.downcast_index(index)).hnsw
        hnsw.efConstruction = self.ef_construction
        hnsw.efSearch = self.ef_search

    def search_parameters(self, k: int) -> faiss.SearchParameters:
        # faiss's stub lacks SearchParametersHNSW and the keyword constructor its wrapper adds
        return faiss.SearchParametersHNSW(efSearch=max(self.ef_search, k))  # type: ignore[attr-defined]

    def training_vectors(self) -> int:
        return 0

    def training_sample(self) -> int:
        return 0

    def bytes_per_vector(self, dim: int) -> int:
        return 4 * dim + 2 * self.m * 4 + _ID_BYTES  # vectors, level-0 links (upper levels are ~1/m of it)

    def to_gpu(self, index: faiss.Index, resources: faiss.StandardGpuResources) -> faiss.Index | None:
        return None  # faiss has no GPU HNSW: graph searches stay on the CPU


@dataclass(frozen=True)
class IVFPQConfig:
    """Inverted lists of product-quantised codes, re-ranked by a refine stage."""

    kind: ClassVar[IndexKind] = "ivfpq"
    nlist: int
    nprobe: int
    pq_m: int
    pq_nbits: int = 8
    refine: Refine = "sq8"
    k_factor: int = 64

    def factory(self) -> str:
        stage = {"flat": ",RFlat", "sq8": ",Refine(SQ8)", "none": ""}[self.refine]
        # "np": no polysemous training, which only serves Hamming-distance filtering and costs 5x the build
        return f"IVF{self.nlist},PQ{self.pq_m}x{self.pq_nbits}np{stage}"

    def search_parameters(self, k: int) -> faiss.SearchParameters:
        ivf = faiss.SearchParametersIVF(nprobe=min(self.nprobe, self.nlist))  # type: ignore[call-arg]
        if self.refine == "none":
            return ivf
        refine = faiss.IndexRefineSearchParameters(k_factor=self.k_factor, base_index_params=ivf)  # type: ignore[call-arg]
        refine.referenced_objects = [ivf]  # type: ignore[attr-defined]  # C++ holds a bare pointer: keep ivf alive
        return refine

    def configure(self, index: faiss.Index) -> None:
        if self.refine == "none":  # decoded vectors for exact re-scoring need a map from key to list entry
            faiss.extract_index_ivf(index).set_direct_map_type(faiss.DirectMap.Array)  # type: ignore[attr-defined]

    def training_vectors(self) -> int:
        """k-means wants ~39 points per coarse list and per PQ centroid."""
        return _POINTS_PER_CENTROID * max(self.nlist, 2**self.pq_nbits)

    def training_sample(self) -> int:
        """What a build trains on at most: more points per centroid add build time, not recall."""
        return _SAMPLE_PER_CENTROID * max(self.nlist, 2**self.pq_nbits)

    def bytes_per_vector(self, dim: int) -> int:
        refine = {"flat": 4 * dim, "sq8": dim, "none": 0}[self.refine]
        return math.ceil(self.pq_m * self.pq_nbits / 8) + refine + _ID_BYTES

    def to_gpu(self, index: faiss.Index, resources: faiss.StandardGpuResources) -> faiss.Index | None:
        """The inverted lists cloned to the GPU, re-ranked on the CPU by the same refine stage.

        faiss clones IVF-PQ but not refine indexes, so the refine wrapper is rebuilt around the
        GPU base; the search parameters become attributes, as GPU indexes take no parameter
        objects. Lookup tables beyond 48 sub-quantizers only fit the GPU's shared memory in float16.
        """
        if self.refine == "none":
            return None  # exact re-scoring of decoded codes needs the CPU index's direct map
        options = faiss.GpuClonerOptions()
        options.useFloat16 = self.pq_m > 48
        cpu_base = cast(faiss.IndexRefine, faiss.downcast_index(index)).base_index
        base = faiss.index_cpu_to_gpu(resources, 0, cpu_base, options)
        faiss.GpuParameterSpace().set_index_parameter(base, "nprobe", min(self.nprobe, self.nlist))
        return self.refined(index, base)

    def refined(self, index: faiss.Index, base: faiss.Index) -> faiss.IndexRefine:
        """`index`'s refine stage around another copy of its base, searching as `index` does."""
        refine = cast(faiss.IndexRefine, faiss.downcast_index(index))
        wrapped = faiss.IndexRefine(base, refine.refine_index)
        wrapped.k_factor = self.k_factor
        wrapped.referenced_objects = [base, refine]  # type: ignore[attr-defined]  # C++ keeps bare pointers
        return wrapped


IndexConfig = FlatConfig | HNSWConfig | IVFPQConfig
CONFIGS: dict[str, type[FlatConfig] | type[HNSWConfig] | type[IVFPQConfig]] = {
    cls.kind: cls for cls in (FlatConfig, HNSWConfig, IVFPQConfig)
}


@dataclass(frozen=True)
class AutoPolicy:
    """How `auto` chooses: exact up to `exact_max` vectors, then IVF-PQ whose refine stage is exact
    (`RFlat`) while the whole index fits `memory_budget_bytes`, 8-bit (`SQ8`) beyond."""

    exact_max: int = 50_000
    memory_budget_bytes: int = 4 << 30


@dataclass(frozen=True)
class RecallTarget:
    """What a built approximate index's search parameters are tuned to (`tuning.tune`)."""

    recall: float = 0.95  # recall@10 against exact search
    budget_ms: float = 10.0  # the most a query may take (the sample searched as one batch, per query)


@dataclass(frozen=True)
class IndexPolicy:
    """The gateway-wide index settings: default options (a condition's own override them field by
    field), how `auto` chooses, and when an index is rebuilt in the background."""

    defaults: IndexOptions = field(default_factory=IndexOptions)
    auto: AutoPolicy = field(default_factory=AutoPolicy)
    tombstone_ratio: float = 0.25  # tombstones per live vector past which an index is rebuilt
    growth_factor: float = 4.0  # an IVF-PQ holding this many times what it was sized for is rebuilt
    recall: RecallTarget = field(default_factory=RecallTarget)

    def fixed_options(self, condition_options: dict[str, Any]) -> set[str]:
        """The options a condition or the gateway's defaults set: tuning leaves those as they are."""
        return set(self.options_for(condition_options).model_dump(exclude_none=True))

    def options_for(self, condition_options: dict[str, Any]) -> IndexOptions:
        return IndexOptions.model_validate({**self.defaults.model_dump(exclude_none=True), **condition_options})


def check_options(options: IndexOptions, dim: int) -> None:
    """Refuse options no index of this dimension can use (ValueError naming the field)."""
    if options.pq_m is not None and dim % options.pq_m:
        raise ValueError(f"pq_m={options.pq_m} does not divide the embedding dimension {dim}")


def choose(kind: IndexKind, n: int, dim: int, options: IndexOptions, policy: AutoPolicy) -> IndexConfig:
    """The config for `n` vectors of `dim` under what a condition asked for.

    An IVF-PQ that does not yet have the vectors to train is exact until it does (the owner
    rebuilds it when `choose` starts answering differently).
    """
    if kind == "flat":
        return FlatConfig()
    if kind == "hnsw":
        defaults = HNSWConfig()
        return HNSWConfig(m=options.hnsw_m or defaults.m,
                          ef_construction=options.ef_construction or defaults.ef_construction,
                          ef_search=options.ef_search or defaults.ef_search)
    if kind == "auto" and n <= policy.exact_max:
        return FlatConfig()
    ivf = _sized_ivfpq(n, dim, options)
    if kind == "auto" and options.refine is None:
        exact = replace(ivf, refine="flat")
        ivf = exact if n * exact.bytes_per_vector(dim) <= policy.memory_budget_bytes else ivf
    return ivf if n >= ivf.training_vectors() else FlatConfig()


def _sized_ivfpq(n: int, dim: int, options: IndexOptions) -> IVFPQConfig:
    """Lists ~ sqrt(n) (each list about as long as there are lists); nprobe scans ~1/16 of them
    (at least 8); the refine stage re-ranks 64 candidates per result. On 1M clustered 512-d vectors
    16 candidates per result gave recall@10 0.85 and 64 gave 0.97 at the same p99 (~3.5 ms): the PQ
    codes order a dense cluster only roughly, and re-ranking more of it is nearly free."""
    nlist = options.nlist or max(16, round(math.sqrt(max(n, 1))))
    return IVFPQConfig(
        nlist=nlist,
        nprobe=options.nprobe or max(8, nlist // 16),
        pq_m=options.pq_m or _pq_subquantizers(dim),
        pq_nbits=options.pq_nbits or 8,
        refine=options.refine or "sq8",
        k_factor=options.k_factor or 64,
    )


def _pq_subquantizers(dim: int) -> int:
    """The largest GPU-supported code size that divides dim and is at most dim / 4."""
    limit = max(1, dim // 4)
    return max(m for m in _GPU_PQ_CODE_SIZES if m <= limit and dim % m == 0)


def to_dict(config: IndexConfig) -> dict[str, Any]:
    """What a snapshot records and `GET .../conditions` shows: the kind, its parameters, its factory."""
    return {"kind": config.kind, "factory": config.factory(), **asdict(config)}


def from_dict(data: dict[str, Any]) -> IndexConfig:
    cls = CONFIGS[data["kind"]]
    names = {f.name for f in fields(cls)}
    return cls(**{key: value for key, value in data.items() if key in names})
