"""Image loading shared by the file-backed datasets."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from PIL import Image

ImageLoader = Callable[[Path], Image.Image]


def load_rgb(path: Path) -> Image.Image:
    """Open and decode now (closing the file), in RGB so grey and RGBA files batch alike."""
    with Image.open(path) as image:
        return image.convert("RGB")
