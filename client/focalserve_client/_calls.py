"""The API's requests as `Call`s, built from what a caller passes; nothing here sends anything."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import quote

from focalserve_client._images import ImageLike, b64_image
from focalserve_client._transport import Call
from focalserve_client.schemas import (
    CollectionCreate,
    ConditionCreate,
    EmbedRequest,
    IndexKind,
    ItemIn,
    ItemsAdd,
    SearchRequest,
)

Metadata = Mapping[str, str | int | float | bool | None]
ItemLike = tuple[Any, ...] | Mapping[str, Any]
"""(id, image) / (id, image, metadata) tuples, or {"id", "image", "metadata"} mappings."""
Item = tuple[str, ImageLike, Metadata]
Instructions = str | Sequence[str | None] | None


def image_inputs(images: list[ImageLike], instructions: Instructions) -> list[dict[str, Any]]:
    """/embed inputs: each image (base64) under its instruction, or one instruction for all."""
    if instructions is None or isinstance(instructions, str):
        per_image: list[str | None] = [instructions] * len(images)
    else:
        per_image = list(instructions)
        if len(per_image) != len(images):
            raise ValueError(
                f"{len(images)} images but {len(per_image)} instructions: pass one "
                "instruction for all, or one per image"
            )
    return [
        {"image": b64_image(image), "instruction": instruction}
        for image, instruction in zip(images, per_image, strict=True)
    ]


def image_inputs_under(images: list[ImageLike], instructions: Sequence[str]) -> list[dict[str, Any]]:
    """/embed inputs: each image (base64) under every one of `instructions` (the list form)."""
    if isinstance(instructions, str) or not instructions:
        raise ValueError("instructions: a non-empty sequence of strings, every image is embedded under each")
    return [{"image": b64_image(image), "instructions": list(instructions)} for image in images]


def text_inputs(texts: str | Sequence[str]) -> list[dict[str, Any]]:
    return [{"text": text} for text in ([texts] if isinstance(texts, str) else list(texts))]


def embed_call(inputs: list[dict[str, Any]], model: str | None) -> Call:
    """Embeddings come back as base64 float32: a quarter of the bytes, and no number formatting on the
    server or parsing here."""
    body = EmbedRequest.model_validate({"model": model, "inputs": inputs, "encoding_format": "base64"})
    return Call("POST", "/embed", json=body.model_dump(exclude_none=True))


def create_collection_call(name: str, model: str | None, index: IndexKind, options: Mapping[str, Any]) -> Call:
    body = CollectionCreate.model_validate({"name": name, "model": model, "index": index, "index_options": options})
    return Call("POST", "/collections", json=body.model_dump(mode="json", exclude_none=True), idempotent=False)


def add_items_call(collection: str, chunk: list[Item]) -> Call:
    items = [
        ItemIn(id=item_id, image=b64_image(image), metadata=dict(metadata))
        for item_id, image, metadata in chunk
    ]
    body = ItemsAdd(items=items).model_dump(mode="json")
    return Call("POST", f"{collection_path(collection)}/items", json=body)


def add_condition_call(
    collection: str, instruction: str | list[str], index: IndexKind, options: Mapping[str, Any]
) -> Call:
    """One instruction (`instruction`), or several registered together (`instructions`)."""
    form = "instruction" if isinstance(instruction, str) else "instructions"
    body = ConditionCreate.model_validate({form: instruction, "index": index, "index_options": options})
    return Call("POST", f"{collection_path(collection)}/conditions",
                json=body.model_dump(mode="json", exclude_none=True))


def search_call(
    collection: str,
    condition: str | None,
    image: ImageLike | None,
    text: str | None,
    item_id: str | None,
    k: int,
    filter: Metadata | None,
    min_seq: int,
) -> Call:
    query = {
        "image": b64_image(image) if image is not None else None,
        "text": text,
        "item_id": item_id,
    }
    body = SearchRequest.model_validate(
        {
            "collection": collection,
            "condition": condition,
            "query": query,
            "k": k,
            "filter": dict(filter or {}),
            "min_seq": min_seq,
        }
    )
    return Call("POST", "/search", json=body.model_dump(mode="json"))


def collection_path(name: str) -> str:
    return f"/collections/{quote(name, safe='')}"


def item_path(collection: str, item_id: str) -> str:
    # ids may hold '/': the route takes the rest of the path. Dot segments are escaped so that
    # URL normalisation cannot rewrite them.
    segments = [
        quote(segment, safe="") if segment not in (".", "..") else "%2E" * len(segment)
        for segment in item_id.split("/")
    ]
    return f"{collection_path(collection)}/items/{'/'.join(segments)}"


def item_chunks(
    items: Iterable[ItemLike], size: Callable[[], int]
) -> Iterator[tuple[int, list[Item]]]:
    """Lazily: (offset, [(id, image, metadata), ...]) of at most `size()` items each, asked
    again for every chunk (the client lowers it once the server reports its limit)."""
    iterator, offset = iter(items), 0
    while chunk := [as_item(item) for item in itertools.islice(iterator, size())]:
        yield offset, chunk
        offset += len(chunk)


def as_item(item: ItemLike) -> Item:
    if isinstance(item, Mapping):
        unknown = set(item) - {"id", "image", "metadata"}
        if unknown or "id" not in item or "image" not in item:
            raise ValueError(
                f"an item mapping needs 'id', 'image' and optional 'metadata'; got {sorted(item)}"
            )
        return item["id"], item["image"], item.get("metadata") or {}
    if isinstance(item, tuple) and len(item) in (2, 3):
        return item[0], item[1], (item[2] if len(item) == 3 else None) or {}
    raise TypeError(
        f"items are (id, image[, metadata]) tuples or mappings, not {type(item).__name__}"
    )
