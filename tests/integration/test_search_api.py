"""Collections and POST /search on a real gateway serving the trained demo family."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from focalserve_devtools.launch import running_gateway
from focalserve_training.data import ColorShapeGenerator
from tests.helpers.images import b64, png
from tests.helpers.inprocess import InProcessGateway, gateway_settings

COLOUR = "what colour is the shape?"
SHAPE = "which shape is this?"


SAMPLES = [ColorShapeGenerator(seed=77).sample(index) for index in range(120)]
ITEMS = [{"id": f"item-{i}", "image": b64(png(s.image)), "metadata": {"colour": s.colour, "shape": s.shape,
          "even": i % 2 == 0}} for i, s in enumerate(SAMPLES)]


def wait_ready(client: httpx.Client, name: str, timeout_s: float = 120) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        conditions = client.get(f"/collections/{name}/conditions").json()
        if all(c["status"] == "ready" for c in conditions):
            return conditions
        assert not any(c["status"] == "failed" for c in conditions), conditions
        time.sleep(0.2)
    raise TimeoutError(f"conditions of {name} not ready")


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def demo_gateway(
    request: pytest.FixtureRequest, demo_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[InProcessGateway]:
    """The demo family's gateway on each store engine: every collection test runs on both."""
    database = {}
    if request.param == "postgres":
        database["database_url"] = request.getfixturevalue("postgres_server").create_database("search_api")
    with InProcessGateway(gateway_settings(demo_repository, tmp_path_factory.mktemp("data"), **database)) as client:
        yield client


@pytest.fixture(scope="module")
def products(demo_gateway: InProcessGateway) -> InProcessGateway:
    """The demo gateway once the collection `products` is filled and both its conditions are built."""
    assert demo_gateway.post("/collections", json={"name": "products", "model": "demo"}).status_code == 201
    for start in range(0, len(ITEMS), 40):
        response = demo_gateway.post("/collections/products/items", json={"items": ITEMS[start:start + 40]})
        assert response.status_code == 201 and response.json() == {"added": 40}
    for instruction, index in ((COLOUR, "flat"), (SHAPE, "hnsw")):
        registered = demo_gateway.post("/collections/products/conditions", json={"instruction": instruction,
                                                                                  "index": index})
        assert registered.status_code == 202
    wait_ready(demo_gateway, "products")
    return demo_gateway


def search(client: httpx.Client, **body) -> httpx.Response:
    return client.post("/search", json={"collection": "products", **body})


def precision(results: list[dict], key: str, value: str) -> float:
    return np.mean([r["metadata"][key] == value for r in results])


QUERIES = [ColorShapeGenerator(seed=78).sample(index) for index in range(20)]  # not in the collection


def mean_precision_at_5(client: httpx.Client, condition: str, attribute: str) -> float:
    precisions = []
    for query in QUERIES:
        results = search(client, condition=condition, query={"image": b64(png(query.image))}, k=5).json()["results"]
        precisions.append(precision(results, attribute, getattr(query, attribute)))
    return float(np.mean(precisions))


def test_neighbours_follow_the_condition(products):
    """Under the colour condition neighbours share the colour, under the shape condition the shape;
    each condition's precision is far above what the other attribute gives."""
    colour_under_colour = mean_precision_at_5(products, COLOUR, "colour")
    shape_under_shape = mean_precision_at_5(products, SHAPE, "shape")
    print(f"precision@5: colour under colour {colour_under_colour:.2f}, shape under shape {shape_under_shape:.2f}")
    assert colour_under_colour >= 0.9
    assert shape_under_shape >= 0.75
    assert mean_precision_at_5(products, COLOUR, "shape") < 0.5  # the colour view ignores shape
    red_circle = next(s for s in QUERIES if s.colour == "red")
    by_colour = search(products, condition=COLOUR, query={"image": b64(png(red_circle.image))}, k=5).json()["results"]
    by_shape = search(products, condition=SHAPE, query={"image": b64(png(red_circle.image))}, k=5).json()["results"]
    assert [r["id"] for r in by_colour] != [r["id"] for r in by_shape]


def test_text_query_under_the_colour_condition(products):
    results = search(products, condition=COLOUR, query={"text": "red"}, k=5).json()["results"]
    assert precision(results, "colour", "red") >= 0.8


