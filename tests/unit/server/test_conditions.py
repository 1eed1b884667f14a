"""Instruction normalisation and the condition cache: LRU, shared misses, errors, cancellation."""

from __future__ import annotations

import asyncio
import hashlib

import numpy as np
import pytest

from focalserve_server.conditions import ConditionCache, instruction_hash, normalise_instruction
from focalserve_server.errors import InvalidInstruction
from tests.helpers.loop import wait_until


class CountingEncoder:
    """Stands in for the instruction model: a vector derived from the text, calls counted.

    With hold=True each call waits at `gate`; `fail` makes the next call raise it.
    """

    def __init__(self, *, hold: bool = False) -> None:
        self.calls: list[str] = []
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()
        if not hold:
            self.gate.set()
        self.fail: Exception | None = None

    async def __call__(self, instruction: str) -> np.ndarray:
        self.calls.append(instruction)
        self.entered.set()
        await self.gate.wait()
        if self.fail is not None:
            error, self.fail = self.fail, None
            raise error
        return vector(instruction)


def vector(instruction: str) -> np.ndarray:
    return np.array([len(instruction), sum(map(ord, instruction))], dtype=np.float32)


# --- normalise_instruction ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("What colour is the car?", "what colour is the car?"),
        ("  what   COLOUR\tis\n\nthe car?  ", "what colour is the car?"),
        ("\uff37\uff48\uff41\uff54 colour", "what colour"),  # fullwidth letters (NFKC)
        ("\ufb01nd the dog", "find the dog"),  # the "fi" ligature (NFKC)
        ("red\u00a0car", "red car"),  # no-break space folds like any space
        ("red\x00\x07 car\x7f", "red car"),  # control characters dropped
        ("red\u200b car\u2060", "red car"),  # invisible format characters dropped
        ("x\u2028y\u3000z", "x y z"),  # unicode line / ideographic spaces fold
    ],
)
def test_normalise_instruction(raw, expected):
    assert normalise_instruction(raw, max_chars=100) == expected


def test_normalise_is_idempotent():
    once = normalise_instruction("  The \uff26OCUS\t is  COLOUR ", max_chars=100)
    assert normalise_instruction(once, max_chars=100) == once


@pytest.mark.parametrize("raw", ["", "   ", "\t\n\r ", "\x00\x01\x1f", "\u200b\u200d"])
def test_empty_instruction_is_refused(raw):
    with pytest.raises(InvalidInstruction, match="empty") as caught:
        normalise_instruction(raw, max_chars=100)
    assert caught.value.status == 422
    assert caught.value.code == "invalid_instruction"


def test_length_limit_counts_normalised_characters():
    assert normalise_instruction("a" * 10, max_chars=10) == "a" * 10
    assert normalise_instruction("a     b  c", max_chars=5) == "a b c"  # spaces folded first
    with pytest.raises(InvalidInstruction, match="11 characters; the limit is 10"):
        normalise_instruction("a" * 11, max_chars=10)


def test_very_long_instruction_is_refused_before_normalising():
    with pytest.raises(InvalidInstruction, match="limit of 10 characters"):
        normalise_instruction("a" * 41, max_chars=10)
    with pytest.raises(InvalidInstruction, match="limit of 10 characters"):
        normalise_instruction(" " * 1000, max_chars=10)  # even though it would be empty


def test_error_names_what_was_checked():
    with pytest.raises(InvalidInstruction, match="^the text is empty$"):
        normalise_instruction(" ", max_chars=10, what="text")
    with pytest.raises(InvalidInstruction, match="^the text has 3 characters; the limit is 2$"):
        normalise_instruction("abc", max_chars=2, what="text")


def test_instruction_hash_is_a_short_stable_sha256_prefix():
    text = normalise_instruction("What colour?", max_chars=100)
    digest = instruction_hash(text)
    assert digest == hashlib.sha256(b"what colour?").hexdigest()[:12]
    assert len(digest) == 12 and int(digest, 16) >= 0
    assert instruction_hash(normalise_instruction("WHAT  colour?", max_chars=100)) == digest
    assert instruction_hash("what shape?") != digest


# --- ConditionCache ----------------------------------------------------------------------


async def test_repeat_is_a_hit_without_encoding():
    lookups: list[bool] = []
    cache = ConditionCache(capacity=4, on_lookup=lookups.append)
    encode = CountingEncoder()

    first = await cache.get("what colour?", encode)
    second = await cache.get("what colour?", encode)

    np.testing.assert_array_equal(first, vector("what colour?"))
    np.testing.assert_array_equal(second, first)
    assert encode.calls == ["what colour?"]
    assert lookups == [False, True]
    assert len(cache) == 1


