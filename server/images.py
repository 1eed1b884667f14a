"""Safe image decoding for untrusted uploads, and open_clip preprocessing from family metadata."""

from __future__ import annotations

import io
import warnings

import numpy as np
from open_clip.transform import image_transform
from PIL import Image, ImageOps

from server.errors import ImageTooLarge, InvalidImage
from server.repository import FamilySpec


def decode_image(data: bytes, max_bytes: int, max_pixels: int) -> Image.Image:
    """Bytes -> upright RGB image, or a 4xx error; the pixel check runs before decoding."""
    if not data:
        raise InvalidImage("the image is empty (0 bytes)")
    if len(data) > max_bytes:
        raise ImageTooLarge(f"the image is {len(data)} bytes; the limit is {max_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise ImageTooLarge(
                    f"the image declares {width}x{height} pixels; the limit is {max_pixels} pixels"
                )
            image.load()
            image = ImageOps.exif_transpose(image)
            return image.convert("RGB")
    except ImageTooLarge:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageTooLarge(f"the image is a decompression bomb: {error}") from None
    except Image.UnidentifiedImageError:
        raise InvalidImage("the data is not an image in a format the server reads") from None
    except Exception as error:  # PIL raises many types for corrupt data; all mean "not an image"
        raise InvalidImage(f"the image could not be decoded ({type(error).__name__}: {error})") from None


class ImagePreprocessor:
    """open_clip's eval transform for one family, producing float32 (3, S, S) arrays."""

    def __init__(self, spec: FamilySpec) -> None:
        self._transform = image_transform(
            spec.image_size,
            is_train=False,
            mean=spec.image_mean,
            std=spec.image_std,
            resize_mode=spec.resize_mode,
            interpolation=spec.interpolation,
        )

    def __call__(self, image: Image.Image) -> np.ndarray:
        return self._transform(image).numpy()
