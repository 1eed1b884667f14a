"""`focalserve index add`: bulk-load a folder of images into a collection of a running gateway.

Built on the SDK's `add_items`, so every item takes the path of any other add (chunked to the
server's limit, retried on 503, validated, embedded under every condition, committed before it
is acknowledged). Resumable: ids already in the collection are skipped, so a rerun after an
interruption loads only the rest. An item's id is its path relative to the folder.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

from focalserve_client.client import Client
from focalserve_client.errors import FocalServeError, NotFoundError
from focalserve_client.schemas import IndexKind

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
PAGE_SIZE = 1000  # the server's largest page of ids
UPLOAD_TIMEOUT_S = 300.0  # a chunk is embedded under every condition before it is acknowledged


def image_files(folder: Path) -> list[Path]:
    """Image files under `folder`, recursively, in a stable order."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def read_metadata(path: Path | None) -> dict[str, dict[str, Any]]:
    """JSONL lines `{"file": "relative/path.jpg", ...}` (or `"id"`); the other keys are the metadata."""
    if path is None:
        return {}
    metadata = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        record = json.loads(line)
        key = record.pop("file", None) or record.pop("id", None)
        if not isinstance(key, str):
            raise ValueError(f"{path}:{number}: each line needs a 'file' (or 'id')")
        metadata[key] = record
    return metadata


def existing_ids(client: Client, collection: str) -> set[str]:
    """Every id in the collection, a page at a time."""
    ids: set[str] = set()
    after: str | None = None
    while True:
        page = client.list_items(collection, after=after, limit=PAGE_SIZE)
        ids.update(item.id for item in page.items)
        if page.next_after is None:
            return ids
        if page.next_after == after:  # a server that does not advance would loop forever
            raise FocalServeError(f"listing {collection!r} did not advance past {after!r}")
        after = page.next_after


def ensure_collection(client: Client, collection: str, model: str | None, index: IndexKind) -> None:
    """Create the collection (with `model`'s family; `index` for a CLIP collection's view) unless it exists."""
    try:
        client.get_collection(collection)
    except NotFoundError:
        client.create_collection(collection, model=model, index=index)


def items(
    folder: Path, files: list[Path], metadata: dict[str, dict[str, Any]]
) -> Iterator[tuple[str, Path, dict[str, Any]]]:
    """(id, path, metadata) per file; the SDK reads each image when its chunk is sent."""
    for path in files:
        item_id = path.relative_to(folder).as_posix()
        yield item_id, path, metadata.get(item_id, {})


def add_index_command(subcommands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `focalserve index add` (the `focalserve.commands` entry point `index`)."""
    parser = subcommands.add_parser("index", help="manage collections of a running gateway")
    actions = parser.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="add a folder of images to a collection (resumable)")
    add.add_argument("--collection", required=True)
    add.add_argument("--images", type=Path, required=True, help="folder of images (searched recursively)")
    add.add_argument("--metadata", type=Path, default=None, help="JSONL: one {'file': ..., key: value} per line")
    add.add_argument("--url", default="http://127.0.0.1:8000")
    add.add_argument("--model", default=None, help="create the collection with this family if it does not exist")
    add.add_argument("--index", choices=get_args(IndexKind), default="auto",
                     help="index of a new plain CLIP collection's view (auto: exact, then IVF-PQ as it grows)")
    add.add_argument("--batch-size", type=int, default=32, help="items per request (lowered to the server's limit)")
    add.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    add.add_argument("--api-key", default=None)
    add.set_defaults(handler=_add)


def _add(args: argparse.Namespace) -> None:
    files = image_files(args.images)
    metadata = read_metadata(args.metadata)
    try:
        with Client(args.url, args.api_key, timeout=UPLOAD_TIMEOUT_S) as client:
            ensure_collection(client, args.collection, args.model, args.index)
            done = existing_ids(client, args.collection)
            todo = [path for path in files if path.relative_to(args.images).as_posix() not in done]
            skipped = len(files) - len(todo)
            print(f"{len(files)} images, {skipped} already present, adding {len(todo)}", file=sys.stderr)
            added = client.add_items(
                args.collection,
                list(items(args.images, todo, metadata)),  # a list: the bar knows the total
                chunk_size=args.batch_size,
                concurrency=args.concurrency,
                progress=True,
            )
    except FocalServeError as error:
        sys.exit(f"focalserve index add: {error}")
    print(json.dumps({"collection": args.collection, "added": added, "skipped": skipped}))
