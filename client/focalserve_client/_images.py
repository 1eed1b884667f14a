"""What users hold (paths, bytes, files, PIL images, numpy arrays) as encoded image bytes.

PIL is optional: it is imported only to encode a PIL image or a numpy array, never at import time.
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
from numpy.typing import NDArray

ImageLike = str | os.PathLike[str] | bytes | bytearray | memoryview | NDArray[np.uint8] | Any
"""A path, encoded image bytes, a binary file object, a PIL image or an HxW(x3|x4) uint8 array."""


def _is_pil_image(value: Any) -> bool:
    return (
        type(value).__module__.startswith("PIL.")
        and hasattr(value, "save")
        and hasattr(value, "mode")
    )


def _is_single(value: Any) -> bool:
    if isinstance(value, np.ndarray):
        return value.ndim in (2, 3)
    return (
        isinstance(value, (str, os.PathLike, bytes, bytearray, memoryview))
        or _is_pil_image(value)
        or hasattr(value, "read")
    )


def as_image_list(images: ImageLike | Sequence[ImageLike]) -> list[ImageLike]:
    """One image or many; an (N, H, W, 3) array is N images."""
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return list(images)
    if _is_single(images):
        return [images]
    return list(cast(Iterable[ImageLike], images))


def encode_image(image: ImageLike) -> bytes:
    """Encoded image bytes for any supported input; numpy arrays and PIL images become PNG."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    if isinstance(image, (str, os.PathLike)):
        return Path(image).read_bytes()
    if isinstance(image, np.ndarray):
        return _png(_array_to_pil(image))
    if _is_pil_image(image):
        return _png(image)
    if hasattr(image, "read"):
        data = image.read()
        if isinstance(data, bytes):
            return data
    raise TypeError(
        f"cannot send a {type(image).__name__} as an image: pass a path, bytes, a binary file, "
        "a PIL image or an HxWx3 uint8 numpy array"
    )


def b64_image(image: ImageLike) -> str:
    return base64.b64encode(encode_image(image)).decode("ascii")


def _array_to_pil(array: NDArray[Any]) -> Any:
    if array.dtype != np.uint8:
        raise ValueError(
            f"numpy images must be uint8 (0..255), got {array.dtype}; convert first, "
            "e.g. (array * 255).clip(0, 255).astype(np.uint8)"
        )
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (1, 3, 4))):
        raise ValueError(
            f"numpy images must be HxW, HxWx3 (RGB) or HxWx4 (RGBA); got shape {array.shape}"
        )
    try:
        from PIL import Image
    except ImportError:
        raise ImportError(
            "encoding a numpy array as PNG needs Pillow: pip install pillow "
            "(or pass encoded bytes or a file path instead)"
        ) from None
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    return Image.fromarray(np.ascontiguousarray(array))


def _png(image: Any) -> bytes:
    buffer = io.BytesIO()
    if image.mode not in ("RGB", "RGBA", "L", "LA", "P", "I", "I;16"):
        image = image.convert("RGB")
    image.save(buffer, format="PNG")
    return buffer.getvalue()