def test_item_query_and_metadata_filter(products):
    response = search(products, condition=COLOUR, query={"item_id": "item-0"}, k=10, filter={"even": True})
    body = response.json()
    assert body["condition"] == COLOUR and body["collection"] == "products"
    ids = [r["id"] for r in body["results"]]
    assert "item-0" not in ids and len(ids) == 10
    assert all(r["metadata"]["even"] is True for r in body["results"])
    scores = [r["score"] for r in body["results"]]
    assert scores == sorted(scores, reverse=True)


def test_collection_info_and_items(products):
    info = products.get("/collections/products").json()
    assert info["items"] == 120 and info["family"] == "focallens" and info["dim"] == 64
    assert {(c["instruction"], c["index"], c["status"], c["embedded"]) for c in info["conditions"]} == {
        (COLOUR, "flat", "ready", 120), (SHAPE, "hnsw", "ready", 120)}
    item = products.get("/collections/products/items/item-3").json()
    assert item["id"] == "item-3" and item["metadata"]["colour"] == SAMPLES[3].colour
    image = products.get("/collections/products/items/item-3/image")
    assert image.headers["content-type"] == "image/png" and image.content == png(SAMPLES[3].image)
    assert "products" in [c["name"] for c in products.get("/collections").json()["collections"]]


def test_new_and_replaced_and_deleted_items_follow_every_index(products):
    client = products
    red = next(s for s in SAMPLES if s.colour == "red")
    added = client.post("/collections/products/items", json={"items": [
        {"id": "late", "image": b64(png(red.image)), "metadata": {"colour": "red", "shape": red.shape}}]})
    assert added.status_code == 201
    for condition in (COLOUR, SHAPE):
        found = search(products, condition=condition, query={"image": b64(png(red.image))}, k=3).json()["results"]
        assert "late" in [r["id"] for r in found]
    blue = next(s for s in SAMPLES if s.colour == "blue")
    client.post("/collections/products/items", json={"items": [
        {"id": "late", "image": b64(png(blue.image)), "metadata": {"colour": "blue"}}]})
    assert client.get("/collections/products/items/late").json()["metadata"] == {"colour": "blue"}
    assert client.delete("/collections/products/items/late").status_code == 204
    assert client.get("/collections/products/items/late").status_code == 404
    for condition in (COLOUR, SHAPE):
        found = search(products, condition=condition, query={"image": b64(png(blue.image))}, k=20).json()["results"]
        assert "late" not in [r["id"] for r in found]


def test_a_new_condition_builds_from_stored_images(products):
    client = products
    response = client.post("/collections/products/conditions", json={"instruction": "What is the colour of the object?",
                                                                      "index": "ivfpq"})
    assert response.status_code == 202 and response.json()["instruction"] == "what is the colour of the object?"
    conditions = wait_ready(client, "products")
    assert {c["instruction"] for c in conditions} >= {"what is the colour of the object?"}
    again = client.post("/collections/products/conditions", json={"instruction": "what is the colour of the object?",
                                                                   "index": "ivfpq"})
    assert again.status_code == 200


BAD = [
    ("unknown collection", {"collection": "nope", "condition": COLOUR, "query": {"text": "red"}}, 404),
    ("unregistered condition", {"condition": "how old is it?", "query": {"text": "red"}}, 404),
    ("k too large", {"condition": COLOUR, "query": {"text": "red"}, "k": 100000}, 422),
    ("k zero", {"condition": COLOUR, "query": {"text": "red"}, "k": 0}, 422),
    ("two query kinds", {"condition": COLOUR, "query": {"text": "red", "item_id": "item-1"}}, 422),
    ("empty query", {"condition": COLOUR, "query": {}}, 422),
    ("unknown item", {"condition": COLOUR, "query": {"item_id": "ghost"}}, 404),
    ("bad collection name", {"collection": "../etc", "condition": COLOUR, "query": {"text": "red"}}, 422),
    ("no condition on FocalLens", {"query": {"text": "red"}}, 422),
    ("bad image", {"condition": COLOUR, "query": {"image": "@@@"}}, 422),
]


