"""Request and response schemas of the FocalServe HTTP API.

They live in the client package and the server imports them, so the two never disagree
(docs/design.md section 1). Limits that depend on the server's settings (input count,
instruction length, image size) are enforced by the server, which reports them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Request(BaseModel):
    """What a client sends: strict, so a misspelt field is refused rather than silently dropped."""

    model_config = ConfigDict(extra="forbid")


class _Response(BaseModel):
    """What a server answers: unknown fields are ignored, so a newer server that adds a field
    does not break an older client. Ignored rather than kept (`extra="allow"`): a model holds
    exactly the fields this version documents, so nobody comes to rely on an untyped attribute
    that an older server would not send."""

    model_config = ConfigDict(extra="ignore")


class ImageFromURL(_Request):
    """An image named by URL instead of sent inline."""

    url: str = Field(
        max_length=8192,
        description="A data: URL (data:image/png;base64,...), always accepted; or an http(s) URL, fetched only "
        "from the hosts the gateway allows (`allowed_media_domains`, none by default).",
    )


class EmbedInput(_Request):
    """One input: an image (optionally under an instruction), or a text."""

    image: str | ImageFromURL | None = Field(
        default=None, description="Base64-encoded image bytes (PNG, JPEG, ...), or {\"url\": ...}."
    )
    instruction: str | None = Field(
        default=None, description="The condition, e.g. 'what colour is the car?'. FocalLens families only."
    )
    instructions: list[str] | None = Field(
        default=None,
        min_length=1,
        description="Several conditions for one image, in place of 'instruction': one embedding each, in this "
        "order (a readout family runs the image once for all of them). FocalLens families only.",
    )
    text: str | None = Field(default=None, description="A text to embed (the query side of search).")

    @model_validator(mode="after")
    def _one_kind(self) -> EmbedInput:
        if (self.image is None) == (self.text is None):
            raise ValueError("each input needs exactly one of 'image' or 'text'")
        if self.instruction is not None and self.instructions is not None:
            raise ValueError("give 'instruction' or 'instructions', not both")
        if self.text is not None and (self.instruction is not None or self.instructions is not None):
            raise ValueError("instructions condition an image; a text input takes none")
        return self

    @property
    def embedding_count(self) -> int:
        """How many embeddings the input is answered with."""
        return len(self.instructions) if self.instructions is not None else 1


EncodingFormat = Literal["float", "base64"]


class EmbedRequest(_Request):
    model: str | None = Field(default=None, description="Model family; optional when one is loaded.")
    inputs: list[EmbedInput] = Field(min_length=1)
    encoding_format: EncodingFormat = Field(
        default="float",
        description="float: each embedding a list of numbers; base64: the little-endian float32 bytes of each, "
        "base64-encoded (as OpenAI's API sends them): a quarter of the text, and no float formatting or parsing.",
    )


class Embedding(_Response):
    index: int
    embedding: list[float] | str = Field(description="Numbers, or base64 of little-endian float32 (`encoding_format`).")
    instruction: str | None = Field(description="The instruction as normalised by the server.")
    space: str = Field(
        description="family:checkpoint-hash:instruction-hash; only vectors of one space are comparable "
        "(text embeddings carry 'text' and are comparable with every image space of their family)."
    )


class EmbedResponse(_Response):
    model: str
    dim: int
    data: list[Embedding]


class ModelInfo(_Response):
    name: str
    family: Literal["focallens", "clip"]
    open_clip_model: str
    embedding_dim: int
    condition_dim: int
    image_size: int
    context_length: int
    checkpoint_hash: str
    requires_instruction: bool
    conditioning: Literal["full", "readout"] | None = Field(
        default=None,
        description="FocalLens: 'readout' runs an image once for all its instructions, 'full' once per instruction.",
    )
    device: str | None = Field(default=None, description="cpu / cuda:N in the gateway; null when Triton runs it.")
    dtype: str | None = Field(default=None, description="float32 / float16 / bfloat16; null when Triton runs it.")


class ModelsResponse(_Response):
    models: list[ModelInfo]


class HealthResponse(_Response):
    status: Literal["ok", "not_ready"]
    detail: dict[str, str] = Field(default_factory=dict)


class ErrorDetail(_Response):
    code: str = Field(description="Stable machine-readable code, e.g. 'too_many_inputs'.")
    message: str = Field(description="For people; it does not repeat `loc`.")
    loc: list[str | int] | None = Field(
        default=None,
        description="JSON path of the failing input, e.g. ['inputs', 2, 'image']; absent when not applicable.",
    )
    limit: int | None = Field(
        default=None, description="The number exceeded (inputs per request, body bytes, characters), if any."
    )
    reason: str | None = Field(
        default=None, description="Which rule refused an image URL, e.g. 'domain_not_allowed', 'address_not_global'."
    )


class ErrorResponse(_Response):
    error: ErrorDetail


# --- collections and search -------------------------------------------------------------

IndexKind = Literal["flat", "hnsw", "ivfpq", "auto"]
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
ITEM_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9 ._:@/+-]{0,255}$"


class IndexOptions(_Request):
    """Index parameters of one condition; whatever is left out is chosen from the collection's size."""

    nlist: int | None = Field(default=None, ge=1, description="IVF-PQ: coarse lists (default ~sqrt(n)).")
    nprobe: int | None = Field(default=None, ge=1, description="IVF-PQ: lists scanned per query.")
    pq_m: int | None = Field(default=None, ge=1, description="IVF-PQ: bytes per code; must divide the dimension.")
    pq_nbits: int | None = Field(default=None, ge=4, le=12, description="IVF-PQ: bits per sub-quantiser.")
    refine: Literal["flat", "sq8", "none"] | None = Field(
        default=None, description="IVF-PQ: re-rank candidates with exact (flat) or 8-bit vectors, or not at all."
    )
    k_factor: int | None = Field(default=None, ge=1, le=64, description="IVF-PQ: candidates re-ranked per result.")
    hnsw_m: int | None = Field(default=None, ge=4, le=128, description="HNSW: links per node.")
    ef_construction: int | None = Field(default=None, ge=1, description="HNSW: build-time search width.")
    ef_search: int | None = Field(default=None, ge=1, description="HNSW: query-time search width.")


