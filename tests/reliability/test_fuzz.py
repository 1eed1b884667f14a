"""Property-based fuzzing of the decoding path, and schemathesis against the served OpenAPI
schema: whatever arrives, the answer is an image or a 4xx error, never a server error."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from focalserve_server.errors import ImageTooLarge, InvalidImage
from focalserve_server.images import decode_image
from tests.helpers.inprocess import gateway_settings, serving_in_thread
from tests.reliability.conftest import API_KEY, HARDENED


def seed_png() -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise((24, 16), 60).convert("RGB").save(buffer, "PNG")
    return buffer.getvalue()


SEED = seed_png()


def decode_or_refuse(data: bytes) -> None:
    try:
        image = decode_image(data, max_bytes=1 << 20, max_pixels=4_000_000)
    except (InvalidImage, ImageTooLarge):
        return
    assert image.mode == "RGB" and image.width * image.height <= 4_000_000


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_decode_or_are_refused(data):
    decode_or_refuse(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, len(SEED) - 1), st.integers(0, 255)), max_size=12),
       st.integers(0, len(SEED)))
def test_mutated_pngs_decode_or_are_refused(flips, cut):
    data = bytearray(SEED)
    for position, value in flips:
        data[position] = value
    decode_or_refuse(bytes(data[:cut] if cut else data))


def test_schemathesis_finds_no_server_error(model_repository: Path, tmp_path: Path):
    """schemathesis is a program of its own and needs a URL: the hardened gateway under uvicorn, on a thread."""
    with serving_in_thread(gateway_settings(model_repository, tmp_path / "data", **HARDENED)) as url:
        command = [shutil.which("st") or str(Path(sys.executable).with_name("st")), "run",
                   f"{url}/openapi.json", "--checks", "not_a_server_error", "--max-examples", "25", "--seed", "7",
                   "--request-timeout", "30", "--header", f"Authorization: Bearer {API_KEY}"]
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
