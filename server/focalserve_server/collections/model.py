"""What a store holds, as plain values shared by both engines and the service."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from focalserve_client.schemas import IndexKind

ConditionStatus = Literal["building", "ready", "failed"]
ChangeKind = Literal["collection_created", "collection_deleted", "condition_added", "item_deleted", "vector", "block"]


@dataclass(frozen=True)
class Collection:
    name: str
    model: str


@dataclass(frozen=True)
class Item:
    rowid: int
    id: str
    blob: str  # SHA-256 of the image bytes
    metadata: dict[str, Any]
    source: str | None = None  # where a bulk ingest read the image (path or URI); None for API adds
    kept: bool = True  # whether the store holds the image bytes (`focalserve ingest --no-keep-images`: no)


@dataclass(frozen=True)
class Condition:
    rowid: int
    collection: str
    instruction: str | None  # None: the unconditional view of a plain CLIP collection
    index_kind: IndexKind
    status: ConditionStatus
    error: str | None
    index_options: dict[str, Any] = field(default_factory=dict)  # IndexOptions set at registration


@dataclass(frozen=True)
class NewItem:
    """An item to store, with its vector under each condition (by condition rowid)."""

    id: str
    image: bytes
    metadata: dict[str, Any]
    vectors: dict[int, np.ndarray]
    source: str | None = None  # the URL the image was fetched from, when it came as one


@dataclass(frozen=True)
class BlockItem:
    """An item of a bulk write: its id, image digest, where it came from, whether its bytes are kept
    (`image` is None when they are not) and its vectors by condition rowid."""

    id: str
    digest: str
    source: str | None
    image: bytes | None
    metadata: dict[str, Any]
    vectors: dict[int, np.ndarray]


@dataclass(frozen=True)
class BlockWritten:
    """What one bulk write stored: new items, vectors (new items' and stored items' missing ones), log position."""

    items: int
    vectors: int
    seq: int | None


@dataclass(frozen=True)
class Change:
    """One entry of the change log; replicas apply them in `seq` order.

    A `vector` change names (condition, item); the vector itself is read from the store when the
    change is applied, so replaying a change twice, or after later ones, converges to the same index.
    A `block` change (one bulk write) names the rowids `item`..`last_item` its items took: every
    vector of those items, under every condition, is read the same way.
    """

    seq: int
    kind: ChangeKind
    collection: str
    condition: int | None
    item: int | None
    last_item: int | None = None


@dataclass(frozen=True)
class Chunk:
    """A slice of a condition's backfill (items with rowids in [first, last]) leased to one replica."""

    rowid: int
    condition: int
    collection: str
    first: int
    last: int


class ConditionsChanged(Exception):
    """A condition was registered between embedding an add and committing it: embed under it too."""

    def __init__(self, conditions: list[Condition]) -> None:
        super().__init__("the collection's conditions changed")
        self.conditions = conditions


class LogCompacted(Exception):
    """The log after a replica's position has been compacted away: it must rebuild from the store."""

    def __init__(self, after: int, compacted_through: int) -> None:
        super().__init__(f"the change log after {after} is compacted up to {compacted_through}")
        self.after = after
        self.compacted_through = compacted_through
