"""Small synthetic images encoded as real files."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image, ImageDraw


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def shape_png(colour: tuple[int, int, int] = (220, 30, 30), size: int = 48, box: int = 8) -> bytes:
    image = Image.new("RGB", (size, size), (128, 128, 128))
    ImageDraw.Draw(image).ellipse((box, box, size - box, size - box), fill=colour)
    return png(image)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def photo_like(width: int, height: int) -> Image.Image:
    """Smooth structure plus sensor-like noise: resampling errors show, unlike on flat colour."""
    y, x = np.mgrid[0:height, 0:width]
    channels = [np.sin(x / (width / 7 + 1) + c) * np.cos(y / (height / 5 + 1) - c) * 100 + 128 for c in range(3)]
    pixels = np.stack(channels, axis=-1) + np.random.default_rng(width * height).normal(0, 12, (height, width, 3))
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def normalised(pixels: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """What an exported image model does first to the gateway's uint8 (3, S, S) pixels: open_clip's
    normalisation, for comparing them with open_clip's transform."""
    shape = (3, 1, 1)
    return (pixels / 255.0 - np.reshape(mean, shape)) / np.reshape(std, shape)
