"""`focalserve ingest SOURCE --collection NAME` (or `--output DIR`): the bulk path into a store,
which `focalserve serve`'s settings choose (FOCALSERVE_DATA_DIR or FOCALSERVE_DATABASE_URL,
FOCALSERVE_MODEL_REPOSITORY, FOCALSERVE_DEVICE), so a gateway and an ingest meet in one store."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import get_args

from focalserve_client.schemas import IndexKind


def add_ingest_command(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "ingest", help="embed a folder, a manifest or WebDataset shards into a collection, on Ray Data",
        description=__doc__,
    )
    parser.add_argument("source", help="a folder of images, a manifest (.parquet, .csv, .jsonl), WebDataset .tar "
                                       "shards (or a folder of them), or an --output folder; local or s3://, gs://")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--collection", help="the collection to write into (made if it does not exist)")
    target.add_argument("--output", help="write Parquet vectors into this folder instead")
    parser.add_argument("--model", help="the family of a new collection or of --output (default: the only one)")
    parser.add_argument("--instruction", action="append", default=[], dest="instructions",
                        help="register this condition first (repeatable); with --output, the conditions")
    parser.add_argument("--index", choices=get_args(IndexKind), default="auto", help="index of new conditions")
    parser.add_argument("--keep-images", action=argparse.BooleanOptionalAction, default=True,
                        help="store the image bytes (default), or only their source (--no-keep-images)")
    parser.add_argument("--strict", action="store_true", help="fail on the first image that fails")
    parser.add_argument("--report", type=Path, default=Path("ingest-failures.jsonl"),
                        help="where the images that failed are listed (JSON lines)")
    parser.add_argument("--address", help="a Ray cluster (default: RAY_ADDRESS, else a local one)")
    parser.add_argument("--format", choices=["folder", "manifest", "webdataset", "vectors"],
                        help="what SOURCE is (default: detected)")
    parser.add_argument("--path-column", help="a manifest's image column (default: path, url, uri, image or file)")
    parser.add_argument("--id-column", help="a manifest's item id column (default: id, else the image column)")
    parser.add_argument("--batch-size", type=int, default=256,
                        help="images per actor call, run through the model in its largest batches")
    parser.add_argument("--actors", type=int, default=0, help="embedding actors (default: one per GPU, or cores - 1)")
    parser.add_argument("--threads-per-actor", type=int, default=0, help="torch threads of a CPU actor")
    parser.add_argument("--rows-per-write", type=int, default=1024, help="rows per store transaction")
    parser.add_argument("--data-dir", type=Path, help="the SQLite store (env FOCALSERVE_DATA_DIR)")
    parser.add_argument("--database-url", help="the PostgreSQL store (env FOCALSERVE_DATABASE_URL)")
    parser.add_argument("--model-repository", type=Path, help="env FOCALSERVE_MODEL_REPOSITORY")
    parser.add_argument("--device", help="where the actors run the models: cpu or cuda (env FOCALSERVE_DEVICE)")
    parser.set_defaults(handler=_ingest)


def _ingest(args: argparse.Namespace) -> None:
    from pydantic import ValidationError

    from focalserve_ingest.collection import IngestRefused
    from focalserve_ingest.pipeline import IngestOptions, ingest
    from focalserve_ingest.prepare import IngestFailed
    from focalserve_ingest.sources import SourceError
    from focalserve_server.config import Settings

    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides = {name: getattr(args, name) for name in ("data_dir", "database_url", "model_repository", "device")
                 if getattr(args, name) is not None}
    try:
        settings = Settings(**overrides)
        options = IngestOptions(
            args.source, collection=args.collection, output=args.output, model=args.model,
            instructions=args.instructions, index=args.index, keep_images=args.keep_images, strict=args.strict,
            report=args.report, address=args.address, format=args.format, path_column=args.path_column,
            id_column=args.id_column, batch_size=args.batch_size, actors=args.actors,
            threads_per_actor=args.threads_per_actor, rows_per_write=args.rows_per_write, settings=settings,
        )
        summary = ingest(options)
    except (ValidationError, IngestRefused, SourceError, IngestFailed) as error:
        sys.exit(f"focalserve ingest: {error}")
    print(summary)
    if summary.failed:
        print(f"{summary.failed} images failed; rerun to retry them, or see {summary.report}", file=sys.stderr)
