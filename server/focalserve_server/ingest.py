"""`focalserve index add`: bulk-load a folder of images into a collection of a running gateway.

It goes through the HTTP API, so every item takes the same path as any other add (validated,
embedded under every condition, committed before it is acknowledged). It is resumable: ids
already in the collection are skipped, so a rerun after an interruption loads only the rest.
An item's id is its path relative to the folder.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def image_files(folder: Path) -> list[Path]:
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


def existing_ids(client: httpx.Client, collection: str) -> set[str]:
    ids, after = set(), ""
    while True:
        response = client.get(f"/collections/{collection}/items", params={"after": after, "limit": 1000})
        response.raise_for_status()
        page = response.json()
        ids.update(item["id"] for item in page["items"])
        if page["next_after"] is None:
            return ids
        after = page["next_after"]


def batches(files: list[Path], size: int) -> Iterator[list[Path]]:
    for start in range(0, len(files), size):
        yield files[start:start + size]


async def upload(
    url: str, collection: str, folder: Path, files: list[Path], metadata: dict[str, dict[str, Any]],
    batch_size: int, concurrency: int, headers: dict[str, str],
) -> int:
    """Send batches with at most `concurrency` in flight; returns how many items were acknowledged."""
    semaphore = asyncio.Semaphore(concurrency)
    progress = tqdm(total=len(files), desc=f"add to {collection}", unit="img", dynamic_ncols=True)

    async def send(client: httpx.AsyncClient, batch: list[Path]) -> int:
        items = []
        for path in batch:
            item_id = path.relative_to(folder).as_posix()
            items.append({"id": item_id, "image": base64.b64encode(path.read_bytes()).decode(),
                          "metadata": metadata.get(item_id, {})})
        async with semaphore:
            response = await client.post(f"/collections/{collection}/items", json={"items": items})
        if response.status_code != 201:
            raise RuntimeError(f"batch starting at {batch[0]}: HTTP {response.status_code} {response.text[:300]}")
        progress.update(len(batch))
        return response.json()["added"]

    async with httpx.AsyncClient(base_url=url, timeout=300, headers=headers) as client:
        added = await asyncio.gather(*(send(client, batch) for batch in batches(files, batch_size)))
    progress.close()
    return sum(added)


def add_index_command(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser("index", help="manage collections of a running gateway")
    actions = parser.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="add a folder of images to a collection (resumable)")
    add.add_argument("--collection", required=True)
    add.add_argument("--images", type=Path, required=True, help="folder of images (searched recursively)")
    add.add_argument("--metadata", type=Path, default=None, help="JSONL: one {'file': ..., key: value} per line")
    add.add_argument("--url", default="http://127.0.0.1:8000")
    add.add_argument("--model", default=None, help="create the collection with this family if it does not exist")
    add.add_argument("--batch-size", type=int, default=32)
    add.add_argument("--concurrency", type=int, default=4)
    add.add_argument("--api-key", default=None)
    add.set_defaults(handler=_add)


def _add(args: argparse.Namespace) -> None:
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    files = image_files(args.images)
    metadata = read_metadata(args.metadata)
    with httpx.Client(base_url=args.url, timeout=60, headers=headers) as client:
        if client.get(f"/collections/{args.collection}").status_code == 404:
            body = {"name": args.collection, **({"model": args.model} if args.model else {})}
            client.post("/collections", json=body).raise_for_status()
        done = existing_ids(client, args.collection)
    todo = [path for path in files if path.relative_to(args.images).as_posix() not in done]
    print(f"{len(files)} images, {len(files) - len(todo)} already present, adding {len(todo)}", file=sys.stderr)
    added = asyncio.run(upload(args.url, args.collection, args.images, todo, metadata,
                               args.batch_size, args.concurrency, headers))
    print(json.dumps({"collection": args.collection, "added": added, "skipped": len(files) - len(todo)}))
