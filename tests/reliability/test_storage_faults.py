"""A disk that really fills up under a running gateway (SQLite store, data dir on a small tmpfs):
507 `insufficient_storage` on every write path, reads unharmed, nothing half-written, readiness
detail and metrics that say so, and writes back as soon as there is space, without a restart."""

from __future__ import annotations

import hashlib
import io
import logging
import sqlite3
import tempfile
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.helpers.disks import small_disk
from tests.helpers.images import b64
from tests.helpers.inprocess import gateway_settings, serving_in_thread

CONDITION = "what colour is it?"


def noise_png(seed: int, side: int = 300) -> bytes:
    """Incompressible: a PNG of random pixels is about as large as the raw pixels (~270 KB at 300 px)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def add(http: httpx.Client, index: int) -> httpx.Response:
    item = {"id": f"n{index}", "image": b64(noise_png(index)), "metadata": {"n": index}}
    return http.post("/collections/full/items", json={"items": [item]})


def stored_ids(http: httpx.Client) -> list[str]:
    page = http.get("/collections/full/items", params={"limit": 1000})
    assert page.status_code == 200, page.text
    return [item["id"] for item in page.json()["items"]]


def assert_insufficient_storage(response: httpx.Response) -> None:
    assert response.status_code == 507, response.text
    error = response.json()["error"]
    assert error["code"] == "insufficient_storage" and "nothing was stored" in error["message"]


def assert_nothing_half_written(data_dir: Path, acknowledged: list[int]) -> None:
    """SQLite intact, and the blob files exactly the acknowledged images: no orphan, no temporary."""
    with sqlite3.connect(f"file:{data_dir / 'focalserve.sqlite3'}?mode=ro", uri=True) as database:
        assert database.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    blobs = {path.name for path in (data_dir / "blobs").glob("*/*")}
    assert blobs == {hashlib.sha256(noise_png(index)).hexdigest() for index in acknowledged}


def store_metric(http: httpx.Client, part: str) -> float:
    for line in http.get("/metrics").text.splitlines():
        if line.startswith(f'focalserve_store_failing{{part="{part}"}}'):
            return float(line.split()[-1])
    raise AssertionError(f"no focalserve_store_failing metric for {part}")


@pytest.fixture
def spool_on(monkeypatch: pytest.MonkeyPatch):
    """Large multipart uploads spool to the temp dir: put it on the small disk too."""
    def spool(directory: Path) -> None:
        directory.mkdir()
        monkeypatch.setattr(tempfile, "tempdir", str(directory))
    return spool


def test_a_full_disk_answers_507_keeps_reads_and_recovers_by_itself(
    model_repository: Path, tmp_path: Path, spool_on, caplog: pytest.LogCaptureFixture
):
    with small_disk(tmp_path / "disk", "6m") as disk:
        spool_on(disk.path / "spool")
        data_dir = disk.path / "data"
        with serving_in_thread(gateway_settings(model_repository, data_dir)) as url, \
                httpx.Client(base_url=url, timeout=60) as http:  # one keep-alive connection throughout
            assert http.post("/collections", json={"name": "full", "model": "tiny"}).status_code == 201
            assert http.post("/collections/full/conditions", json={"instruction": CONDITION}).status_code == 202
            acknowledged: list[int] = []
            for index in range(100):  # 6 MB holds about 20 of these images
                response = add(http, index)
                if response.status_code != 201:
                    break
                acknowledged.append(index)
            assert_insufficient_storage(response)
            assert len(acknowledged) >= 5
            failed = index

            # every write path says the same: JSON items again, a multipart upload spooled to the full disk
            assert_insufficient_storage(add(http, failed))
            big = noise_png(10_000, side=700)  # > 1 MB: Starlette spools it to a temporary file
            multipart = http.post("/collections/full/items", files={"image": ("big.png", big, "image/png")},
                                  data={"id": "big"})
            assert_insufficient_storage(multipart)

            # reads keep working, on the same connection
            assert stored_ids(http) == [f"n{i}" for i in acknowledged]
            first = f"n{acknowledged[0]}"
            assert http.get(f"/collections/full/items/{first}/image").content == noise_png(acknowledged[0])
            search = http.post("/search", json={"collection": "full", "condition": CONDITION,
                                                "query": {"item_id": first}, "k": 3})
            assert search.status_code == 200 and len(search.json()["results"]) == 3
            ready = http.get("/readyz")
            assert ready.status_code == 200 and "writes failing" in ready.json()["detail"]["storage"]
            assert store_metric(http, "storage") == 1
            assert_nothing_half_written(data_dir, acknowledged)

            disk.resize("64m")  # space returns: no restart, no client write needed for readiness to clear
            assert "storage" not in http.get("/readyz").json()["detail"]
            assert store_metric(http, "storage") == 0
            assert add(http, failed).status_code == 201
            assert multipart_ok(http, big)
            assert stored_ids(http) == [f"n{i}" for i in [*acknowledged, failed]] + ["big"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], "no unhandled error, no reset connection"


def multipart_ok(http: httpx.Client, image: bytes) -> bool:
    response = http.post("/collections/full/items", files={"image": ("big.png", image, "image/png")},
                         data={"id": "big"})
    return response.status_code == 201


def test_a_shutdown_on_a_full_disk_keeps_every_acknowledged_item(
    model_repository: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    """Index snapshots are written at shutdown: a full disk skips them (a snapshot is a cache), the
    process stops cleanly, and the next start rebuilds the indexes from the store."""
    with small_disk(tmp_path / "disk", "8m") as disk:
        settings = gateway_settings(model_repository, disk.path / "data")
        with serving_in_thread(settings) as url, httpx.Client(base_url=url, timeout=60) as http:
            http.post("/collections", json={"name": "full", "model": "tiny"})
            http.post("/collections/full/conditions", json={"instruction": CONDITION})
            assert [add(http, index).status_code for index in range(4)] == [201] * 4
            acknowledged = list(range(4))
            filler = disk.fill()
            assert_insufficient_storage(add(http, 4))
            expected = http.post("/search", json={"collection": "full", "condition": CONDITION,
                                                  "query": {"item_id": "n0"}, "k": 3}).json()["results"]
        assert any("could not write the index snapshot" in r.getMessage() for r in caplog.records)
        filler.unlink()
        with serving_in_thread(settings) as url, httpx.Client(base_url=url, timeout=60) as http:
            assert stored_ids(http) == [f"n{i}" for i in acknowledged]
            again = http.post("/search", json={"collection": "full", "condition": CONDITION,
                                               "query": {"item_id": "n0"}, "k": 3})
            assert again.json()["results"] == expected
