"""API keys: writes need one, reads only with auth_all; constant-time check; keys never logged; CORS off by default."""

from __future__ import annotations

import logging

import pytest

from tests.helpers.images import b64, shape_png
from tests.helpers.inprocess import InProcessGateway, gateway_settings
from tests.reliability.conftest import API_KEY

WRITES = [
    ("post", "/collections", {"name": "authz", "model": "tiny"}),
    ("post", "/collections/authz/items", {"items": [{"id": "a", "image": b64(shape_png())}]}),
    ("post", "/collections/authz/conditions", {"instruction": "what colour?"}),
    ("delete", "/collections/authz/items/a", None),
    ("delete", "/collections/authz", None),
]


@pytest.mark.parametrize(("method", "path", "body"), WRITES, ids=[f"{m} {p}" for m, p, _ in WRITES])
def test_writes_need_a_valid_key(hardened_gateway, method, path, body):
    for headers in ({}, {"Authorization": "Bearer wrong-key"}, {"Authorization": f"Basic {API_KEY}"}):
        response = hardened_gateway.request(method, path, json=body, headers=headers)
        assert response.status_code == 401, (headers, response.text)
        assert response.json()["error"]["code"] == "unauthorized"
        assert response.headers["www-authenticate"] == "Bearer"
    response = hardened_gateway.request(method, path, json=body, headers={"Authorization": f"Bearer {API_KEY}"})
    assert response.status_code in (200, 201, 202, 204), response.text


def test_reads_are_open_without_auth_all(hardened_gateway):
    assert hardened_gateway.post("/embed", json={"model": "tiny", "inputs": [{"text": "x"}]}).status_code == 200
    assert hardened_gateway.get("/collections").status_code == 200


def test_keys_never_reach_the_log(hardened_gateway, caplog):
    # Every record the gateway emits, at every level (the subprocess logged from WARNING up).
    caplog.set_level(logging.DEBUG)
    hardened_gateway.post("/collections", json={"name": "logged", "model": "tiny"},
                          headers={"Authorization": f"Bearer {API_KEY}"})
    hardened_gateway.post("/collections", json={"name": "logged2", "model": "tiny"},
                          headers={"Authorization": "Bearer wrong-secret-zz9"})
    text = caplog.text
    assert API_KEY not in text and "wrong-secret-zz9" not in text


def test_cors_is_off_by_default(hardened_gateway):
    response = hardened_gateway.options("/embed", headers={"Origin": "https://elsewhere.example",
                                                           "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in response.headers


def test_auth_all_protects_reads_but_not_health_and_cors_when_configured(model_repository, tmp_path):
    settings = gateway_settings(model_repository, tmp_path / "data", api_keys=API_KEY, auth_all=True,
                                cors_origins=["https://ui.example"])
    with InProcessGateway(settings) as client:
        assert client.post("/embed", json={"model": "tiny", "inputs": [{"text": "x"}]}).status_code == 401
        assert client.get("/models").status_code == 401
        assert client.get("/metrics").status_code == 401
        assert client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200
        ok = client.post("/embed", json={"model": "tiny", "inputs": [{"text": "x"}]},
                         headers={"Authorization": f"Bearer {API_KEY}"})
        assert ok.status_code == 200
        preflight = client.options("/embed", headers={"Origin": "https://ui.example",
                                                      "Access-Control-Request-Method": "POST"})
        assert preflight.headers["access-control-allow-origin"] == "https://ui.example"
