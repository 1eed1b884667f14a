"""Preprocessing with torch on a device: JPEGs decoded by nvJPEG in batches, resizing on the GPU.

Selected by `preprocess_device` (a torch device; `pil`, the default, keeps `images.py`'s path).
On a GPU host the CPU's share of an image is then reading its header: the decode, the
antialiased bicubic resize and the crop run on the device (the image model normalises). JPEGs waiting at
the same moment are decoded in one `torchvision.io.decode_jpeg` call. What nvJPEG cannot take
(other formats, CMYK, an EXIF rotation) is decoded by PIL and resized on the device like the rest.
Only the `shortest` resize mode (open_clip's default) runs here; other modes use the PIL path.

`cpu` runs the same torch code on the CPU, which is how CI checks it against the PIL path.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from focalserve_server.backends.embedded import check_device
from focalserve_server.errors import InvalidImage
from focalserve_server.images import ImageDecoder, ImagePreprocessor, decode_image, open_image

EXIF_ORIENTATION = 0x0112
WINDOW = 3  # the long side is trimmed to this many short sides before resizing (bounded memory)


def centre_window(pixels: torch.Tensor) -> torch.Tensor:
    """A (C, H, W) image trimmed along its long side to the centre WINDOW x short side.

    The centre crop keeps one short side's worth; the rest only feeds the resize filter at the
    crop's edges, so trimming it changes nothing visible and bounds the resize's memory. The
    window keeps the parity of the long side, so its centre stays where it was.
    """
    height, width = pixels.shape[-2:]
    short, long = min(height, width), max(height, width)
    window = WINDOW * short + (long - WINDOW * short) % 2
    if long <= window:
        return pixels
    start = (long - window) // 2
    return pixels[..., start : start + window, :] if height > width else pixels[..., start : start + window]


class TensorPreprocessor:
    """open_clip's `shortest` eval transform up to its normalisation, on torch tensors: (C, H, W)
    uint8 -> uint8 (3, S, S), rounded as PIL's resize rounds (the image model normalises)."""

    def __init__(self, preprocess: ImagePreprocessor) -> None:
        spec = preprocess.spec
        self.size = spec.image_size
        self._interpolation = InterpolationMode(spec.interpolation)

    def __call__(self, pixels: torch.Tensor) -> np.ndarray:
        image = centre_window(pixels).float()
        image = F.resize(image, [self.size], interpolation=self._interpolation, antialias=True)
        image = F.center_crop(image, [self.size, self.size]).clamp(0, 255).round()
        return image.to(torch.uint8).cpu().numpy()


@dataclass
class _Pending:
    data: bytes
    future: asyncio.Future[torch.Tensor] = field(repr=False)


class DeviceImageDecoder(ImageDecoder):
    """`ImageDecoder` whose decoding and resizing run on `device` (see the module docstring)."""

    def __init__(self, workers: int, max_bytes: int, max_pixels: int, device: torch.device,
                 max_batch: int = 64) -> None:
        super().__init__(workers, max_bytes, max_pixels)
        self.device = device
        self._max_batch = max_batch
        self._device_thread = ThreadPoolExecutor(1, thread_name_prefix="device-decode")  # one stream of work
        self._waiting: list[_Pending] = []
        self._draining: asyncio.Task[None] | None = None
        self._tensor_preprocessors: dict[str, TensorPreprocessor] = {}  # by family

    async def prepare(self, preprocess: ImagePreprocessor, data: bytes) -> np.ndarray:
        if preprocess.spec.resize_mode != "shortest":
            return await super().prepare(preprocess, data)
        loop = asyncio.get_running_loop()
        if await loop.run_in_executor(self._pool, self._device_decodable, data):
            pixels = await self._decode_on_device(data)
        else:
            pixels = await loop.run_in_executor(self._pool, self._decode_with_pil, data)
        tensor_preprocess = self._tensor_preprocessor(preprocess)
        return await loop.run_in_executor(self._device_thread, tensor_preprocess, pixels)

    def _tensor_preprocessor(self, preprocess: ImagePreprocessor) -> TensorPreprocessor:
        """One per family, made on its first image."""
        family = preprocess.spec.name
        if family not in self._tensor_preprocessors:
            self._tensor_preprocessors[family] = TensorPreprocessor(preprocess)
        return self._tensor_preprocessors[family]

    def _device_decodable(self, data: bytes) -> bool:
        """Limits checked from the header (4xx as on the PIL path); True for a JPEG nvJPEG decodes upright."""
        image = open_image(data, self._max_bytes, self._max_pixels)
        return (image.format == "JPEG" and image.mode in ("RGB", "L")
                and image.getexif().get(EXIF_ORIENTATION, 1) == 1)

    def _decode_with_pil(self, data: bytes) -> torch.Tensor:
        image: Image.Image = decode_image(data, self._max_bytes, self._max_pixels)
        return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).to(self.device)

    async def _decode_on_device(self, data: bytes) -> torch.Tensor:
        pending = _Pending(data, asyncio.get_running_loop().create_future())
        self._waiting.append(pending)
        if self._draining is None or self._draining.done():
            self._draining = asyncio.create_task(self._drain())
        return await pending.future

    async def _drain(self) -> None:
        """Decode whatever is waiting, up to `max_batch` JPEGs per call, until nothing is."""
        loop = asyncio.get_running_loop()
        while self._waiting:
            batch, self._waiting = self._waiting[: self._max_batch], self._waiting[self._max_batch :]
            results = await loop.run_in_executor(self._device_thread, self._decode_batch, [p.data for p in batch])
            for pending, result in zip(batch, results):
                if pending.future.done():
                    continue
                if isinstance(result, Exception):
                    pending.future.set_exception(result)
                else:
                    pending.future.set_result(result)

    def _decode_batch(self, encoded: list[bytes]) -> list[torch.Tensor | Exception]:
        """One decode call for the batch; if it fails, one call per JPEG, so a corrupt one fails alone."""
        inputs = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in encoded]
        try:
            return list(decode_jpeg(inputs, mode=ImageReadMode.RGB, device=self.device))
        except RuntimeError:
            return [self._decode_one(tensor) for tensor in inputs]

    def _decode_one(self, tensor: torch.Tensor) -> torch.Tensor | Exception:
        try:
            return decode_jpeg(tensor, mode=ImageReadMode.RGB, device=self.device)
        except RuntimeError as error:
            return InvalidImage(f"the image could not be decoded (JPEG: {error})")

    def close(self) -> None:
        super().close()
        self._device_thread.shutdown(wait=False, cancel_futures=True)


def check_preprocess_device(name: str) -> torch.device:
    """The torch device `preprocess_device` names; a CUDA device this machine lacks is refused."""
    device = torch.device(name)
    check_device(device, "FOCALSERVE_PREPROCESS_DEVICE")
    return device
