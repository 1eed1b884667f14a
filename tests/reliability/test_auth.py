"""API keys: writes need one, reads only with auth_all; constant-time check; keys never logged; CORS off by default."""

from __future__ import annotations

import httpx
import pytest

from focalserve_devtools.launch import running_gateway
from tests.helpers.images import b64, shape_png
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
    url, _ = hardened_gateway
    for headers in ({}, {"Authorization": "Bearer wrong-key"}, {"Authorization": f"Basic {API_KEY}"}):
        response = httpx.request(method, f"{url}{path}", json=body, headers=headers, timeout=30)
        assert response.status_code == 401, (headers, response.text)
        assert response.json()["error"]["code"] == "unauthorized"
        assert response.headers["www-authenticate"] == "Bearer"
    response = httpx.request(method, f"{url}{path}", json=body, headers={"Authorization": f"Bearer {API_KEY}"},
                             timeout=30)
    assert response.status_code in (200, 201, 202, 204), response.text


def test_reads_are_open_without_auth_all(hardened_gateway):
    url, _ = hardened_gateway
    assert httpx.post(f"{url}/embed", json={"model": "tiny", "inputs": [{"text": "x"}]}).status_code == 200
    assert httpx.get(f"{url}/collections").status_code == 200


def test_keys_never_reach_the_log(hardened_gateway):
    url, log = hardened_gateway
    httpx.post(f"{url}/collections", json={"name": "logged", "model": "tiny"},
               headers={"Authorization": f"Bearer {API_KEY}"})
    httpx.post(f"{url}/collections", json={"name": "logged2", "model": "tiny"},
               headers={"Authorization": "Bearer wrong-secret-zz9"})
    text = log.read_text()
    assert API_KEY not in text and "wrong-secret-zz9" not in text


def test_cors_is_off_by_default(hardened_gateway):
    url, _ = hardened_gateway
    response = httpx.options(f"{url}/embed", headers={"Origin": "https://elsewhere.example",
                                                      "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in response.headers


def test_auth_all_protects_reads_but_not_health_and_cors_when_configured(model_repository, tmp_path):
    with running_gateway(model_repository, tmp_path / "gateway.log", data_dir=str(tmp_path / "data"),
                         api_keys=API_KEY, auth_all="true", cors_origins='["https://ui.example"]') as url:
        assert httpx.post(f"{url}/embed", json={"model": "tiny", "inputs": [{"text": "x"}]}).status_code == 401
        assert httpx.get(f"{url}/models").status_code == 401
        assert httpx.get(f"{url}/metrics").status_code == 401
        assert httpx.get(f"{url}/healthz").status_code == 200 and httpx.get(f"{url}/readyz").status_code == 200
        ok = httpx.post(f"{url}/embed", json={"model": "tiny", "inputs": [{"text": "x"}]},
                        headers={"Authorization": f"Bearer {API_KEY}"})
        assert ok.status_code == 200
        preflight = httpx.options(f"{url}/embed", headers={"Origin": "https://ui.example",
                                                           "Access-Control-Request-Method": "POST"})
        assert preflight.headers["access-control-allow-origin"] == "https://ui.example"
