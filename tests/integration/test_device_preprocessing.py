"""FOCALSERVE_PREPROCESS_DEVICE: decoding and resizing with torch (nvJPEG and the GPU on a CUDA host).

The torch path runs on the CPU in CI (`cpu`), checked against the PIL path over a corpus of
photos, strips, rotated, greyscale and CMYK JPEGs and PNGs; the CUDA run of the same check is `gpu`.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from PIL import Image
from pydantic import ValidationError

from focalserve_family import FamilyMetadata
from focalserve_server.config import Settings
from focalserve_server.device_images import TensorPreprocessor, centre_window
from focalserve_server.images import ImagePreprocessor, decode_image
from tests.helpers.images import b64, cosine, encoded, normalised, photo_like
from tests.helpers.inprocess import InProcessGateway, gateway_settings

INSTRUCTION = "what colour is the shape?"
SPEC_224 = FamilyMetadata(family="clip", name="b32", open_clip_model="ViT-B-32", image_size=224,
                          image_mean=OPENAI_DATASET_MEAN, image_std=OPENAI_DATASET_STD, interpolation="bicubic",
                          resize_mode="shortest", tokenizer="ViT-B-32", context_length=77, embedding_dim=512,
                          condition_dim=0, checkpoint_hash="0" * 12)


def rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise: nvJPEG does not apply it, PIL does
    return encoded(photo_like(120, 80), "JPEG", exif=exif, quality=90)


CORPUS = {
    "photo 640x480 JPEG": encoded(photo_like(640, 480), "JPEG", quality=90),
    "photo 480x640 JPEG": encoded(photo_like(480, 640), "JPEG", quality=90),
    "photo 1000x750 JPEG": encoded(photo_like(1000, 750), "JPEG", quality=85),
    "photo 256x256 JPEG": encoded(photo_like(256, 256), "JPEG", quality=95),
    "photo 300x200 PNG": encoded(photo_like(300, 200), "PNG"),
    "greyscale JPEG": encoded(photo_like(200, 150).convert("L"), "JPEG", quality=90),
    "CMYK JPEG": encoded(photo_like(200, 150).convert("CMYK"), "JPEG", quality=90),
    "EXIF-rotated JPEG": rotated_jpeg(),
    "strip 1x4000 PNG": encoded(photo_like(1, 4000), "PNG"),
    "banner 1500x60 JPEG": encoded(photo_like(1500, 60), "JPEG", quality=90),
}


def embed_corpus(client: httpx.Client) -> np.ndarray:
    inputs = [{"image": b64(data), "instruction": INSTRUCTION} for data in CORPUS.values()]
    response = client.post("/embed", json={"model": "tiny", "inputs": inputs})
    assert response.status_code == 200, response.text
    return np.array([item["embedding"] for item in response.json()["data"]], dtype=np.float64)


def assert_same_embeddings(vectors: np.ndarray, reference: np.ndarray) -> None:
    similarities = dict(zip(CORPUS, np.sum(vectors * reference, axis=1)))
    assert all(value >= 0.999 for value in similarities.values()), similarities


def test_unknown_preprocess_devices_are_refused():
    with pytest.raises(ValidationError, match="preprocess_device"):
        Settings(preprocess_device="tpu")


@pytest.mark.parametrize("size", [(7, 40), (40, 7), (8, 41), (5, 5), (1, 100)])
def test_the_window_keeps_the_centre_of_the_long_side(size):
    height, width = size
    pixels = torch.arange(height * width).reshape(1, height, width)
    window = centre_window(pixels)
    short, long = min(size), max(size)
    kept = window.shape[-2] if height > width else window.shape[-1]
    assert kept == min(long, 3 * short + (long - 3 * short) % 2)
    assert (long - kept) % 2 == 0  # as much trimmed on each side: the centre has not moved


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_torch_preprocessing_on_the_cpu_gives_the_pil_paths_pixels(name):
    image = decode_image(CORPUS[name], 1 << 26, 1 << 26)
    pil = ImagePreprocessor(SPEC_224)
    tensor = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)
    device_pixels, pil_pixels = TensorPreprocessor(pil)(tensor), pil(image)
    assert device_pixels.dtype == np.uint8
    mean, std = SPEC_224.image_mean, SPEC_224.image_std
    assert cosine(normalised(device_pixels, mean, std), normalised(pil_pixels, mean, std)) >= 0.999


def test_the_torch_path_embeds_like_the_pil_path_and_isolates_a_corrupt_jpeg(gateway, model_repository: Path,
                                                                            tmp_path: Path):
    reference = embed_corpus(gateway)
    settings = gateway_settings(model_repository, tmp_path / "data", preprocess_device="cpu")
    good = CORPUS["photo 640x480 JPEG"]
    corrupt = good[: len(good) // 3]  # a JPEG header, then the data stops
    with InProcessGateway(settings) as torch_path:
        assert_same_embeddings(embed_corpus(torch_path), reference)

        def embed_one(data: bytes) -> httpx.Response:
            return torch_path.post("/embed", json={"model": "tiny", "inputs": [
                {"image": b64(data), "instruction": INSTRUCTION}]})

        with ThreadPoolExecutor(8) as pool:  # concurrent JPEGs meet in one batched decode
            responses = list(pool.map(embed_one, [good, corrupt] * 4))
    assert [r.status_code for r in responses] == [200, 422] * 4
    assert {r.json()["error"]["code"] for r in responses[1::2]} == {"invalid_image"}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_nvjpeg_and_gpu_resizing_embed_like_the_pil_path(gateway, model_repository: Path, tmp_path: Path):
    reference = embed_corpus(gateway)
    settings = gateway_settings(model_repository, tmp_path / "data", preprocess_device="cuda")
    with InProcessGateway(settings) as gpu_path:
        assert_same_embeddings(embed_corpus(gpu_path), reference)
