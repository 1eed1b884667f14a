"""One ingest run: read, prepare (CPU tasks), embed (an actor pool), write (a Datasink).

Resources: on GPUs, one actor per GPU (`num_gpus=1`); on CPUs, actors that leave one core of the
cluster to the reading, preparing and writing tasks (an actor pool that takes every CPU starves
the readers and the pipeline stalls). Start-up (Ray, the actors loading their graphs) is timed on
its own: it is paid once per run, not per image.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import ray
import ray.data
import ray.exceptions
from ray.data import ActorPoolStrategy

from focalserve_client.schemas import IndexKind
from focalserve_family import FamilySpec, families_from_configs, read_repository
from focalserve_ingest.collection import IngestRefused, normalised, pick_family, prepare_collection
from focalserve_ingest.embedder import Embedder
from focalserve_ingest.prepare import IngestFailed, PrepareConfig, Skip, prepare_images
from focalserve_ingest.sink import CollectionSink, RowsSink, Written
from focalserve_ingest.sources import SourceFormat, detect, read_images
from focalserve_ingest.stores import StoreAddress
from focalserve_ingest.tally import Tally
from focalserve_ingest.vectors import ParquetSink, VectorsManifest, read_vectors
from focalserve_server.config import Settings

# What one prepare task reserves beside CPU actors: less than an actor holds, so that Ray Data does not
# fuse the decoding into the actors (equal resources would: each actor would then decode and embed in
# turn, where here the two overlap); two prepare tasks share the core the actors leave.
CPU_PREPARE_SHARE = 0.5


@dataclass
class IngestOptions:
    source: str
    collection: str | None = None  # write into this collection (made if missing) ...
    output: str | None = None  # ... or Parquet vectors into this folder
    model: str | None = None  # the family of a new collection or of --output; default: the only one
    instructions: list[str] = field(default_factory=list)  # registered first; --output: the conditions
    index: IndexKind = "auto"  # of conditions registered here
    keep_images: bool = True  # False: the items record their source only
    strict: bool = False  # fail on the first image that fails, instead of reporting it
    report: Path = Path("ingest-failures.jsonl")
    address: str | None = None  # a Ray cluster; None: RAY_ADDRESS, else a local one
    format: SourceFormat | None = None  # None: detected from SOURCE
    path_column: str | None = None
    id_column: str | None = None
    batch_size: int = 256  # images per actor call (run through the image model in its largest batches)
    actors: int = 0  # 0: one per GPU, or on CPUs one per core but one
    threads_per_actor: int = 0  # torch threads of a CPU actor; 0: the cluster's cores shared among the actors
    rows_per_write: int = 1024  # rows per store transaction (one change-log entry)
    settings: Settings = field(default_factory=Settings)  # the store, the model repository, the image limits


@dataclass(frozen=True)
class IngestSummary:
    images: int  # new items stored, or rows written to --output
    vectors: int  # written: the new items' and the vectors stored items lacked
    already_stored: int  # skipped without embedding, or found stored when written
    failed: int
    elapsed_s: float
    startup_s: float  # until the first actor was ready (Ray's start, the graphs loaded)
    report: Path

    @property
    def images_per_s(self) -> float:
        """Once running: start-up excluded."""
        return self.images / max(self.elapsed_s - self.startup_s, 1e-9)

    def __str__(self) -> str:
        return (f"ingested {self.images} images ({self.vectors} vectors) in {self.elapsed_s:.1f} s "
                f"({self.images_per_s:.0f} images/s once "
                f"running, after {self.startup_s:.1f} s of start-up); {self.already_stored} already stored, "
                f"{self.failed} failed (listed in {self.report})")


def ingest(options: IngestOptions) -> IngestSummary:
    if (options.collection is None) == (options.output is None):
        raise IngestRefused("name a --collection to write into, or an --output folder, not both")
    started = time.time()
    settings = options.settings
    families = families_from_configs(read_repository(settings.model_repository))
    kind = options.format or detect(options.source)
    store = StoreAddress.of(settings)
    if options.collection is not None:
        spec, conditions = prepare_collection(
            store.open(), families, options.collection, options.model,
            normalised(options.instructions, settings.max_instruction_chars), options.index, settings.build_chunk_size,
        )
        instructions = [condition.instruction for condition in conditions]
        sink: RowsSink = CollectionSink(store, options.collection, [c.rowid for c in conditions],
                                        options.rows_per_write)
        skip = Skip(store, options.collection, tuple(c.rowid for c in conditions))
    else:
        assert options.output is not None
        spec = pick_family(families, options.model)
        texts = normalised(options.instructions, settings.max_instruction_chars)
        if spec.conditional != bool(texts):
            raise IngestRefused(f"{spec.name} is a FocalLens family: name the conditions with --instruction"
                                if spec.conditional else f"{spec.name} is a plain CLIP family: it takes no instruction")
        instructions = list(texts) if spec.conditional else [None]
        VectorsManifest.of(spec, instructions).write(options.output)
        sink, skip = ParquetSink(options.output, options.rows_per_write), None
    if not ray.is_initialized():
        ray.init(address=options.address, include_dashboard=False, logging_level=logging.WARNING)
    ray_started = time.time()
    tally = Tally.remote()  # type: ignore[attr-defined]
    if kind == "vectors":
        manifest = VectorsManifest.read(options.source)
        if (manifest.model, manifest.checkpoint_hash) != (spec.name, spec.checkpoint_hash):
            raise IngestRefused(f"{options.source} holds vectors of {manifest.model} at checkpoint "
                                f"{manifest.checkpoint_hash}; the collection's model is {spec.name} at "
                                f"{spec.checkpoint_hash}: ingest the images again")
        rows = read_vectors(options.source, manifest, instructions)
    else:
        rows = _embedded(options, spec, instructions, kind, skip, tally)
    try:
        rows.write_datasink(sink)
    except ray.exceptions.RayTaskError as error:
        failed = _strict_failure(error)
        if failed is None:
            raise
        raise failed from error
    elapsed = time.time() - started
    counts, ready = ray.get(tally.totals.remote())
    return _summary(options, sink.written, counts.get("stored", 0), elapsed, (ready or ray_started) - started)


def _embedded(
    options: IngestOptions, spec: FamilySpec, instructions: list[str | None], kind: SourceFormat, skip: Skip | None,
    tally: object,
) -> ray.data.Dataset:
    settings = options.settings
    config = PrepareConfig(spec, settings.max_image_bytes, settings.max_image_pixels,
                           options.keep_images and options.collection is not None, options.strict, skip)
    batch_size = max(1, options.batch_size)
    gpu = settings.device.startswith("cuda")
    prepared = read_images(options.source, kind, options.path_column, options.id_column).map_batches(
        functools.partial(prepare_images, config=config, tally=tally), batch_size=batch_size, batch_format="numpy",
        num_cpus=1 if gpu else CPU_PREPARE_SHARE,
    )
    resources = ray.cluster_resources()
    cores = int(resources.get("CPU", 1))
    actors = options.actors or (int(resources.get("GPU", 0)) if gpu else max(1, cores - 1))
    if actors < 1:
        raise IngestRefused(f"FOCALSERVE_DEVICE={settings.device}, but the Ray cluster has no GPU")
    per_actor = 1 if gpu else max(1, (cores - 1) // actors)  # cores reserved: one is left to the tasks
    # ... but each CPU actor's torch runs on its share of every core: the prepare and write tasks are
    # light, and on 2 cores the demo family ran 270 images/s with 1 thread against 440 with 2
    threads = options.threads_per_actor or max(1, cores // actors)
    return prepared.map_batches(
        Embedder,
        fn_constructor_kwargs={
            "repository": str(settings.model_repository.resolve()), "family": spec.name,
            "instructions": instructions, "device": "cuda" if gpu else "cpu", "dtype": settings.dtype,
            "threads": 0 if gpu else threads, "tally": tally,
        },
        compute=ActorPoolStrategy(size=actors), batch_size=batch_size, batch_format="numpy",
        num_cpus=per_actor, num_gpus=1 if gpu else 0,
    )


def _strict_failure(error: ray.exceptions.RayTaskError) -> IngestFailed | None:
    """The image that failed a `strict` run. Ray hands the task's exception back as a RayTaskError whose
    cause is Ray Data's UserCodeException: the original survives only in the worker's traceback text."""
    marker = f"{IngestFailed.__module__}.{IngestFailed.__qualname__}: "
    for line in str(error).splitlines():
        if marker in line:
            return IngestFailed(line.split(marker, 1)[1])
    return None


def _summary(options: IngestOptions, written: Written, skipped: int, elapsed: float, startup: float) -> IngestSummary:
    options.report.parent.mkdir(parents=True, exist_ok=True)
    with options.report.open("w") as report:
        for failure in written.failures:
            report.write(json.dumps(failure) + "\n")
    return IngestSummary(written.items, written.vectors, skipped + written.already_stored, len(written.failures),
                         elapsed, min(startup, elapsed), options.report)
