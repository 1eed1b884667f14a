"""Decoding what clients send (base64 images, plain or data URLs, images by URL), naming image types,
and encoding the embeddings answered."""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import Sequence

import numpy as np

from focalserve_client.schemas import ImageFromURL
from focalserve_server.errors import InvalidImage, Loc, await_at, check_at
from focalserve_server.media.fetch import MediaFetcher

FETCHES_AT_ONCE = 8  # URLs of one request fetched concurrently

SIGNATURES = {
    b"\x89PNG\r\n\x1a\n": "image/png",
    b"\xff\xd8\xff": "image/jpeg",
    b"GIF8": "image/gif",
    b"BM": "image/bmp",
}


def b64decode(text: str) -> bytes:
    if text.startswith("data:") and "," in text:  # accept data URLs as browsers produce them
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidImage("the image is not valid base64") from None


async def image_bytes(images: Sequence[tuple[Loc, str | ImageFromURL]], fetcher: MediaFetcher) -> list[bytes]:
    """Each image's bytes, errors located at its `loc`: base64 decoded, URLs fetched a few at a time."""
    fetching = asyncio.Semaphore(FETCHES_AT_ONCE)

    async def one(loc: Loc, image: str | ImageFromURL) -> bytes:
        if isinstance(image, str):
            return check_at(loc, b64decode, image)
        async with fetching:
            return await await_at(loc, fetcher.fetch(image.url))

    if all(isinstance(image, str) for _, image in images):  # the usual request: no tasks
        return [check_at(loc, b64decode, image) for loc, image in images if isinstance(image, str)]
    return list(await asyncio.gather(*(one(loc, image) for loc, image in images)))


def sniff_image_type(data: bytes) -> str:
    """The media type of stored image bytes, from their signature (never from client input)."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    for signature, media_type in SIGNATURES.items():
        if data.startswith(signature):
            return media_type
    return "application/octet-stream"


def encoded_vector(vector: np.ndarray, encoding_format: str) -> np.ndarray | str:
    """An embedding as the client asked: the array (orjson writes its numbers), or base64 of its
    little-endian float32 bytes."""
    if encoding_format == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return vector
