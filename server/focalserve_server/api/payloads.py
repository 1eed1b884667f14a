"""Decoding what clients send (base64 images, plain or data URLs), naming image types, and
encoding the embeddings answered."""

from __future__ import annotations

import base64
import binascii

import numpy as np

from focalserve_server.errors import InvalidImage

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