async def test_least_recently_used_is_evicted_at_capacity():
    lookups: list[bool] = []
    cache = ConditionCache(capacity=2, on_lookup=lookups.append)
    encode = CountingEncoder()

    await cache.get("a", encode)
    await cache.get("b", encode)
    await cache.get("a", encode)  # "a" is now the most recently used
    await cache.get("c", encode)  # evicts "b"
    assert len(cache) == 2
    await cache.get("a", encode)
    await cache.get("c", encode)
    await cache.get("b", encode)  # a miss again

    assert encode.calls == ["a", "b", "c", "b"]
    assert lookups == [False, False, True, False, True, True, False]
    assert len(cache) == 2


async def test_capacity_zero_caches_nothing():
    lookups: list[bool] = []
    cache = ConditionCache(capacity=0, on_lookup=lookups.append)
    encode = CountingEncoder()

    for _ in range(3):
        np.testing.assert_array_equal(await cache.get("a", encode), vector("a"))

    assert encode.calls == ["a", "a", "a"]
    assert lookups == [False, False, False]
    assert len(cache) == 0


async def test_concurrent_misses_share_one_encode():
    lookups: list[bool] = []
    cache = ConditionCache(capacity=4, on_lookup=lookups.append)
    encode = CountingEncoder(hold=True)

    callers = [asyncio.create_task(cache.get("what colour?", encode)) for _ in range(5)]
    await encode.entered.wait()
    await wait_until(lambda: len(lookups) == 5)  # every caller has looked up and is waiting
    encode.gate.set()
    results = await asyncio.gather(*callers)

    assert encode.calls == ["what colour?"]
    for result in results:
        np.testing.assert_array_equal(result, vector("what colour?"))
    assert lookups.count(False) == 1  # one miss, as many as encodes
    assert len(cache) == 1


async def test_concurrent_misses_for_different_instructions_encode_each():
    cache = ConditionCache(capacity=4)
    encode = CountingEncoder()
    results = await asyncio.gather(cache.get("a", encode), cache.get("b", encode), cache.get("a", encode))

    assert sorted(encode.calls) == ["a", "b"]
    np.testing.assert_array_equal(results[0], vector("a"))
    np.testing.assert_array_equal(results[1], vector("b"))
    np.testing.assert_array_equal(results[2], vector("a"))


async def test_encode_error_reaches_every_waiter_and_is_not_cached():
    cache = ConditionCache(capacity=4)
    encode = CountingEncoder(hold=True)
    encode.fail = RuntimeError("instruction model down")

    callers = [asyncio.create_task(cache.get("a", encode)) for _ in range(3)]
    await encode.entered.wait()
    encode.gate.set()
    results = await asyncio.gather(*callers, return_exceptions=True)

    assert all(isinstance(result, RuntimeError) for result in results)
    assert encode.calls == ["a"]
    assert len(cache) == 0

    np.testing.assert_array_equal(await cache.get("a", encode), vector("a"))
    assert encode.calls == ["a", "a"]  # the failure was not remembered
    assert len(cache) == 1


async def test_cancelled_waiter_does_not_cancel_the_shared_encode():
    lookups: list[bool] = []
    cache = ConditionCache(capacity=4, on_lookup=lookups.append)
    encode = CountingEncoder(hold=True)

    first = asyncio.create_task(cache.get("a", encode))  # the caller that starts the encode
    await encode.entered.wait()
    second = asyncio.create_task(cache.get("a", encode))
    await wait_until(lambda: len(lookups) == 2)  # `second` joined the pending encode
    first.cancel()
    encode.gate.set()

    np.testing.assert_array_equal(await second, vector("a"))
    with pytest.raises(asyncio.CancelledError):
        await first
    assert encode.calls == ["a"]
    assert len(cache) == 1


async def test_encode_finishes_and_is_cached_when_its_only_caller_leaves():
    lookups: list[bool] = []
    cache = ConditionCache(capacity=4, on_lookup=lookups.append)
    encode = CountingEncoder(hold=True)

    caller = asyncio.create_task(cache.get("a", encode))
    await encode.entered.wait()
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    encode.gate.set()
    await wait_until(lambda: len(cache) == 1)

    np.testing.assert_array_equal(await cache.get("a", encode), vector("a"))
    assert encode.calls == ["a"]
    assert lookups == [False, True]


async def test_cache_works_without_on_lookup():
    cache = ConditionCache(capacity=1)
    encode = CountingEncoder()
    await cache.get("a", encode)
    await cache.get("a", encode)
    assert encode.calls == ["a"]
