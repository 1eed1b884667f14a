"""Image-caption pairs from JSON Lines, for FSC-CLIP fine-tuning on real data.

Unlike the LLaVA reader, a malformed line is an error: caption files are usually
produced by our own scripts, so a bad line means a bug worth stopping for. A referenced image
that does not exist stops the read too (or, if asked, its lines are left out and counted).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import Dataset

from focalserve_training.data.checks import keep_with_images, report_skipped
from focalserve_training.data.images import ImageLoader, load_rgb


@dataclass(frozen=True)
class CaptionRecord:
    image_path: Path
    caption: str


def read_caption_jsonl(
    path: str | Path, image_root: str | Path, skip_missing_images: bool = False
) -> list[CaptionRecord]:
    """Lines ``{"image": "rel/path.jpg", "caption": "..."}``; blank lines are skipped.

    Raises ValueError naming the file and 1-based line number of a malformed line, and
    MissingImagesError if a referenced image file does not exist, unless `skip_missing_images`.
    """
    root = Path(image_root)
    records = []
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            if line.strip():
                records.append(_parse_line(line, root, f"{path}:{line_number}"))
    skipped: Counter[str] = Counter()
    records = keep_with_images(records, _image_path, Path(path), skip_missing_images, skipped)
    report_skipped(Path(path), skipped)
    return records


def _image_path(record: CaptionRecord) -> Path:
    return record.image_path


def _parse_line(line: str, root: Path, where: str) -> CaptionRecord:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: invalid JSON ({e.msg})") from e
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
    image, caption = record.get("image"), record.get("caption")
    if not isinstance(image, str) or not image:
        raise ValueError(f"{where}: 'image' must be a non-empty string")
    if not isinstance(caption, str) or not caption.strip():
        raise ValueError(f"{where}: 'caption' must be a non-empty string")
    return CaptionRecord(root / image, caption.strip())


class CaptionDataset(Dataset):
    """Caption records as ``{"image", "caption"}`` dicts; transforms belong to the collate."""

    def __init__(self, records: list[CaptionRecord], loader: ImageLoader = load_rgb) -> None:
        self.records = records
        self.loader = loader

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        return {"image": self.loader(record.image_path), "caption": record.caption}
