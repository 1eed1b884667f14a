"""The gateway's one settings object: environment (`FOCALSERVE_*`) and CLI flags map onto it."""

from __future__ import annotations

import json
from ipaddress import ip_network
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from focalserve_client.schemas import IndexOptions
from focalserve_server.collections.index_kinds import AutoPolicy, IndexPolicy, RecallTarget
from focalserve_server.media.urls import allowed_host_pattern


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FOCALSERVE_", extra="ignore")

    host: str = Field("127.0.0.1", description="Address to bind.")
    port: int = Field(8000, ge=0, le=65535, description="Port to bind (0 picks a free one).")
    listen_fd: int | None = Field(
        None, ge=0, description="Serve on this inherited listening socket instead of binding host and port "
                                "(socket activation; launchers that must know the port before the server starts).",
    )
    workers: int = Field(
        1, ge=1, description="Front processes sharing the port; above 1, the models and collections run in one "
                             "engine process behind them (README: workers).",
    )
    pixel_slots: int = Field(
        256, ge=1, description="Images each front can have in flight to the engine (its shared-memory slots).",
    )
    engine_startup_timeout_s: float = Field(
        600.0, gt=0, description="How long a front waits for the engine process to load its models.",
    )
    runtime_dir: Path | None = Field(
        None, description="Where the processes of --workers N share sockets, pixel regions, metrics files and "
                          "pid files; default: a new directory under /dev/shm.",
    )
    model_repository: Path = Field(Path("model_repository"), description="Triton model repository.")
    data_dir: Path = Field(Path("data"), description="Collections, indexes and image blobs.")
    backend: Literal["embedded", "triton"] = Field("embedded", description="Where models run.")
    triton_url: str = Field("127.0.0.1:8001", description="Triton address (gRPC by default).")
    triton_protocol: Literal["grpc", "http"] = "grpc"
    triton_timeout_s: float = Field(30.0, gt=0, description="Deadline of one Triton call.")
    triton_startup_timeout_s: float = Field(120.0, gt=0, description="How long start-up waits for Triton.")
    triton_max_inflight: int = Field(4, ge=1, description="Batches per model in flight to Triton at once.")
    triton_shared_memory: bool = Field(
        False, description="Hand images to Triton through system shared memory: only for a Triton on this host "
                           "that shares its /dev/shm (compose and the k8s pod do); over gRPC/HTTP otherwise.",
    )
    families: list[str] = Field(default_factory=list, description="Families to load; empty = all.")

    max_batch_size: int = Field(64, ge=1, description="Upper bound; a model's own max_batch_size wins if lower.")
    max_delay_ms: float = Field(5.0, ge=0, description="How long a batch waits to fill.")
    max_queue_size: int = Field(1024, ge=1, description="Per-batcher queue; beyond it requests get 503.")
    retry_after_s: int = Field(1, ge=1, description="Retry-After sent with 503 responses.")
    torch_threads: int = Field(0, ge=0, description="Intra-op threads of the embedded backend; 0 = torch's default.")
    device: str = Field(
        "cpu", pattern=r"^(cpu|cuda(:[0-9]+)?)$", description="Where the embedded backend runs: cpu, cuda or cuda:N."
    )
    dtype: Literal["float32", "float16", "bfloat16"] = Field(
        "float32", description="Weights and activations of the embedded backend; embeddings are float32 either way."
    )
    warmup: bool = Field(True, description="Run every model on representative batches before serving.")
    preprocess_workers: int = Field(2, ge=1, description="Threads that decode and preprocess images.")
    preprocess_device: str = Field(
        "pil", pattern=r"^(pil|cpu|cuda(:[0-9]+)?)$",
        description="Where images are decoded and resized: pil (PIL on the decode threads), or a torch device: "
                    "cuda or cuda:N (nvJPEG in batches, resizing on the GPU), cpu (the same torch path on the CPU).",
    )

    max_inputs_per_request: int = Field(256, ge=1)
    max_image_bytes: int = Field(16 * 1024 * 1024, ge=1, description="Largest encoded image accepted.")
    max_image_pixels: int = Field(40_000_000, ge=1, description="Decompression-bomb guard (width x height).")
    allowed_media_domains: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Hosts image URLs may be fetched from, comma-separated: images.example.com "
                                          "(that host), *.example.com (names below it); empty = data: URLs only.",
    )
    media_private_networks: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="CIDRs image fetches may reach although not global (an image store in the "
                                          "VPC). Dangerous: whoever may send a URL reaches every address in them.",
    )
    media_fetch_timeout_s: float = Field(
        10.0, gt=0, description="Deadline of one image URL's fetch: resolution, connections, redirects, body."
    )
    media_max_redirects: int = Field(3, ge=0, description="Redirects an image fetch follows; 0 = none.")
    max_instruction_chars: int = Field(512, ge=1)
    condition_cache_size: int = Field(4096, ge=0, description="Encoded instructions kept (LRU).")
    max_body_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="Largest request body accepted.")
    request_timeout_s: float = Field(60.0, gt=0, description="Deadline of one request; past it, 503.")
    stall_timeout_s: float = Field(30.0, gt=0, description="A batch running or waiting this long makes /readyz fail.")

    database_url: SecretStr = Field(
        SecretStr(""),
        description="postgresql://user@host:port/db shared by every replica; empty = SQLite in the data dir.",
    )
    database_timeout_s: float = Field(
        5.0, gt=0, description="How long a call waits for a database connection before 503 database_unavailable."
    )
    database_statement_timeout_s: float = Field(
        15.0, gt=0, description="The most one database statement or transaction may take (a hung database, a lock "
                                "held too long) before 503 database_unavailable; SQLite: its busy timeout.",
    )
    log_poll_interval_s: float = Field(0.1, gt=0, description="How often a replica reads the change log.")
    log_retention_s: float = Field(
        3600.0, gt=0, description="How long a stopped gateway's log position keeps the change log from being "
                                  "compacted past it; back later, it rebuilds its indexes from the store.",
    )
    consistency_wait_s: float = Field(
        5.0, gt=0, description="How long a search waits for `min_seq` to be applied here before 503."
    )
    build_chunk_size: int = Field(64, ge=1, description="Items per chunk of a condition's backfill.")
    build_lease_s: float = Field(
        60.0, gt=0, description="How long a replica holds a backfill chunk before another may retry it."
    )

    index_options: IndexOptions = Field(
        default_factory=IndexOptions,
        description='Default index options, JSON (e.g. {"nprobe": 32}); a condition\'s own override them.',
    )
    index_exact_max: int = Field(50_000, ge=0, description="`auto` indexes are exact up to this many vectors.")
    index_memory_budget_mb: int = Field(
        4096, ge=1, description="`auto`: an IVF-PQ re-ranks with exact vectors while it fits, 8-bit ones beyond."
    )
    index_tombstone_ratio: float = Field(
        0.25, gt=0, description="Deleted or replaced vectors per live one past which an index is rebuilt."
    )
    index_growth_factor: float = Field(
        4.0, gt=1, description="An IVF-PQ is rebuilt (retrained) once it holds this many times its trained size."
    )
    index_recall_target: float = Field(
        0.95, gt=0, le=1, description="Recall@10 a built approximate index's search parameters are raised to "
                                      "(measured against exact search on a sample of the collection's vectors).",
    )
    index_tune_budget_ms: float = Field(
        10.0, gt=0, description="The most a query may take while tuning raises the search parameters.",
    )

    admin_key: SecretStr = Field(
        SecretStr(""), description="A bootstrap key with 'admin' on every collection and key; keys are required "
                                   "whenever it is set or any key was ever made (`focalserve keys`).",
    )
    cors_origins: list[str] = Field(default_factory=list, description="Origins allowed by CORS; empty = CORS off.")

    @field_validator("allowed_media_domains", "media_private_networks", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        """Operators write lists comma-separated; JSON lists are read too."""
        if isinstance(value, str):
            if value.lstrip().startswith("["):
                return json.loads(value)
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("allowed_media_domains")
    @classmethod
    def _host_patterns(cls, entries: list[str]) -> list[str]:
        return [allowed_host_pattern(entry) for entry in entries]

    @field_validator("media_private_networks")
    @classmethod
    def _networks(cls, entries: list[str]) -> list[str]:
        return [str(ip_network(entry.strip())) for entry in entries]

    @model_validator(mode="after")
    def _a_batch_fits_the_pixel_slots(self) -> Settings:
        if self.pixel_slots < self.max_batch_size:
            raise ValueError(f"pixel_slots ({self.pixel_slots}) must hold a whole batch (max_batch_size "
                             f"{self.max_batch_size})")
        return self

    def index_policy(self) -> IndexPolicy:
        return IndexPolicy(
            defaults=self.index_options,
            auto=AutoPolicy(self.index_exact_max, self.index_memory_budget_mb << 20),
            tombstone_ratio=self.index_tombstone_ratio,
            growth_factor=self.index_growth_factor,
            recall=RecallTarget(self.index_recall_target, self.index_tune_budget_ms),
        )
