"""Pre-allocated shared memory for uint8 images, handed to another process without a copy through
a socket: the engine process behind the fronts, or a Triton server on the same host."""

from __future__ import annotations

import asyncio
import mmap
import os
from pathlib import Path

import numpy as np


class PixelSlots:
    """A region of fixed-size image slots in shared memory: a file on a tmpfs (/dev/shm, where POSIX
    shared memory lives, so Triton can register the same region as system shared memory).

    The process that creates it owns its slots: it takes a run of consecutive free ones for a
    call's images, writes them there as one contiguous batch (which Triton needs) and gives the
    slots back when the answer is in, so no lock is shared between processes. The reader maps the
    same file and reads the batch in place. A slot holds one image of the largest family.
    """

    def __init__(self, path: Path, slot_bytes: int, count: int, create: bool) -> None:
        self.path, self.slot_bytes, self.count = path, slot_bytes, count
        flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0)
        descriptor = os.open(path, flags, 0o600)
        try:
            if create:
                os.ftruncate(descriptor, slot_bytes * count)
            self._map = mmap.mmap(descriptor, slot_bytes * count)
        finally:
            os.close(descriptor)
        self._bytes = np.frombuffer(self._map, dtype=np.uint8)
        self._owner = create
        self._used = bytearray(count)  # 1 where a slot is taken
        self._freed = asyncio.Event()

    @property
    def byte_size(self) -> int:
        return self.slot_bytes * self.count

    def slots_for(self, batch: np.ndarray) -> int:
        return -(-batch.nbytes // self.slot_bytes)

    async def take(self, count: int) -> int:
        """The first of `count` consecutive free slots, waiting while other calls hold them (bounded by
        the request's deadline)."""
        if count > self.count:
            raise ValueError(f"a batch of {count} slots; the region holds {self.count}")
        while (first := self._used.find(bytes(count))) < 0:
            self._freed.clear()
            await self._freed.wait()
        self._used[first : first + count] = b"\x01" * count
        return first

    def give_back(self, first: int, count: int) -> None:
        self._used[first : first + count] = bytes(count)
        self._freed.set()

    def write(self, first: int, batch: np.ndarray) -> int:
        """A uint8 batch, contiguous, from slot `first` on; returns its byte offset in the region."""
        offset = first * self.slot_bytes
        self._bytes[offset : offset + batch.nbytes] = batch.reshape(-1)
        return offset

    def read(self, first: int, shape: tuple[int, ...]) -> np.ndarray:
        """The uint8 batch of `shape` written from slot `first` on, in place (valid until given back)."""
        offset = first * self.slot_bytes
        return self._bytes[offset : offset + int(np.prod(shape))].reshape(shape)

    def close(self) -> None:
        if self._owner:
            self.path.unlink(missing_ok=True)
        del self._bytes
        try:
            self._map.close()
        except BufferError:  # an image read in place is still queued: the map goes with its last view
            pass
