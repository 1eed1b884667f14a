"""Structured errors (`loc`, `limit`) and the schemas' two policies on unknown fields."""

from __future__ import annotations

import inspect
import warnings

import pytest
from pydantic import BaseModel, ValidationError

import focalserve_client
from focalserve_client import errors, schemas
from focalserve_client.errors import (
    InvalidRequestError,
    RequestTimeoutError,
    ServerError,
    ServerUnreachableError,
    error_from_response,
    format_loc,
)

REQUESTS = {
    schemas.EmbedInput: {"image": "aGk="},
    schemas.EmbedRequest: {"inputs": [{"text": "red"}]},
    schemas.CollectionCreate: {"name": "shapes"},
    schemas.ItemIn: {"id": "a", "image": "aGk="},
    schemas.ItemsAdd: {"items": [{"id": "a", "image": "aGk="}]},
    schemas.ConditionCreate: {"instruction": "which shape?"},
    schemas.IndexOptions: {"nprobe": 16},
    schemas.SearchQuery: {"text": "red"},
    schemas.SearchRequest: {"collection": "shapes", "query": {"text": "red"}},
    schemas.ImageFromURL: {"url": "data:image/png;base64,aGk="},
    schemas.Grant: {"collections": "a-*", "action": "write"},
    schemas.KeyLimits: {"requests": 10},
    schemas.KeyCreate: {"name": "team-a"},
    schemas.KeyGrants: {"grants": []},
}
KEY = {"id": "0123456789ab", "name": "team-a", "prefix": "fsk_0123456789ab_xY", "grants": [], "limits": {},
       "created": 1.0, "last_used": None, "revoked": None}
CONDITION = {"instruction": None, "index": "flat", "status": "ready", "embedded": 1, "total": 1}
COLLECTION = {"name": "s", "model": "demo", "family": "clip", "dim": 3, "items": 1, "conditions": [CONDITION]}
ITEM = {"id": "a", "metadata": {}, "image_sha256": "00"}
RESPONSES = {
    schemas.Embedding: {"index": 0, "embedding": [1.0], "instruction": None, "space": "clip:0:none"},
    schemas.EmbedResponse: {"model": "demo", "dim": 1, "data": []},
    schemas.ModelInfo: {
        "name": "demo", "family": "clip", "open_clip_model": "ViT", "embedding_dim": 3, "condition_dim": 0,
        "image_size": 32, "context_length": 8, "checkpoint_hash": "00", "requires_instruction": False,
    },
    schemas.ModelsResponse: {"models": []},
    schemas.HealthResponse: {"status": "ok"},
    schemas.ErrorDetail: {"code": "x", "message": "y"},
    schemas.ErrorResponse: {"error": {"code": "x", "message": "y"}},
    schemas.ConditionInfo: CONDITION,
    schemas.IndexInUse: {"kind": "ivfpq", "factory": "IVF8,PQ8x8np", "vectors": 1, "tombstones": 0, "built_for": 1,
                         "rebuilding": False},
    schemas.CollectionInfo: COLLECTION,
    schemas.CollectionList: {"collections": [COLLECTION]},
    schemas.ItemsAdded: {"added": 1},
    schemas.ItemInfo: ITEM,
    schemas.SearchResult: {"id": "a", "score": 0.5, "metadata": {}},
    schemas.SearchResponse: {"collection": "s", "condition": None, "results": []},
    schemas.ItemPage: {"items": [ITEM], "next_after": None},
    schemas.KeyInfo: KEY,
    schemas.KeyIssued: {**KEY, "key": "fsk_0123456789ab_" + "x" * 43},
    schemas.KeyList: {"keys": [KEY]},
    schemas.AuditEntry: {"seq": 1, "time": 1.0, "key": "cli", "action": "key.create", "target": "0123456789ab"},
    schemas.AuditPage: {"entries": [], "next_after": None},
}


def test_every_schema_is_either_a_request_or_a_response():
    models = {
        model
        for _, model in inspect.getmembers(schemas, inspect.isclass)
        if issubclass(model, BaseModel) and model.__module__ == schemas.__name__ and not model.__name__.startswith("_")
    }
    assert models == set(REQUESTS) | set(RESPONSES)


@pytest.mark.parametrize("model", list(RESPONSES), ids=lambda model: model.__name__)
def test_responses_ignore_fields_a_newer_server_adds(model):
    valid = RESPONSES[model]
    parsed = model.model_validate({**valid, "added_in_a_later_version": {"any": 1}})
    assert parsed == model.model_validate(valid)
    assert "added_in_a_later_version" not in parsed.model_dump()


@pytest.mark.parametrize("model", list(REQUESTS), ids=lambda model: model.__name__)
def test_requests_refuse_unknown_fields(model):
    model.model_validate(REQUESTS[model])
    with pytest.raises(ValidationError, match="extra"):
        model.model_validate({**REQUESTS[model], "misspelt_feild": 1})


def test_an_error_body_gives_loc_and_limit():
    body = {"error": {"code": "invalid_image", "message": "not an image", "loc": ["inputs", 3, "image"]}}
    error = error_from_response(422, body)
    assert isinstance(error, InvalidRequestError)
    assert (error.loc, error.limit, error.message) == (("inputs", 3, "image"), None, "not an image")
    assert str(error) == "not an image (422 invalid_image at inputs[3].image)"

    body = {"error": {"code": "too_many_inputs", "message": "too many", "limit": 256, "hint": "new"}}
    error = error_from_response(413, body)
    assert (error.code, error.loc, error.limit) == ("too_many_inputs", None, 256)
    assert str(error) == "too many (413 too_many_inputs)"


def test_a_body_that_is_not_the_error_shape_keeps_the_text():
    error = error_from_response(502, {"detail": "bad gateway"}, '{"detail": "bad gateway"}')
    assert isinstance(error, ServerError) and error.code is None and error.loc is None
    assert "bad gateway" in error.message


def test_with_loc_returns_a_new_error_of_the_same_kind():
    error = InvalidRequestError("not an image", status=422, code="invalid_image", loc=["items", 1], limit=None)
    moved = error.with_loc(("items", 33))
    assert type(moved) is InvalidRequestError and moved is not error
    assert (moved.loc, moved.message, moved.status, moved.code) == (("items", 33), "not an image", 422, "invalid_image")
    assert error.loc == ("items", 1)


@pytest.mark.parametrize(
    ("loc", "text"),
    [(("inputs", 2, "image"), "inputs[2].image"), (("query", "k"), "query.k"), ((4,), "[4]"), ((), "")],
)
def test_format_loc(loc, text):
    assert format_loc(loc) == text


def test_no_error_class_shadows_a_builtin():
    import builtins

    public = set(focalserve_client.__all__) | {name for name in dir(errors) if name.endswith("Error")}
    assert not public & set(dir(builtins))


def test_the_old_names_still_resolve_with_a_deprecation_warning():
    for module in (errors, focalserve_client):
        with pytest.warns(DeprecationWarning, match="ServerUnreachableError"):
            assert module.ConnectionError is ServerUnreachableError
        with pytest.warns(DeprecationWarning, match="RequestTimeoutError"):
            assert module.TimeoutError is RequestTimeoutError
    with warnings.catch_warnings(), pytest.raises(AttributeError):
        warnings.simplefilter("error")
        _ = errors.NoSuchError
