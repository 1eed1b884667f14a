"""The driver's side of the store: the collection and the conditions an ingest embeds under, made
or registered first (`--instruction`), as the API makes them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from focalserve_client.schemas import IndexKind
from focalserve_family import FamilySpec
from focalserve_server.collections.model import Condition
from focalserve_server.collections.store import Store
from focalserve_server.conditions import normalise_instruction

INGEST_ACTOR = "ingest"  # the audit trail's name for what `focalserve ingest` writes


class IngestRefused(ValueError):
    """The ingest cannot start as asked; the message says why and what to do."""


def pick_family(families: Mapping[str, FamilySpec], model: str | None) -> FamilySpec:
    if model is None:
        if len(families) == 1:
            return next(iter(families.values()))
        raise IngestRefused(f"the repository holds several models: name one with --model "
                            f"({', '.join(sorted(families))})")
    if model not in families:
        raise IngestRefused(f"unknown model {model!r}; the repository holds: {', '.join(sorted(families)) or 'none'}")
    return families[model]


def normalised(instructions: Sequence[str], max_chars: int) -> list[str]:
    """Instructions as the gateway registers them (whitespace, case, the length limit)."""
    return [normalise_instruction(text, max_chars) for text in instructions]


def prepare_collection(
    store: Store, families: Mapping[str, FamilySpec], name: str, model: str | None, instructions: list[str],
    index: IndexKind, chunk_size: int,
) -> tuple[FamilySpec, list[Condition]]:
    """(the collection's family, its live conditions in rowid order), creating the collection (with
    `model`) if it does not exist and registering `instructions` (already normalised) on it."""
    collection = store.collection(name)
    if collection is None:
        spec = pick_family(families, model)
        store.create_collection(name, spec.name, INGEST_ACTOR)
        if not spec.conditional:  # a plain CLIP collection has one unconditional view
            store.add_condition(name, None, index, chunk_size)
    else:
        if model is not None and model != collection.model:
            raise IngestRefused(f"collection {name!r} uses {collection.model}, not {model}")
        if collection.model not in families:
            raise IngestRefused(f"collection {name!r} uses {collection.model}, which the model repository lacks")
        spec = families[collection.model]
    if instructions:
        if not spec.conditional:
            raise IngestRefused(f"{spec.name} is a plain CLIP family: its images take no instruction")
        store.add_conditions(name, instructions, index, chunk_size, actor=INGEST_ACTOR)
    conditions = [condition for condition in store.conditions(name) if condition.status != "failed"]
    if not conditions:
        raise IngestRefused(f"collection {name!r} has no condition to embed under: register one with --instruction")
    return spec, conditions
