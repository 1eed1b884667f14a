"""The pieces between fronts and the engine: shared-memory pixel slots, the message wire, the settings."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from focalserve_server.config import Settings
from focalserve_server.errors import BackendUnavailable, InvalidImage, Overloaded
from focalserve_server.pixel_slots import PixelSlots
from focalserve_server.workers.processes import engine_threads
from focalserve_server.workers.wire import (
    encode,
    pack_array,
    pack_error,
    read_message,
    unpack_array,
    unpack_error,
)


async def test_a_batch_written_by_one_mapping_is_read_in_place_by_another(tmp_path: Path):
    owner = PixelSlots(tmp_path / "pixels", slot_bytes=3 * 4 * 4, count=8, create=True)
    reader = PixelSlots(tmp_path / "pixels", slot_bytes=3 * 4 * 4, count=8, create=False)
    batch = np.random.default_rng(0).integers(0, 256, (3, 3, 4, 4), dtype=np.uint8)
    first = await owner.take(owner.slots_for(batch))
    owner.write(first, batch)
    np.testing.assert_array_equal(reader.read(first, batch.shape), batch)
    reader.close()
    owner.close()
    assert not (tmp_path / "pixels").exists()  # the owner removes the region


async def test_slots_are_taken_in_consecutive_runs_and_a_full_region_waits_for_one(tmp_path: Path):
    slots = PixelSlots(tmp_path / "pixels", slot_bytes=16, count=4, create=True)
    assert await slots.take(2) == 0 and await slots.take(1) == 2
    waiting = asyncio.ensure_future(slots.take(2))  # only slot 3 is free: no run of two
    await asyncio.sleep(0.01)
    assert not waiting.done()
    slots.give_back(0, 2)
    assert await asyncio.wait_for(waiting, 1) == 0
    with pytest.raises(ValueError, match="holds 4"):
        await slots.take(5)
    slots.close()


def test_a_batch_of_images_smaller_than_a_slot_stays_contiguous(tmp_path: Path):
    slots = PixelSlots(tmp_path / "pixels", slot_bytes=100, count=4, create=True)
    batch = np.arange(3 * 48, dtype=np.uint8).reshape(3, 3, 4, 4)  # 48 bytes each: 144 in all, two slots
    assert slots.slots_for(batch) == 2
    assert slots.write(1, batch) == 100  # byte offset of slot 1: what Triton's request names
    np.testing.assert_array_equal(slots.read(1, batch.shape), batch)
    slots.close()


def test_arrays_keep_dtype_shape_and_values():
    for array in (np.arange(12, dtype=np.int64).reshape(3, 4), np.linspace(0, 1, 6, dtype=np.float32).reshape(2, 3)):
        restored = unpack_array(pack_array(array))
        assert restored.dtype == array.dtype
        np.testing.assert_array_equal(restored, array)


def test_domain_errors_cross_the_wire_as_themselves():
    for error in (Overloaded("queue full"), BackendUnavailable("away"), InvalidImage("broken")):
        restored = unpack_error(pack_error(error))
        assert type(restored) is type(error) and str(restored) == str(error)
    unexpected = unpack_error(pack_error(KeyError("model")))
    assert type(unexpected) is RuntimeError and "KeyError" in str(unexpected)  # isolated by the batcher, a 500


async def test_messages_are_framed_one_after_another():
    reader = asyncio.StreamReader()
    reader.feed_data(encode({"id": 1, "data": b"\x00\x01"}) + encode({"id": 2}))
    reader.feed_eof()
    assert await read_message(reader) == {"id": 1, "data": b"\x00\x01"}
    assert await read_message(reader) == {"id": 2}
    with pytest.raises(asyncio.IncompleteReadError):
        await read_message(reader)


def test_the_pixel_slots_must_hold_a_whole_batch():
    """A front's batcher hands over up to `max_batch_size` images at once: fewer slots could never take them."""
    with pytest.raises(ValidationError, match="pixel_slots"):
        Settings(pixel_slots=32, max_batch_size=64)
    assert Settings(pixel_slots=64, max_batch_size=64).pixel_slots == 64


def test_the_engine_behind_fronts_takes_the_cores_they_leave():
    assert engine_threads(workers=1, cores=16) == 0  # one process: torch's default
    assert engine_threads(workers=2, cores=2) == 1
    assert engine_threads(workers=4, cores=16) == 12
    assert engine_threads(workers=16, cores=16) == 1
