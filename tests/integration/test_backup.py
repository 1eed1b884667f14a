"""`focalserve backup` while a gateway takes adds, and `focalserve restore` into a fresh store, on both
engines: the restored store, brought up by a fresh gateway, holds every item acknowledged before the
backup began, consistently (each with its vector under every condition), and answers searches as
the original did at the backup."""

from __future__ import annotations

import json
import threading

import httpx
import pytest

from focalserve_server.cli import main
from tests.helpers.images import b64, shape_png
from tests.helpers.inprocess import gateway_settings, serving_in_thread

COLOUR = "what colour is it?"
QUERIES = [{"text": "red"}, {"text": "blue"}, {"item_id": "i3"}]


def item(n: int) -> dict:
    return {"id": f"i{n}", "image": b64(shape_png(((n * 37) % 256, (n * 91) % 256, (n * 53) % 256), size=32)),
            "metadata": {"n": n}}


def answers(url: str) -> list[list[tuple[str, float]]]:
    ranked = []
    for query in QUERIES:
        found = httpx.post(f"{url}/search", timeout=30,
                           json={"collection": "c", "condition": COLOUR, "query": query, "k": 50})
        assert found.status_code == 200, found.text
        ranked.append([(hit["id"], round(hit["score"], 5)) for hit in found.json()["results"]])
    return ranked


def store_flags(engine: str, where: str) -> list[str]:
    return ["--database-url", where] if engine == "postgres" else ["--data-dir", where]


@pytest.mark.parametrize("engine", ["sqlite", "postgres"])
def test_a_backup_under_adds_restores_every_acknowledged_item_and_the_same_answers(
    engine, model_repository, tmp_path, postgres_server, capsys
):
    if engine == "postgres":
        original, restored = (postgres_server.create_database(f"backup_{name}") for name in ("from", "into"))
        stores = {"database_url": original}, {"database_url": restored}
    else:
        original, restored = str(tmp_path / "from"), str(tmp_path / "into")
        stores = {}, {}
    settings = gateway_settings(model_repository, tmp_path / "from" if engine == "sqlite" else tmp_path / "cache",
                                log_poll_interval_s=0.05, **stores[0])
    with serving_in_thread(settings) as url:
        httpx.post(f"{url}/collections", json={"name": "c", "model": "tiny"})
        httpx.post(f"{url}/collections/c/conditions", json={"instruction": COLOUR})
        assert httpx.post(f"{url}/collections/c/items", json={"items": [item(n) for n in range(12)]},
                          timeout=60).status_code == 201
        before = answers(url)
        acknowledged: list[int] = []
        stop = threading.Event()

        def keep_adding() -> None:  # bounded: at most 200 more items
            for n in range(12, 212):
                if stop.is_set():
                    return
                if httpx.post(f"{url}/collections/c/items", json={"items": [item(n)]}, timeout=60).status_code == 201:
                    acknowledged.append(n)

        adding = threading.Thread(target=keep_adding)
        adding.start()
        try:
            while len(acknowledged) < 3 and adding.is_alive():
                stop.wait(0.02)
            acknowledged_before = len(acknowledged)
            main(["backup", str(tmp_path / "backup"), *store_flags(engine, original)])
        finally:
            stop.set()
            adding.join(timeout=60)
    assert json.loads(capsys.readouterr().out)["engine"] == engine
    with pytest.raises(SystemExit, match="not empty: a backup goes into a new folder"):
        main(["backup", str(tmp_path / "backup"), *store_flags(engine, original)])
    main(["restore", str(tmp_path / "backup"), *store_flags(engine, restored)])
    with pytest.raises(SystemExit, match="already holds a store" if engine == "sqlite" else "pg_restore failed"):
        main(["restore", str(tmp_path / "backup"), *store_flags(engine, restored)])
    fresh = gateway_settings(model_repository, tmp_path / ("into" if engine == "sqlite" else "fresh-cache"),
                             **stores[1])
    with serving_in_thread(fresh) as url:
        page = httpx.get(f"{url}/collections/c/items", params={"limit": 1000}).json()
        ids = {entry["id"] for entry in page["items"]}
        assert {f"i{n}" for n in range(12)} | {f"i{n}" for n in acknowledged[:acknowledged_before]} <= ids
        conditions = httpx.get(f"{url}/collections/c/conditions").json()
        assert conditions[0]["embedded"] == len(ids) == conditions[0]["total"]  # every item with its vector
        first = {f"i{n}" for n in range(12)}
        for original_hits, restored_hits in zip(before, answers(url), strict=True):  # later adds rank in between
            assert [hit for hit in restored_hits if hit[0] in first] == original_hits
