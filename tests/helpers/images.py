"""Small synthetic images encoded as real files."""

from __future__ import annotations

import base64
import io

from PIL import Image, ImageDraw


def shape_png(colour: tuple[int, int, int] = (220, 30, 30), size: int = 48, box: int = 8) -> bytes:
    image = Image.new("RGB", (size, size), (128, 128, 128))
    ImageDraw.Draw(image).ellipse((box, box, size - box, size - box), fill=colour)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
