"""Safe image decoding for untrusted uploads, and open_clip preprocessing from family metadata."""

from __future__ import annotations

import asyncio
import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from open_clip.transform import image_transform
from PIL import Image, ImageOps

from focalserve_family import FamilyMetadata
from focalserve_server.errors import ImageTooLarge, InvalidImage


def decode_image(data: bytes, max_bytes: int, max_pixels: int, max_aspect_ratio: float = float("inf")) -> Image.Image:
    """Bytes -> upright RGB image, or a 4xx error; the size checks run before decoding.

    The aspect-ratio limit matters as much as the pixel limit: resizing the short side of a
    1 x 100000 image to the model's size would allocate a huge intermediate image.
    """
    if not data:
        raise InvalidImage("the image is empty (0 bytes)")
    if len(data) > max_bytes:
        raise ImageTooLarge(f"the image is {len(data)} bytes; the limit is {max_bytes}", limit=max_bytes)
    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        if width * height > max_pixels:
            raise ImageTooLarge(
                f"the image declares {width}x{height} pixels; the limit is {max_pixels} pixels", limit=max_pixels
            )
        if max(width, height) > max_aspect_ratio * max(1, min(width, height)):
            raise InvalidImage(f"the image is {width}x{height}; the longest side may be at most "
                               f"{max_aspect_ratio:g} times the shortest")
        image.load()
        return _to_rgb(ImageOps.exif_transpose(image))
    except (ImageTooLarge, InvalidImage):
        raise
    except Image.DecompressionBombError as error:
        raise ImageTooLarge(f"the image is a decompression bomb: {error}") from None
    except Image.UnidentifiedImageError:
        raise InvalidImage("the data is not an image in a format the server reads") from None
    except Exception as error:  # PIL raises many types for corrupt data; all mean "not an image"
        raise InvalidImage(f"the image could not be decoded ({type(error).__name__}: {error})") from None


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB at 8 bits; 16/32-bit greyscale is scaled down, since PIL's convert would clip it to white."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        levels = np.asarray(image, dtype=np.int64).clip(0, 65535) >> 8
        image = Image.fromarray(levels.astype(np.uint8), "L")
    return image.convert("RGB")


class ImagePreprocessor:
    """open_clip's eval transform for one family, producing float32 (3, S, S) arrays."""

    def __init__(self, spec: FamilyMetadata) -> None:
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


class ImageDecoder:
    """Decodes and preprocesses uploads on a thread pool, off the event loop."""

    def __init__(self, workers: int, max_bytes: int, max_pixels: int, max_aspect_ratio: float) -> None:
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="decode")
        self._max_bytes = max_bytes
        self._max_pixels = max_pixels
        self._max_aspect_ratio = max_aspect_ratio

    async def prepare(self, preprocess: ImagePreprocessor, data: bytes) -> np.ndarray:
        """Encoded bytes -> the model's float32 (3, S, S) input, or a 4xx error."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._prepare, preprocess, data)

    def _prepare(self, preprocess: ImagePreprocessor, data: bytes) -> np.ndarray:
        return preprocess(decode_image(data, self._max_bytes, self._max_pixels, self._max_aspect_ratio))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