class CollectionCreate(_Request):
    name: str = Field(pattern=NAME_PATTERN, description="Letters, digits, '.', '_', '-'; at most 128.")
    model: str | None = Field(default=None, description="Model family; optional when one is loaded.")
    index: IndexKind = Field(default="auto", description="Index type of the unconditional view (plain CLIP).")
    index_options: IndexOptions = Field(default_factory=IndexOptions)


class IndexInUse(_Response):
    """The index one gateway holds for a condition now (each gateway builds its own)."""

    kind: Literal["flat", "hnsw", "ivfpq"]
    factory: str = Field(description="The FAISS index_factory string, e.g. 'IVF1000,PQ64x8,Refine(SQ8)'.")
    parameters: dict[str, int | str] = Field(default_factory=dict)
    vectors: int
    tombstones: int = Field(description="Deleted or replaced vectors still inside, filtered out of results.")
    built_for: int = Field(description="Vectors it was sized for when built.")
    recall_at_10: float | None = Field(
        default=None, description="Measured against exact search on a sample of the collection's own vectors when "
                                  "an approximate index was built, after tuning its search parameters; null for exact.",
    )
    rebuilding: bool = Field(description="A replacement is being built in the background.")


class ConditionInfo(_Response):
    instruction: str | None = Field(description="Normalised instruction; null for a CLIP collection's view.")
    index: IndexKind
    index_options: dict[str, int | str] = Field(default_factory=dict, description="Options set at registration.")
    index_in_use: IndexInUse | None = Field(default=None, description="Null until this gateway has the index.")
    status: Literal["building", "ready", "failed"]
    embedded: int = Field(description="Items embedded under this condition so far.")
    total: int = Field(description="Items to embed when the build started or since.")
    error: str | None = None


class CollectionInfo(_Response):
    name: str
    model: str
    family: Literal["focallens", "clip"]
    dim: int
    items: int
    conditions: list[ConditionInfo]


class CollectionList(_Response):
    collections: list[CollectionInfo]


class ItemIn(_Request):
    id: str = Field(pattern=ITEM_ID_PATTERN, description="Unique in the collection; re-adding replaces.")
    image: str | ImageFromURL = Field(description="Base64-encoded image bytes, or {\"url\": ...}.")
    metadata: dict[str, str | int | float | bool | None] = Field(default_factory=dict)


class ItemsAdd(_Request):
    items: list[ItemIn] = Field(min_length=1)


class ItemsAdded(_Response):
    added: int


class ItemInfo(_Response):
    id: str
    metadata: dict[str, str | int | float | bool | None]
    image_sha256: str
    source: str | None = Field(
        default=None, description="Where the image came from: the URL of an add by URL, or where `focalserve ingest` "
        "read it; null for images sent inline."
    )
    image_kept: bool = Field(default=True, description="False when only the source is stored (--no-keep-images).")


