"""The SDK stays small: its imports, dependencies, and the pieces that need no server."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from focalserve_client._images import as_image_list, encode_image
from focalserve_client._transport import RetryPolicy, parse_retry_after
from focalserve_client.errors import (
    FocalServeError,
    InsufficientStorageError,
    InvalidRequestError,
    NotFoundError,
    OverloadedError,
    ServerError,
    error_from_response,
)
from focalserve_client.instructions import normalise_instruction
from focalserve_server.conditions import normalise_instruction as server_normalise

ROOT = Path(__file__).resolve().parents[3]
HEAVY = [
    "torch",
    "torchvision",
    "fastapi",
    "starlette",
    "faiss",
    "open_clip",
    "PIL",
    "server",
    "training",
]


def test_importing_the_client_imports_no_server_dependency():
    code = (
        "import json, sys\n"
        "import focalserve_client, focalserve_client.client, focalserve_client.errors\n"
        "from focalserve_client import Client, AsyncClient\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd="/", check=True
    )
    assert json.loads(result.stdout) == []


def test_the_client_distribution_depends_on_httpx_pydantic_and_numpy_only():
    project = tomllib.loads((ROOT / "client" / "pyproject.toml").read_text())["project"]
    names = {
        dep.split(">")[0].split("=")[0].split("<")[0].split("[")[0].strip()
        for dep in project["dependencies"]
    }
    assert names == {"httpx", "pydantic", "numpy"}


@pytest.mark.parametrize(
    "text", ["  What COLOUR\tis the car? ", "ＡＢＣ ｘ", "a\u200bb\x00c", "Ünïcode  \n text"]
)
def test_client_normalises_instructions_as_the_server_does(text):
    assert normalise_instruction(text) == server_normalise(text, 512)


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [
        (503, "overloaded", OverloadedError),
        (503, "backend_unavailable", ServerError),
        (404, "unknown_model", NotFoundError),
        (422, "invalid_image", InvalidRequestError),
        (413, "too_many_inputs", InvalidRequestError),
        (409, "conflict", InvalidRequestError),
        (500, "internal_error", ServerError),
        (507, "insufficient_storage", InsufficientStorageError),
        (503, "database_unavailable", ServerError),
    ],
)
def test_error_answers_map_onto_the_hierarchy(status, code, kind):
    error = error_from_response(status, {"error": {"code": code, "message": "why"}})
    assert type(error) is kind and isinstance(error, FocalServeError)
    assert (error.status, error.code, error.message) == (status, code, "why")


def test_an_error_without_the_json_body_keeps_the_status_and_text():
    error = error_from_response(502, None, "<html>bad gateway</html>")
    assert isinstance(error, ServerError) and error.code is None and "bad gateway" in error.message


def test_backoff_is_full_jitter_capped_and_retry_after_wins():
    policy = RetryPolicy(max_retries=5, backoff_base=0.5, backoff_max=3.0)
    delays = [policy.delay(attempt) for attempt in range(8) for _ in range(50)]
    assert min(delays) >= 0 and max(delays) <= 3.0
    assert max(policy.delay(0) for _ in range(50)) <= 0.5
    assert policy.delay(4, "2") == 2.0 and policy.delay(0, "60") == 3.0  # honoured, capped
    assert (
        parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
        and parse_retry_after("soon") is None
    )


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def test_images_of_every_kind_become_the_same_pixels(tmp_path):
    array = np.random.default_rng(0).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    path = tmp_path / "image.png"
    path.write_bytes(png_bytes(array))
    for image in (
        array,
        Image.fromarray(array),
        path,
        str(path),
        path.read_bytes(),
        io.BytesIO(path.read_bytes()),
    ):
        decoded = np.asarray(Image.open(io.BytesIO(encode_image(image))).convert("RGB"))
        np.testing.assert_array_equal(decoded, array)


def test_one_image_or_many():
    array = np.zeros((4, 8, 8, 3), np.uint8)
    assert len(as_image_list(array)) == 4 and len(as_image_list(array[0])) == 1
    assert len(as_image_list(b"png")) == 1 and len(as_image_list([b"a", b"b"])) == 2


def test_unusable_images_are_refused_clearly():
    with pytest.raises(ValueError, match="uint8"):
        encode_image(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="HxWx3"):
        encode_image(np.zeros((8, 8, 5), np.uint8))
    with pytest.raises(TypeError, match="cannot send a int"):
        encode_image(3)
