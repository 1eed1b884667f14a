"""Progress bars: tqdm's when asked for and installed (the `progress` extra), otherwise none."""

from __future__ import annotations

import warnings
from typing import Any


class Progress:
    """A tqdm bar when `enabled` and tqdm is installed; otherwise it does nothing."""

    def __init__(self, enabled: bool, total: int | None, description: str, unit: str = "item") -> None:
        self._bar: Any = None
        if not enabled:
            return
        try:
            from tqdm.auto import tqdm  # type: ignore[import-untyped, unused-ignore]
        except ImportError:
            warnings.warn(
                "progress=True needs tqdm (pip install tqdm); continuing without a bar",
                stacklevel=2,
            )
            return
        self._bar = tqdm(total=total, desc=description, unit=unit)

    def update(self, count: int) -> None:
        if self._bar is not None:
            self._bar.update(count)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
