"""Indexes that stay healthy while a collection changes: an `auto` condition moves from exact
search to IVF-PQ as the collection grows, and is rebuilt once deletes leave tombstones past the
ratio; both rebuilds run in the background and are swapped in while searches keep answering."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx

from focalserve_client.schemas import IndexOptions
from tests.helpers.images import b64, shape_png
from tests.helpers.inprocess import InProcessGateway, gateway_settings
from tests.helpers.loop import wait_for

CONDITION = "what colour is it?"
ITEMS = 800
# 8 lists of 4-bit codes train on 39 * 16 = 624 vectors: the switch happens at a size a test affords
SMALL_IVF = IndexOptions(nlist=8, pq_nbits=4)


def item(index: int) -> dict:
    colour = ((index * 37) % 256, (index * 91) % 256, (index * 53) % 256)
    return {"id": f"i{index}", "image": b64(shape_png(colour, size=32, box=2 + index % 12))}


def in_use(client: httpx.Client) -> dict:
    return client.get("/collections/grow/conditions").json()[0]["index_in_use"]


class SearchesMeanwhile:
    """Item searches in a loop on another thread (bounded in count and time), recording statuses."""

    def __init__(self, client: httpx.Client) -> None:
        self.client, self.statuses, self._stop = client, [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + 120
        while not self._stop.is_set() and len(self.statuses) < 5000 and time.monotonic() < deadline:
            body = {"collection": "grow", "condition": CONDITION, "query": {"item_id": "i0"}, "k": 5}
            self.statuses.append(self.client.post("/search", json=body).status_code)

    def __enter__(self) -> SearchesMeanwhile:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def test_an_auto_index_grows_into_ivfpq_and_sheds_its_tombstones_while_searches_go_on(
    model_repository: Path, tmp_path: Path
):
    settings = gateway_settings(model_repository, tmp_path / "data", index_exact_max=100, index_options=SMALL_IVF,
                                log_poll_interval_s=0.05)
    with InProcessGateway(settings) as client:
        client.post("/collections", json={"name": "grow", "model": "tiny"})
        registered = client.post("/collections/grow/conditions", json={"instruction": CONDITION})
        assert registered.json()["index"] == "auto"  # the default
        assert client.post("/collections/grow/items", json={"items": [item(0)]}).status_code == 201
        wait_for(lambda: in_use(client) is not None, 10, "the condition's index")
        assert in_use(client)["kind"] == "flat"

        with SearchesMeanwhile(client) as searches:
            for start in range(1, ITEMS, 100):
                added = client.post("/collections/grow/items",
                                    json={"items": [item(i) for i in range(start, min(start + 100, ITEMS))]})
                assert added.status_code == 201
            wait_for(lambda: in_use(client)["kind"] == "ivfpq" and not in_use(client)["rebuilding"], 60,
                  "the switch to IVF-PQ")
            grown = in_use(client)
            assert grown["factory"].startswith("IVF8,PQ") and grown["factory"].endswith("RFlat")
            assert grown["vectors"] == ITEMS and grown["built_for"] >= 624
            assert grown["parameters"]["nprobe"] >= 8 and grown["parameters"]["k_factor"] == 64

            for index in range(500, ITEMS):
                assert client.delete(f"/collections/grow/items/i{index}").status_code == 204
            # 300 deletes leave 300 tombstones for 500 live vectors, past the 0.25 ratio, until rebuilt
            wait_for(lambda: in_use(client)["tombstones"] <= 0.25 * 500 and not in_use(client)["rebuilding"], 60,
                  "the rebuild that drops the tombstones")
        assert searches.statuses and set(searches.statuses) == {200}, "searches answered throughout"

        assert in_use(client)["vectors"] == 500
        body = {"collection": "grow", "condition": CONDITION, "query": {"item_id": "i1"}, "k": 20}
        hits = [hit["id"] for hit in client.post("/search", json=body).json()["results"]]
        assert len(hits) == 20 and all(int(hit[1:]) < 500 for hit in hits)
