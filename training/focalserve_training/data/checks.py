"""Checks the file readers run before training: every referenced image exists, and what was skipped is said.

A missing image would otherwise surface only when its batch is loaded, hours into a run; checking
every path once at read time costs one `stat` per distinct image.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

logger = logging.getLogger(__name__)

Record = TypeVar("Record")
SHOWN_PATHS = 5  # missing paths named in the error; the count covers them all


class MissingImagesError(FileNotFoundError):
    """Image files referenced by `source` that do not exist: `count` of them, the first few in `paths`."""

    def __init__(self, source: Path, missing: Sequence[Path]) -> None:
        self.source = source
        self.count = len(missing)
        self.paths = tuple(missing[:SHOWN_PATHS])
        shown = ", ".join(str(path) for path in self.paths)
        more = f" and {self.count - len(self.paths)} more" if self.count > len(self.paths) else ""
        super().__init__(f"{source}: {self.count} referenced image files do not exist: {shown}{more}")


def keep_with_images(
    records: list[Record],
    image_path: Callable[[Record], Path],
    source: Path,
    skip_missing: bool,
    skipped: Counter[str],
) -> list[Record]:
    """`records` whose image file exists; raises MissingImagesError unless `skip_missing`, which
    drops the others and counts them in `skipped` as "missing image"."""
    distinct = dict.fromkeys(map(image_path, records))  # in file order, each image checked once
    missing = [path for path in distinct if not path.is_file()]
    if not missing:
        return records
    error = MissingImagesError(source, missing)
    if not skip_missing:
        raise error
    logger.warning("%s; leaving out the records that use them", error)
    absent = set(missing)
    kept = [record for record in records if image_path(record) not in absent]
    skipped["missing image"] += len(records) - len(kept)
    return kept


def report_skipped(source: Path, skipped: Counter[str]) -> None:
    """One warning saying how many records were skipped and why; `skipped` also rides on the log record."""
    if skipped:
        reasons = ", ".join(f"{count} {reason}" for reason, count in skipped.items())
        logger.warning("%s: skipped records: %s", source, reasons, extra={"skipped": dict(skipped)})
