"""A corpus of hostile inputs: each gets a clear 4xx JSON error, or a correct 200 where the
input is legitimate; never a 500, never a dead worker."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator

import numpy as np
import pytest
from PIL import Image

from tests.helpers.images import b64, encoded, shape_png
from tests.reliability.conftest import API_KEY

AUTH = {"Authorization": f"Bearer {API_KEY}"}


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (24, 24), colour) for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    return buffer.getvalue()


def broken_exif_jpeg() -> bytes:
    data = bytearray(encoded(Image.new("RGB", (16, 16), (9, 99, 199)), "JPEG", exif=Image.Exif()))
    app1 = data.find(b"Exif\x00\x00")
    if app1 > 0:
        data[app1 + 6 : app1 + 30] = b"\xff" * 24  # garbage where the TIFF header should be
    return bytes(data)


def sixteen_bit_png() -> bytes:
    return encoded(Image.fromarray(np.full((20, 20), 40000, dtype=np.uint16)), "PNG")


LEGITIMATE = {
    "1x1 pixel": encoded(Image.new("RGB", (1, 1), (200, 0, 0)), "PNG"),
    "animated GIF": animated_gif(),
    "CMYK JPEG": encoded(Image.new("CMYK", (20, 20), (0, 255, 255, 0)), "JPEG"),
    "16-bit PNG": sixteen_bit_png(),
    "greyscale with alpha": encoded(Image.new("LA", (20, 20), (90, 128)), "PNG"),
    # served in bounded memory: only the centre square the eval transform keeps is resized
    "1 x 100000 strip": encoded(Image.new("RGB", (1, 100_000), (30, 60, 90)), "PNG"),
    "1500 x 60 banner": encoded(Image.new("RGB", (1500, 60), (30, 60, 90)), "JPEG"),
}


@pytest.mark.parametrize("name", sorted(LEGITIMATE))
def test_legitimate_but_unusual_images_embed(hardened_gateway, name):
    response = hardened_gateway.post(
        "/embed",
        json={"model": "tiny", "inputs": [{"image": b64(LEGITIMATE[name]), "instruction": "what colour is it?"}]},
    )
    assert response.status_code == 200, response.text
    assert np.linalg.norm(response.json()["data"][0]["embedding"]) == pytest.approx(1, abs=1e-4)


def test_broken_exif_is_not_a_server_error(hardened_gateway):
    response = hardened_gateway.post(
        "/embed",
        json={"model": "tiny", "inputs": [{"image": b64(broken_exif_jpeg()), "instruction": "x"}]},
    )
    assert response.status_code in (200, 422), response.text


HOSTILE = [
    (
        "10 MB instruction",
        {"model": "tiny", "inputs": [{"image": b64(shape_png()), "instruction": "a" * 10_000_000}]},
        413,
        "payload_too_large",
    ),
    (
        "control characters only",
        {"model": "tiny", "inputs": [{"image": b64(shape_png()), "instruction": "\x00\x07\x1b"}]},
        422,
        "invalid_instruction",
    ),
    ("image is a number", {"model": "tiny", "inputs": [{"image": 42, "instruction": "x"}]}, 422, "invalid_request"),
    ("inputs is an object", {"model": "tiny", "inputs": {"image": "x"}}, 422, "invalid_request"),
]


@pytest.mark.parametrize(("body", "status", "code"), [h[1:] for h in HOSTILE], ids=[h[0] for h in HOSTILE])
def test_hostile_embed_requests_get_4xx(hardened_gateway, body, status, code):
    response = hardened_gateway.post("/embed", content=json.dumps(body), headers={"content-type": "application/json"})
    assert response.status_code == status, response.text[:300]
    assert response.json()["error"]["code"] == code


def test_unicode_instructions_are_normalised_not_refused(hardened_gateway):
    response = hardened_gateway.post(
        "/embed",
        json={
            "model": "tiny",
            "inputs": [{"image": b64(shape_png()), "instruction": "Ｗｈａｔ\u200b colour\u202e\tis it? 🎨"}],
        },
    )
    assert response.status_code == 200
    assert response.json()["data"][0]["instruction"] == "what colour is it? 🎨"


async def test_a_streamed_body_over_the_limit_is_refused_while_it_arrives(hardened_gateway):
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(64):
            yield b"x" * 65536  # 4 MiB in all, no Content-Length; each chunk reaches the app on its own

    async with hardened_gateway.async_client(headers=AUTH) as client:
        response = await client.post("/embed", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413 and response.json()["error"]["code"] == "payload_too_large"


@pytest.mark.parametrize(
    ("item", "status"),
    [
        ({"id": "../../etc/passwd", "image": b64(shape_png())}, 422),
        ({"id": "ok\u0000id", "image": b64(shape_png())}, 422),
        ({"id": "x" * 300, "image": b64(shape_png())}, 422),
        ({"id": "nested", "image": b64(shape_png()), "metadata": {"a": {"b": {"c": [1, 2, {"d": 3}]}}}}, 422),
        ({"id": "ünïcode", "image": b64(shape_png())}, 422),
    ],
)
def test_hostile_items_get_4xx(hardened_gateway, item, status):
    hardened_gateway.post("/collections", json={"name": "hostile", "model": "tiny"}, headers=AUTH)
    response = hardened_gateway.post("/collections/hostile/items", json={"items": [item]}, headers=AUTH)
    assert response.status_code == status, response.text[:300]
    assert response.json()["error"]["code"] == "invalid_request"


@pytest.mark.parametrize("k", [-1, 0, 1001, 10**12])
def test_k_out_of_range(hardened_gateway, k):
    response = hardened_gateway.post(
        "/search", json={"collection": "hostile", "condition": "x", "query": {"text": "red"}, "k": k}
    )
    assert response.status_code == 422 and response.json()["error"]["loc"] == ["k"]


def test_the_worker_still_serves_after_the_corpus(hardened_gateway):
    assert hardened_gateway.get("/readyz").status_code == 200
    response = hardened_gateway.post("/embed", json={"model": "tiny", "inputs": [{"text": "still alive"}]})
    assert response.status_code == 200


@pytest.mark.parametrize(("filename", "content_type", "data"), [
    ("photo.jpg", "image/jpeg", b"this is plain text, not a JPEG"),
    ("photo.png", "image/png", b""),
    ("photo.png", "image/png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 32),
])
def test_non_image_bytes_with_an_image_content_type(hardened_gateway, filename, content_type, data):
    response = hardened_gateway.post("/embed", files={"image": (filename, data, content_type)},
                                     data={"instruction": "x", "model": "tiny"})
    assert response.status_code == 422 and response.json()["error"]["code"] == "invalid_image"