@pytest.mark.parametrize(("body", "status"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_searches_get_4xx_json(products, body, status):
    response = products.post("/search", json={"collection": "products", **body})
    assert response.status_code == status, response.text
    assert response.json()["error"]["message"]


def test_unregistered_condition_lists_the_registered_ones(products):
    error = search(products, condition="how old is it?", query={"text": "x"}).json()["error"]
    assert COLOUR in error["message"] and SHAPE in error["message"] and error["loc"] == ["condition"]


def test_search_errors_are_located(products):
    error = search(products, condition=COLOUR, query={"image": "@@@"}).json()["error"]
    assert (error["loc"], error["code"]) == (["query", "image"], "invalid_image")
    error = products.get("/collections/products/items", params={"limit": 5000}).json()["error"]
    assert error["loc"] == ["query", "limit"] and error["code"] == "invalid_request"
    bad_item = {"items": [{"id": "a", "image": ITEMS[0]["image"]}, {"id": "b", "image": "@@@"}]}
    error = products.post("/collections/products/items", json=bad_item).json()["error"]
    assert (error["loc"], error["code"]) == (["items", 1, "image"], "invalid_image")


@pytest.mark.parametrize(("method", "path", "body", "status"), [
    ("post", "/collections", {"name": "products", "model": "demo"}, 409),
    ("post", "/collections", {"name": "x", "model": "nope"}, 404),
    ("post", "/collections", {"name": "../../etc", "model": "demo"}, 422),
    ("post", "/collections", {"name": "a" * 200, "model": "demo"}, 422),
    ("post", "/collections/products/items", {"items": [{"id": "../x", "image": "AAAA"}]}, 422),
    ("post", "/collections/products/items", {"items": [{"id": "ok", "image": "not base64!"}]}, 422),
    ("post", "/collections/products/items", {"items": [{"id": "ok", "image": b64(b"not an image")}]}, 422),
    ("post", "/collections/ghost/items", {"items": [{"id": "ok", "image": ITEMS[0]["image"]}]}, 404),
    ("get", "/collections/ghost", None, 404),
    ("get", "/collections/products/items/..%2F..%2Fetc", None, 422),
    ("delete", "/collections/products/items/ghost", None, 404),
    ("post", "/collections/products/conditions", {"instruction": "   "}, 422),
    ("post", "/collections/products/conditions", {"instruction": "x", "index": "lsh"}, 422),
])
def test_bad_collection_requests_get_4xx_json(products, method, path, body, status):
    response = products.request(method, path, json=body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"]


def test_everything_survives_a_restart(demo_repository, tmp_path):
    data_dir = tmp_path / "data"
    query = {"collection": "small", "condition": SHAPE, "query": {"image": ITEMS[5]["image"]}, "k": 10}
    with running_gateway(demo_repository, tmp_path / "first.log", data_dir=str(data_dir)) as url:
        client = httpx.Client(base_url=url, timeout=60)
        client.post("/collections", json={"name": "small", "model": "demo"})
        client.post("/collections/small/conditions", json={"instruction": SHAPE, "index": "hnsw"})
        client.post("/collections/small/items", json={"items": ITEMS[:30]})
        wait_ready(client, "small")
        before = client.post("/search", json=query).json()
        info_before = client.get("/collections/small").json()
    with running_gateway(demo_repository, tmp_path / "second.log", data_dir=str(data_dir)) as url:
        assert httpx.post(f"{url}/search", json=query, timeout=60).json() == before
        assert httpx.get(f"{url}/collections/small").json() == info_before
    assert len(before["results"]) == 10


def test_multipart_item_upload(products):
    query = SAMPLES[7]
    response = products.post("/collections/products/items", files={"image": ("q.png", png(query.image), "image/png")},
                             data={"id": "multipart-1", "metadata": json.dumps({"colour": query.colour})})
    assert response.status_code == 201 and response.json() == {"added": 1}
    item = products.get("/collections/products/items/multipart-1").json()
    assert item["metadata"] == {"colour": query.colour}
    bad = products.post("/collections/products/items", files={"image": ("q.png", b"not an image", "image/png")},
                        data={"id": "multipart-2"})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_image"
    assert products.delete("/collections/products/items/multipart-1").status_code == 204


def test_a_plain_clip_collection_has_one_unconditional_view(gateway):
    client = gateway
    created = client.post("/collections", json={"name": "plain", "model": "tinyclip", "index": "hnsw"})
    assert created.status_code == 201
    assert [(c["instruction"], c["index"]) for c in created.json()["conditions"]] == [(None, "hnsw")]
    client.post("/collections/plain/items", json={"items": ITEMS[:12]})
    wait_ready(client, "plain")
    found = client.post("/search", json={"collection": "plain", "query": {"item_id": "item-1"}, "k": 5}).json()
    assert found["condition"] is None and len(found["results"]) == 5
    refused = client.post("/search", json={"collection": "plain", "condition": COLOUR, "query": {"text": "red"}})
    assert refused.status_code == 422
    no_conditions = client.post("/collections/plain/conditions", json={"instruction": COLOUR})
    assert no_conditions.status_code == 422
