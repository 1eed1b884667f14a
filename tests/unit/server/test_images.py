"""Decoding untrusted image bytes, and open_clip preprocessing from a family's metadata."""

from __future__ import annotations

import dataclasses
import io
import struct
import zlib

import numpy as np
import pytest
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.transform import image_transform
from PIL import Image

from focalserve_family import FamilyMetadata
from focalserve_server.errors import ImageTooLarge, InvalidImage
from focalserve_server.images import ImagePreprocessor, decode_image
from tests.helpers.images import cosine, encoded, normalised, photo_like

MAX_BYTES = 1 << 20
MAX_PIXELS = 10_000_000
RED, BLUE = (255, 0, 0), (0, 0, 255)
EXIF_ORIENTATION = 0x0112


def decode(data: bytes, max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS) -> Image.Image:
    return decode_image(data, max_bytes=max_bytes, max_pixels=max_pixels)


def noise(width: int, height: int) -> Image.Image:
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def blank_bilevel_png(width: int, height: int) -> bytes:
    """A complete, valid 1-bit PNG; all-zero rows deflate to almost nothing, whatever the size."""
    compressor = zlib.compressobj(9)
    row = bytes(1 + (width + 7) // 8)  # filter byte + packed bits
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1 bit, greyscale
    chunks = _chunk(b"IHDR", header) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


def assert_close(pixel, expected, tolerance=8):
    assert all(abs(a - b) <= tolerance for a, b in zip(pixel, expected, strict=True)), (
        pixel,
        expected,
    )


# --- refusals ----------------------------------------------------------------------------


def test_empty_data_is_invalid():
    with pytest.raises(InvalidImage, match="empty") as caught:
        decode(b"")
    assert caught.value.status == 422
    assert caught.value.code == "invalid_image"


@pytest.mark.parametrize(
    "data",
    [
        np.random.default_rng(1).bytes(4096),
        b"GIF89a not really",
        b"\x89PNG\r\n\x1a\n",  # a PNG signature and nothing else
        b"<svg xmlns='http://www.w3.org/2000/svg'/>",
    ],
    ids=["random", "fake-gif", "png-signature-only", "svg"],
)
def test_non_image_bytes_are_invalid(data):
    with pytest.raises(InvalidImage):
        decode(data)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_image_is_invalid(fmt):
    data = encoded(noise(64, 64), fmt)
    assert decode(data).size == (64, 64)
    with pytest.raises(InvalidImage, match="could not be decoded"):
        decode(data[: len(data) // 2])


def test_more_bytes_than_the_limit_is_too_large():
    data = encoded(noise(16, 16), "PNG")
    assert decode(data, max_bytes=len(data)).size == (16, 16)  # the limit itself is allowed
    with pytest.raises(ImageTooLarge, match=f"the limit is {len(data) - 1}") as caught:
        decode(data, max_bytes=len(data) - 1)
    assert caught.value.status == 413
    assert caught.value.code == "image_too_large"


@pytest.fixture(scope="module")
def bomb_png() -> bytes:
    return blank_bilevel_png(20_000, 20_000)


def test_decompression_bomb_is_refused(bomb_png):
    assert len(bomb_png) < 100_000  # 400 million pixels in a few tens of KB
    with pytest.raises(ImageTooLarge) as caught:
        decode(bomb_png)
    assert caught.value.status == 413


def test_pixel_limit_is_checked_before_decoding():
    data = blank_bilevel_png(5_000, 5_000)  # 25 Mpx: over our limit, under PIL's own bomb guard
    with pytest.raises(ImageTooLarge, match="5000x5000 pixels; the limit is 10000000"):
        decode(data)
    # Cut in half, decoding would fail; the refusal for size must come first, from the header.
    with pytest.raises(ImageTooLarge):
        decode(data[: len(data) // 2])


def test_pixel_limit_boundary():
    data = encoded(noise(100, 100), "PNG")
    assert decode(data, max_pixels=10_000).size == (100, 100)
    with pytest.raises(ImageTooLarge):
        decode(data, max_pixels=9_999)


# --- modes and formats to RGB ------------------------------------------------------------


@pytest.mark.parametrize(
    ("image", "fmt", "expected"),
    [
        (Image.new("RGB", (12, 8), RED), "PNG", RED),
        (Image.new("L", (12, 8), 100), "PNG", (100, 100, 100)),
        (Image.new("LA", (12, 8), (100, 255)), "PNG", (100, 100, 100)),
        (Image.new("1", (12, 8), 1), "PNG", (255, 255, 255)),
        (Image.new("RGBA", (12, 8), (255, 0, 0, 255)), "PNG", RED),
        (Image.new("RGB", (12, 8), RED).convert("P"), "PNG", RED),
        (Image.new("L", (12, 8), 100), "JPEG", (100, 100, 100)),
        (Image.new("RGB", (12, 8), RED), "JPEG", RED),
        (Image.new("CMYK", (12, 8), (0, 255, 255, 0)), "JPEG", RED),
        (Image.new("RGB", (12, 8), RED), "WEBP", RED),
        (Image.new("RGB", (12, 8), RED), "BMP", RED),
        (Image.new("RGB", (12, 8), RED), "TIFF", RED),
    ],
    ids=[
        "rgb",
        "grey",
        "grey-alpha",
        "bilevel",
        "rgba",
        "palette",
        "grey-jpeg",
        "rgb-jpeg",
        "cmyk-jpeg",
        "webp",
        "bmp",
        "tiff",
    ],
)
def test_decodes_to_rgb(image, fmt, expected):
    decoded = decode(encoded(image, fmt))
    assert decoded.mode == "RGB"
    assert decoded.size == (12, 8)
    assert_close(decoded.getpixel((6, 4)), expected)


def test_transparent_rgba_decodes_to_rgb():
    decoded = decode(encoded(Image.new("RGBA", (12, 8), (0, 0, 255, 0)), "PNG"))
    assert decoded.mode == "RGB"
    assert decoded.size == (12, 8)


@pytest.mark.parametrize(("level16", "level8"), [(0, 0), (65535, 255), (32896, 128), (16448, 64)])
def test_16_bit_greyscale_png_keeps_its_brightness(level16, level8):
    """16-bit levels scale to 8-bit ones (divide by 257), rather than saturating at 255."""
    image = Image.fromarray(np.full((8, 12), level16, dtype=np.uint16))
    data = encoded(image, "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    decoded = decode(data)
    assert decoded.mode == "RGB"
    assert decoded.size == (12, 8)
    assert_close(decoded.getpixel((6, 4)), (level8,) * 3, tolerance=1)


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (20, 10), BLUE)
    image.paste(RED, (0, 0, 10, 10))  # left half red
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6  # stored on its side: display rotated 90 degrees clockwise
    decoded = decode(encoded(image, "JPEG", exif=exif, quality=95))

    assert decoded.mode == "RGB"
    assert decoded.size == (10, 20)
    assert_close(decoded.getpixel((5, 3)), RED, tolerance=40)  # the left half is now on top
    assert_close(decoded.getpixel((5, 16)), BLUE, tolerance=40)


def test_animated_gif_decodes_its_first_frame():
    frames = [Image.new("RGB", (12, 8), RED), Image.new("RGB", (12, 8), BLUE)]
    data = encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 2

    decoded = decode(data)
    assert decoded.mode == "RGB"
    assert decoded.size == (12, 8)
    assert decoded.getpixel((6, 4)) == RED


# --- preprocessing -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def spec() -> FamilyMetadata:
    return FamilyMetadata(
        name="tiny",
        family="clip",
        open_clip_model="tiny",
        image_size=32,
        image_mean=OPENAI_DATASET_MEAN,
        image_std=OPENAI_DATASET_STD,
        interpolation="bicubic",
        resize_mode="shortest",
        tokenizer="tiny",
        context_length=16,
        embedding_dim=8,
        condition_dim=8,
        checkpoint_hash="0" * 12,
    )


@pytest.mark.parametrize("size", [(32, 32), (64, 48), (17, 90), (1, 1)])
def test_preprocessor_output_shape_and_dtype(spec, size):
    pixels = ImagePreprocessor(spec)(noise(*size))
    assert pixels.shape == (3, 32, 32)
    assert pixels.dtype == np.uint8  # the image model normalises, on its own device
    assert pixels.flags.c_contiguous


def test_preprocessor_keeps_colours_as_channel_first_uint8(spec):
    colour = (200, 100, 50)
    pixels = ImagePreprocessor(spec)(Image.new("RGB", (48, 40), colour))
    for channel in range(3):
        assert (pixels[channel] == colour[channel]).all()


def test_preprocessor_accepts_decoded_uploads(spec):
    decoded = decode(encoded(Image.new("RGBA", (40, 30), (10, 20, 30, 128)), "PNG"))
    pixels = ImagePreprocessor(spec)(decoded)
    assert pixels.shape == (3, 32, 32)
    assert pixels.dtype == np.uint8


# --- bounded memory whatever the aspect ratio, and the JPEG fast path ---------------------


@pytest.fixture(scope="module", params=[224, 336], ids=["224px", "336px"])
def real_size_spec(request, spec) -> FamilyMetadata:
    return dataclasses.replace(spec, image_size=request.param)


@pytest.mark.parametrize("size", [(640, 480), (480, 640), (225, 224), (100, 80), (2000, 900), (60, 1500), (1500, 60)])
@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_preprocessing_equals_open_clips_transform_of_the_full_decode(real_size_spec, size, fmt):
    """Resizing only the centre crop's source pixels, and decoding big JPEGs at reduced scale,
    change pixels by at most a couple of grey levels."""
    data = encoded(photo_like(*size), fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    spec = real_size_spec
    reference = image_transform(spec.image_size, is_train=False, mean=spec.image_mean, std=spec.image_std,
                                resize_mode="shortest", interpolation="bicubic")(decode(data, 1 << 30)).numpy()
    preprocess = ImagePreprocessor(spec)
    served = normalised(preprocess(decode_image(data, 1 << 30, MAX_PIXELS, preprocess.decode_size)),
                        spec.image_mean, spec.image_std)
    assert served.shape == reference.shape
    assert cosine(served, reference) >= 0.999
    if fmt == "PNG":  # no reduced decode: only the resampling's rounding differs
        assert np.abs(served - reference).max() <= 2.5 / 255 / min(spec.image_std)


@pytest.fixture(scope="module")
def big_photo() -> Image.Image:
    return photo_like(1000, 750).resize((4000, 3000))


def test_a_big_jpeg_is_decoded_at_the_smallest_scale_that_keeps_twice_the_model_input(real_size_spec, big_photo):
    preprocess = ImagePreprocessor(real_size_spec)
    decoded = decode_image(encoded(big_photo, "JPEG", quality=90), 1 << 30, 1 << 30, preprocess.decode_size)
    assert decoded.size == (1000, 750)  # 1/4 scale: 750 >= 2 x 336; 1/8 would give 375 < 2 x 224
    png = encoded(big_photo.resize((1200, 900)), "PNG", compress_level=1)
    assert decode_image(png, 1 << 30, 1 << 30, preprocess.decode_size).size == (1200, 900)  # only JPEG


@pytest.mark.parametrize("size", [(1, 4000), (4000, 1), (1, 100_001), (1500, 60)])
def test_extreme_aspect_ratios_are_served_like_open_clip_serves_their_centre(real_size_spec, size):
    """What open_clip's transform keeps of a strip is its centre square plus the few pixels the
    bicubic filter reads beside it. Open_clip would first upscale the whole strip (a 1 x 100001
    one to 336 x 33.6 million pixels); ours reads only that centre, so the reference here is
    open_clip's transform of a short window with the same centre."""
    width, height = size
    strip = photo_like(width, height)
    short, long = sorted(size)
    window = min(long, 8 * short + (long - 8 * short) % 2)  # same parity: the same centre
    start = (long - window) // 2
    centre = strip.crop((start, 0, start + window, height) if width > height else (0, start, width, start + window))
    spec = real_size_spec
    reference = image_transform(spec.image_size, is_train=False, mean=spec.image_mean, std=spec.image_std,
                                resize_mode="shortest", interpolation="bicubic")(centre).numpy()
    assert cosine(normalised(ImagePreprocessor(spec)(strip), spec.image_mean, spec.image_std), reference) >= 0.999


@pytest.mark.parametrize("mode", ["longest", "squash"])
@pytest.mark.parametrize("size", [(640, 480), (480, 640), (224, 224), (100, 80), (33, 700), (1, 1)])
def test_the_other_resize_modes_equal_open_clips_transform(real_size_spec, mode, size):
    """`longest` (resize the long side, pad with black around the centred image) and `squash`,
    written with PIL and numpy so serving imports no open_clip: open_clip's pixels, once normalised as the
    image model does, to float32 rounding."""
    spec = dataclasses.replace(real_size_spec, resize_mode=mode)
    image = photo_like(*size)
    reference = image_transform(spec.image_size, is_train=False, mean=spec.image_mean, std=spec.image_std,
                                resize_mode=mode, interpolation="bicubic")(image).numpy()
    served = normalised(ImagePreprocessor(spec)(image), spec.image_mean, spec.image_std)
    np.testing.assert_allclose(served, reference, atol=1e-5)
