"""Keys with grants on one gateway: default deny (404 as for a missing collection), 401 for a bad key,
403 for an action beyond the grant, filtered lists, rotation and revocation, the audit trail, the
admin API and command, keys never logged, CORS off by default."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from focalserve_server.cli import main
from tests.helpers.images import b64, shape_png
from tests.helpers.inprocess import InProcessGateway, gateway_settings

ADMIN_KEY = "fs-admin-key-3e8a51"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
EMBED_TEXT = {"model": "tiny", "inputs": [{"text": "x"}]}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def eventually(check: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    """Whether `check` holds within `timeout_s` (a gateway sees another's key change at its next poll)."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def make_key(gateway: InProcessGateway, name: str, *grants: str, **limits: int) -> tuple[str, str]:
    """(id, key) of a new key with grants written 'pattern:action'."""
    body = {"name": name, "grants": [dict(zip(("collections", "action"), g.rsplit(":", 1), strict=True))
                                     for g in grants], "limits": limits}
    response = gateway.post("/admin/keys", json=body, headers=ADMIN)
    assert response.status_code == 201, response.text
    return response.json()["id"], response.json()["key"]


@pytest.fixture(scope="module")
def teams(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[InProcessGateway, dict]]:
    """The operator's story: team A may write `a-*`, team B may read `shared`; C holds no grant."""
    settings = gateway_settings(model_repository, tmp_path_factory.mktemp("data"), admin_key=ADMIN_KEY)
    with InProcessGateway(settings) as gateway:
        for name in ("a-photos", "shared", "b-private"):
            assert gateway.post("/collections", json={"name": name, "model": "tiny"}, headers=ADMIN).status_code == 201
        item = {"items": [{"id": "one", "image": b64(shape_png())}]}
        assert gateway.post("/collections/shared/items", json=item, headers=ADMIN).status_code == 201
        keys = {name: make_key(gateway, name, *grants)
                for name, grants in (("a", ["a-*:write"]), ("b", ["shared:read"]), ("c", []))}
        yield gateway, keys


def test_each_team_sees_only_its_collections(teams):
    gateway, keys = teams
    listed = {name: [c["name"] for c in gateway.get("/collections", headers=bearer(key)).json()["collections"]]
              for name, (_, key) in keys.items()}
    assert listed == {"a": ["a-photos"], "b": ["shared"], "c": []}
    assert len(gateway.get("/collections", headers=ADMIN).json()["collections"]) == 3


def test_a_collection_a_key_may_not_see_is_answered_as_one_that_does_not_exist(teams):
    gateway, keys = teams
    team_a = bearer(keys["a"][1])
    for path in ("/collections/shared", "/collections/shared/items", "/collections/shared/items/one",
                 "/collections/shared/items/one/image", "/collections/shared/conditions"):
        hidden, missing = gateway.get(path, headers=team_a), gateway.get(path.replace("shared", "nothing"),
                                                                         headers=team_a)
        assert hidden.status_code == 404, path
        assert hidden.json()["error"]["message"] == missing.json()["error"]["message"].replace("nothing", "shared")
    search = {"collection": "shared", "query": {"text": "x"}}
    assert gateway.post("/search", json=search, headers=team_a).status_code == 404
    item = {"items": [{"id": "sneaky", "image": b64(shape_png())}]}
    assert gateway.post("/collections/shared/items", json=item, headers=team_a).status_code == 404
    assert gateway.delete("/collections/shared", headers=team_a).status_code == 404


def test_grants_bound_the_actions(teams):
    gateway, keys = teams
    team_a, team_b = bearer(keys["a"][1]), bearer(keys["b"][1])
    item = {"items": [{"id": "mine", "image": b64(shape_png())}]}
    assert gateway.post("/collections/a-photos/items", json=item, headers=team_a).status_code == 201
    assert gateway.post("/collections/a-photos/conditions", json={"instruction": "what colour?"},
                        headers=team_a).status_code in (200, 202)
    assert gateway.get("/collections/shared/items/one", headers=team_b).status_code == 200
    refused = gateway.post("/collections/shared/items", json=item, headers=team_b)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
    # creating and deleting collections needs 'admin' on the name; write is not enough
    assert gateway.post("/collections", json={"name": "a-new", "model": "tiny"}, headers=team_a).status_code == 403
    assert gateway.delete("/collections/a-photos", headers=team_a).status_code == 403
    # embedding needs a key with some grant; managing keys needs 'admin' on '*'
    assert gateway.post("/embed", json=EMBED_TEXT, headers=team_b).status_code == 200
    assert gateway.post("/embed", json=EMBED_TEXT, headers=bearer(keys["c"][1])).status_code == 403
    assert gateway.get("/admin/keys", headers=team_a).status_code == 403


@pytest.mark.parametrize("header", [{}, {"Authorization": "Bearer wrong-key"}, {"Authorization": f"Basic {ADMIN_KEY}"},
                                    {"Authorization": "Bearer fsk_0123456789ab_" + "x" * 43}])
def test_a_missing_or_bad_key_is_401(teams, header):
    gateway, _ = teams
    for method, path in (("get", "/collections"), ("post", "/embed"), ("get", "/models"), ("post", "/search"),
                         ("get", "/admin/keys")):
        response = gateway.request(method, path, json=EMBED_TEXT if method == "post" else None, headers=header)
        assert response.status_code == 401, (path, response.text)
        assert response.json()["error"]["code"] == "unauthorized"
        assert response.headers["www-authenticate"] == "Bearer"
    assert all(gateway.get(path).status_code == 200 for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"))
    assert gateway.get("/ui/auth.json").json() == {"keys": True}


def test_rotation_and_revocation_take_effect_at_once_and_are_audited(teams):
    gateway, _ = teams
    key_id, key = make_key(gateway, "temporary", "shared:read")
    assert gateway.get("/collections/shared", headers=bearer(key)).status_code == 200
    rotated = gateway.post(f"/admin/keys/{key_id}/rotate", headers=ADMIN).json()
    assert rotated["id"] == key_id and rotated["key"] != key
    assert gateway.get("/collections/shared", headers=bearer(key)).status_code == 401
    assert gateway.get("/collections/shared", headers=bearer(rotated["key"])).status_code == 200
    grants = gateway.put(f"/admin/keys/{key_id}/grants", json={"grants": [{"collections": "b-*", "action": "read"}]},
                         headers=ADMIN)
    assert grants.status_code == 200 and grants.json()["grants"] == [{"collections": "b-*", "action": "read"}]
    assert gateway.get("/collections/shared", headers=bearer(rotated["key"])).status_code == 404
    assert gateway.delete(f"/admin/keys/{key_id}", headers=ADMIN).status_code == 204
    assert gateway.get("/collections/b-private", headers=bearer(rotated["key"])).status_code == 401
    listed = {k["id"]: k for k in gateway.get("/admin/keys", headers=ADMIN).json()["keys"]}
    assert listed[key_id]["revoked"] is not None and rotated["key"].startswith(listed[key_id]["prefix"])
    assert "hash" not in listed[key_id] and "key" not in listed[key_id]
    trail = gateway.get("/admin/audit", headers=ADMIN).json()["entries"]
    assert [(e["action"], e["key"]) for e in trail if e["target"] == key_id] == [
        ("key.create", "bootstrap"), ("key.rotate", "bootstrap"), ("key.grants", "bootstrap"),
        ("key.revoke", "bootstrap")]
    assert {"collection.create", "items.add"} <= {e["action"] for e in trail}


def test_the_keys_command_manages_keys_in_the_store_the_gateway_reads(teams, capsys):
    gateway, _ = teams
    data_dir = str(gateway.settings.data_dir)
    main(["keys", "--data-dir", data_dir, "create", "from-cli", "--grant", "shared:read", "--requests", "100"])
    key = capsys.readouterr().out.strip()
    assert eventually(lambda: gateway.get("/collections/shared", headers=bearer(key)).status_code == 200)
    main(["keys", "--data-dir", data_dir, "audit", "--limit", "1000"])
    assert '"key.create"' in capsys.readouterr().out
    key_id = key.split("_")[1]
    main(["keys", "--data-dir", data_dir, "revoke", key_id])
    with pytest.raises(SystemExit, match="no live key"):
        main(["keys", "--data-dir", data_dir, "revoke", key_id])


def test_keys_never_reach_the_log(teams, caplog):
    gateway, keys = teams
    caplog.set_level(logging.DEBUG)
    secret = keys["a"][1]
    gateway.get("/collections", headers=bearer(secret))
    gateway.get("/collections", headers=bearer("wrong-secret-zz9"))
    gateway.post("/admin/keys", json={"name": "logged"}, headers=ADMIN)
    assert secret not in caplog.text and "wrong-secret-zz9" not in caplog.text and ADMIN_KEY not in caplog.text


def test_without_keys_the_gateway_is_open_and_cors_is_off(model_repository, tmp_path):
    with InProcessGateway(gateway_settings(model_repository, tmp_path / "data")) as gateway:
        assert gateway.post("/embed", json=EMBED_TEXT).status_code == 200
        assert gateway.get("/ui/auth.json").json() == {"keys": False}
        preflight = gateway.options("/embed", headers={"Origin": "https://elsewhere.example",
                                                       "Access-Control-Request-Method": "POST"})
        assert "access-control-allow-origin" not in preflight.headers


def test_cors_when_configured_answers_preflights_before_keys(model_repository, tmp_path):
    settings = gateway_settings(model_repository, tmp_path / "data", admin_key=ADMIN_KEY,
                                cors_origins=["https://ui.example"])
    with InProcessGateway(settings) as gateway:
        preflight = gateway.options("/embed", headers={"Origin": "https://ui.example",
                                                       "Access-Control-Request-Method": "POST"})
        assert preflight.headers["access-control-allow-origin"] == "https://ui.example"
        assert gateway.post("/embed", json=EMBED_TEXT).status_code == 401
