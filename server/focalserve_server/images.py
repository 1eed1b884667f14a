"""Safe image decoding for untrusted uploads, and open_clip's eval preprocessing from family metadata.

The preprocessing is open_clip's eval transform written with PIL and numpy, so serving imports
neither open_clip nor torchvision; `tests/unit/server/test_images.py` compares it with open_clip's
own transform for each resize mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import math
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image, ImageOps

from focalserve_family import FamilyMetadata
from focalserve_server.config import Settings
from focalserve_server.errors import ImageTooLarge, InvalidImage

DecodeSize = Callable[[int, int], tuple[int, int]]
# An image this small decodes (PNG 64 x 64: ~0.1 ms) in less time than handing it to a thread and back
# costs the event loop, the GIL included; a larger one would hold the loop up for other requests.
INLINE_PIXELS = 128 * 128


def open_image(data: bytes, max_bytes: int, max_pixels: int) -> Image.Image:
    """The image's header read and checked against the limits, nothing decoded yet."""
    if not data:
        raise InvalidImage("the image is empty (0 bytes)")
    if len(data) > max_bytes:
        raise ImageTooLarge(f"the image is {len(data)} bytes; the limit is {max_bytes}", limit=max_bytes)
    with _decoding_errors():
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        if width * height > max_pixels:
            raise ImageTooLarge(
                f"the image declares {width}x{height} pixels; the limit is {max_pixels} pixels", limit=max_pixels
            )
        return image


def decode_image(data: bytes, max_bytes: int, max_pixels: int, decode_size: DecodeSize | None = None) -> Image.Image:
    """Bytes -> upright RGB image, or a 4xx error; the size checks run before decoding.

    `decode_size(width, height)` is the least size the caller needs: a JPEG much larger than
    that is decoded at 1/2, 1/4 or 1/8 scale (the DCT scaling of libjpeg), which is faster and
    holds a fraction of the pixels.
    """
    return decode_opened(open_image(data, max_bytes, max_pixels), decode_size)


def decode_opened(image: Image.Image, decode_size: DecodeSize | None = None) -> Image.Image:
    """An image `open_image` has checked -> upright RGB, or a 4xx error."""
    with _decoding_errors():
        if decode_size is not None and image.format == "JPEG":
            image.draft("RGB", decode_size(*image.size))
        image.load()
        ImageOps.exif_transpose(image, in_place=True)  # upright without a copy of an image already upright
        return _to_rgb(image)


@contextlib.contextmanager
def _decoding_errors() -> Iterator[None]:
    """PIL raises many types for corrupt data; all mean "not an image" (4xx), never a 500."""
    try:
        yield
    except (ImageTooLarge, InvalidImage):
        raise
    except Image.DecompressionBombError as error:
        raise ImageTooLarge(f"the image is a decompression bomb: {error}") from None
    except Image.UnidentifiedImageError:
        raise InvalidImage("the data is not an image in a format the server reads") from None
    except Exception as error:
        raise InvalidImage(f"the image could not be decoded ({type(error).__name__}: {error})") from None


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB at 8 bits; 16/32-bit greyscale is scaled down, since PIL's convert would clip it to white."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        levels = np.asarray(image, dtype=np.int64).clip(0, 65535) >> 8
        image = Image.fromarray(levels.astype(np.uint8), "L")
    return image.convert("RGB")


def centre_crop_box(width: int, height: int, size: int) -> tuple[float, float, float, float]:
    """The part of a width x height image that open_clip's eval transform keeps (resize the short
    side to `size` with torchvision's rounding, then crop the centre), in source pixels."""
    short, long = sorted((width, height))
    resized_long = int(size * long / short)
    offset = int(round((resized_long - size) / 2.0))
    scale = long / resized_long
    start, extent = offset * scale, size * scale
    if width <= height:
        return (0.0, start, float(width), start + extent)
    return (start, 0.0, start + extent, float(height))


class ImagePreprocessor:
    """open_clip's eval transform for one family up to its normalisation, producing uint8 (3, S, S)
    arrays in bounded memory; the image model normalises them itself (on its own device).

    `shortest` (open_clip's default) resizes the short side to S and crops the centre: for a
    1 x 4000 image that intermediate is S x 896000 pixels, so only the part the crop keeps is
    resized (PIL's `box`, which still reads the neighbouring source pixels the filter needs): the
    same pixels, with memory bounded by the output whatever the aspect ratio. `longest` resizes
    the long side to S and pads the rest with black, centred; `squash` resizes to S x S. Neither
    makes an intermediate image larger than the output.
    """

    def __init__(self, spec: FamilyMetadata) -> None:
        self.spec = spec
        self.size = spec.image_size
        self._mode = spec.resize_mode
        self._resample = Image.Resampling[spec.interpolation.upper()]

    def decode_size(self, width: int, height: int) -> tuple[int, int]:
        """The least decoded size that keeps the output equal to a full decode's: twice the model's
        input on the side the transform scales to it."""
        side = max(width, height) if self._mode == "longest" else min(width, height)
        factor = min(1.0, 2 * self.size / side)
        return math.ceil(width * factor), math.ceil(height * factor)

    def __call__(self, image: Image.Image) -> np.ndarray:
        return np.ascontiguousarray(np.asarray(self._resized(image), dtype=np.uint8).transpose(2, 0, 1))

    def _resized(self, image: Image.Image) -> Image.Image:
        size = self.size
        if self._mode == "shortest":
            return image.resize((size, size), self._resample, box=centre_crop_box(image.width, image.height, size))
        if self._mode == "squash":
            return image.resize((size, size), self._resample)
        ratio = max(image.width, image.height) / size  # `longest`: as open_clip's ResizeKeepRatio(longest=1)
        width, height = round(image.width / ratio), round(image.height / ratio)
        canvas = Image.new("RGB", (size, size))  # open_clip pads with black, the resized image centred
        canvas.paste(image.resize((width, height), self._resample), ((size - width) // 2, (size - height) // 2))
        return canvas


class ImageDecoder:
    """Decodes and preprocesses uploads on a thread pool, off the event loop."""

    def __init__(self, workers: int, max_bytes: int, max_pixels: int) -> None:
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="decode")
        self._max_bytes = max_bytes
        self._max_pixels = max_pixels

    async def prepare(self, preprocess: ImagePreprocessor, data: bytes) -> np.ndarray:
        """Encoded bytes -> the model's uint8 (3, S, S) input, or a 4xx error. The header is read here;
        an image of at most INLINE_PIXELS is decoded here too, larger ones on the decode threads."""
        image = open_image(data, self._max_bytes, self._max_pixels)
        if image.width * image.height <= INLINE_PIXELS:
            return self._prepare(preprocess, image)
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._prepare, preprocess, image)

    @staticmethod
    def _prepare(preprocess: ImagePreprocessor, image: Image.Image) -> np.ndarray:
        return preprocess(decode_opened(image, preprocess.decode_size))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def create_image_decoder(settings: Settings) -> ImageDecoder:
    """The decoder `preprocess_device` selects; a CUDA device this machine lacks is refused at start.

    The device decoder's module (torch, torchvision) is imported only when it is chosen, so the
    default PIL path starts without them.
    """
    limits = (settings.preprocess_workers, settings.max_image_bytes, settings.max_image_pixels)
    if settings.preprocess_device == "pil":
        return ImageDecoder(*limits)
    from focalserve_server.device_images import DeviceImageDecoder, check_preprocess_device

    return DeviceImageDecoder(*limits, check_preprocess_device(settings.preprocess_device))
