"""Instruction normalisation and the LRU cache of encoded instructions (conditions).

CLIP's tokenizer lowercases and folds whitespace, so "What colour?" and "what  colour?" are
one condition: normalising before the cache turns such repeats into hits and gives them one
`space` id.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable

import numpy as np

from focalserve_client.instructions import normalise_instruction as normalised_text
from focalserve_server.errors import InvalidInstruction


def normalise_instruction(instruction: str, max_chars: int, what: str = "instruction") -> str:
    """The SDK's normalisation (one definition for both sides), plus the server's limits."""
    if len(instruction) > max_chars * 4:  # cheap early refusal before any unicode work
        raise InvalidInstruction(f"the {what} is longer than the limit of {max_chars} characters", limit=max_chars)
    text = normalised_text(instruction)
    if not text:
        raise InvalidInstruction(f"the {what} is empty")
    if len(text) > max_chars:
        raise InvalidInstruction(f"the {what} has {len(text)} characters; the limit is {max_chars}", limit=max_chars)
    return text


def instruction_hash(normalised: str) -> str:
    return hashlib.sha256(normalised.encode()).hexdigest()[:12]


class ConditionCache:
    """Maps a normalised instruction to its condition vector; concurrent misses share one call."""

    def __init__(self, capacity: int, on_lookup: Callable[[bool], None] | None = None) -> None:
        self._capacity = capacity
        self._entries: OrderedDict[str, np.ndarray] = OrderedDict()
        self._pending: dict[str, asyncio.Future[np.ndarray]] = {}
        self._on_lookup = on_lookup

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, instruction: str, encode: Callable[[str], Awaitable[np.ndarray]]) -> np.ndarray:
        if instruction in self._entries:
            self._entries.move_to_end(instruction)
            self._record(hit=True)
            return self._entries[instruction]
        task = self._pending.get(instruction)
        self._record(hit=task is not None)
        if task is None:  # the encode runs as its own task: a caller that leaves does not cancel it
            task = asyncio.ensure_future(self._encode_and_store(instruction, encode))
            self._pending[instruction] = task
        return await asyncio.shield(task)

    async def _encode_and_store(
        self, instruction: str, encode: Callable[[str], Awaitable[np.ndarray]]
    ) -> np.ndarray:
        try:
            condition = await encode(instruction)
        finally:
            del self._pending[instruction]
        self._store(instruction, condition)
        return condition

    def _store(self, instruction: str, condition: np.ndarray) -> None:
        if self._capacity == 0:
            return
        self._entries[instruction] = condition
        if len(self._entries) > self._capacity:
            self._entries.popitem(last=False)

    def _record(self, hit: bool) -> None:
        if self._on_lookup is not None:
            self._on_lookup(hit)