class ConditionCreate(_Request):
    instruction: str | None = Field(default=None, description="The instruction to register.")
    instructions: list[str] | None = Field(
        default=None,
        min_length=1,
        description="Several instructions registered together, in place of 'instruction': their backfills "
        "build in one pass over the stored images (a readout family runs each image once for all of them).",
    )
    index: IndexKind = Field(default="auto", description="'auto' follows the collection's size.")
    index_options: IndexOptions = Field(default_factory=IndexOptions)

    @model_validator(mode="after")
    def _one_form(self) -> ConditionCreate:
        if (self.instruction is None) == (self.instructions is None):
            raise ValueError("give 'instruction' or 'instructions' (a list), not both or neither")
        return self


class SearchQuery(_Request):
    image: str | None = Field(default=None, description="Base64 image, embedded under the condition.")
    text: str | None = Field(default=None, description="Text, embedded by the family's text model.")
    item_id: str | None = Field(default=None, description="A stored item; its stored vector is the query.")

    @model_validator(mode="after")
    def _one_kind(self) -> SearchQuery:
        if sum(value is not None for value in (self.image, self.text, self.item_id)) != 1:
            raise ValueError("the query needs exactly one of 'image', 'text' or 'item_id'")
        return self


SEQ_HEADER = "FocalServe-Seq"  # a write's change-log position; on a search, the position the replica has applied


class SearchRequest(_Request):
    collection: str = Field(pattern=NAME_PATTERN)
    condition: str | None = Field(default=None, description="A registered instruction; null for CLIP collections.")
    query: SearchQuery
    k: int = Field(default=10, ge=1, le=1000)
    filter: dict[str, str | int | float | bool | None] = Field(
        default_factory=dict, description="Metadata equality on every key."
    )
    min_seq: int = Field(
        default=0,
        ge=0,
        description=f"Answer only once this replica has applied this change-log position (a write's "
        f"`{SEQ_HEADER}` header); 503 `replica_behind` if it cannot within the server's consistency wait.",
    )


class SearchResult(_Response):
    id: str
    score: float
    metadata: dict[str, str | int | float | bool | None]


class SearchResponse(_Response):
    collection: str
    condition: str | None
    results: list[SearchResult]


class ItemPage(_Response):
    items: list[ItemInfo]
    next_after: str | None = Field(description="Pass as `after` for the next page; null on the last page.")


# --- keys, grants, limits and the audit trail ----------------------------------------------

Action = Literal["read", "write", "admin"]
GRANT_PATTERN = r"^[A-Za-z0-9.*?_-]{1,128}$"


class Grant(_Request):
    collections: str = Field(
        pattern=GRANT_PATTERN,
        description="A collection name or a glob over names ('a-*', '*'); '*' with 'admin' manages keys too.",
    )
    action: Action = Field(
        description="read: search and read; write: add and delete items, register conditions; admin: create and "
        "delete the collections too."
    )


class KeyLimits(_Request):
    """Per-key limits, shared by every gateway on the store; an absent one is unlimited."""

    window_s: int = Field(default=60, ge=1, le=86_400, description="The window of the two quotas below.")
    requests: int | None = Field(default=None, ge=1, description="Requests per window.")
    images: int | None = Field(default=None, ge=1, description="Images (embedded or added) per window.")
    burst: int | None = Field(default=None, ge=1, description="Requests in any one second.")
    concurrency: int | None = Field(default=None, ge=1, description="Requests in flight at once.")


class KeyCreate(_Request):
    name: str = Field(min_length=1, max_length=128, description="Who the key is for, e.g. 'team-a'.")
    grants: list[Grant] = Field(default_factory=list)
    limits: KeyLimits = Field(default_factory=KeyLimits)


class KeyGrants(_Request):
    grants: list[Grant]


class KeyInfo(_Response):
    id: str
    name: str
    prefix: str = Field(description="The first characters of the key, to recognise it by; never the rest.")
    grants: list[Grant]
    limits: KeyLimits
    created: float = Field(description="Unix time.")
    last_used: float | None = Field(description="Unix time, to within a minute; null if never used.")
    revoked: float | None = Field(description="Unix time; a revoked key is refused everywhere.")


class KeyIssued(KeyInfo):
    key: str = Field(description="The whole key, shown this once: the server keeps only a slow hash of it.")


class KeyList(_Response):
    keys: list[KeyInfo]


class AuditEntry(_Response):
    seq: int
    time: float = Field(description="Unix time.")
    key: str = Field(description="The key id that acted ('bootstrap' for the key from the environment).")
    action: str = Field(description="What was done, e.g. 'collection.create', 'key.revoke'.")
    target: str = Field(description="The collection or key acted on.")
    detail: dict[str, Any] = Field(default_factory=dict)


class AuditPage(_Response):
    entries: list[AuditEntry]
    next_after: int | None = Field(description="Pass as `after` for the next page; null on the last.")
