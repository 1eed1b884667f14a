"""A disk that really fills up: a small tmpfs mounted for one test (needs root, as CI runs)."""

from __future__ import annotations

import errno
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

FILL_CHUNK = 64 * 1024


class SmallDisk:
    def __init__(self, path: Path) -> None:
        self.path = path

    def resize(self, size: str) -> None:
        """Grow (or shrink, down to what is used) the file system under running programs."""
        _mount(["-o", f"remount,size={size}", str(self.path)])

    def fill(self, name: str = "filler") -> Path:
        """Write a file until the disk is full, to the last byte; deleting it gives the space back."""
        filler = self.path / name
        with open(filler, "wb") as file:
            for _ in range(1 << 16):  # bounded: 4 GiB of 64 KiB writes
                try:
                    file.write(bytes(FILL_CHUNK))
                    file.flush()
                except OSError as error:
                    assert error.errno == errno.ENOSPC, error
                    break
        return filler


def _mount(arguments: list[str]) -> None:
    result = subprocess.run(["mount", *arguments], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise OSError(f"mount {' '.join(arguments)} failed: {result.stderr.strip()}")


@contextmanager
def small_disk(path: Path, size: str) -> Iterator[SmallDisk]:
    """A tmpfs of `size` (mount's syntax, e.g. "6m") at `path`, unmounted afterwards."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        _mount(["-t", "tmpfs", "-o", f"size={size}", "focalserve-test", str(path)])
    except (OSError, FileNotFoundError) as error:
        pytest.fail(f"mounting a tmpfs needs root (or CAP_SYS_ADMIN), which CI has: {error}")
    try:
        yield SmallDisk(path)
    finally:
        subprocess.run(["umount", "--lazy", str(path)], capture_output=True, timeout=30)
