"""`focalserve ingest` on a real local Ray: folders, manifests, WebDataset shards and Parquet vectors
into SQLite and PostgreSQL collections, the vectors `/embed` answers, reruns that store each image
once (after a kill -9 too), failures reported, and a gateway that serves throughout."""

from __future__ import annotations

import functools
import http.server
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from pydantic import SecretStr

from focalserve_devtools.launch import running_gateway
from focalserve_ingest.prepare import IngestFailed
from focalserve_ingest.sources import SourceError, detect, read_images
from focalserve_ingest.stores import StoreAddress
from focalserve_server.collections.store import Store
from focalserve_server.config import Settings
from tests.helpers.images import b64, cosine, shape_png
from tests.helpers.inprocess import InProcessGateway, gateway_settings
from tests.ingest.conftest import COLOUR, SHAPE, colour_of, image_folder, run_ingest


def stored(settings: Settings) -> Store:
    return StoreAddress.of(settings).open()


def item_ids(store: Store, collection: str) -> list[str]:
    return sorted(item.id for item in store.items(collection, limit=100_000))


def embedded(gateway: InProcessGateway, image: bytes, instructions: list[str]) -> np.ndarray:
    response = gateway.post("/embed", json={"model": "tiny", "inputs": [{"image": b64(image),
                                                                          "instructions": instructions}]})
    assert response.status_code == 200, response.text
    return np.array([row["embedding"] for row in response.json()["data"]], np.float32)


def test_a_folder_lands_with_the_vectors_embed_answers_one_log_entry_per_block_and_a_report_of_failures(
    ray_address, model_repository, tmp_path
):
    folder = image_folder(tmp_path / "images", 40, corrupt=1)
    settings = Settings(model_repository=model_repository, data_dir=tmp_path / "data")
    summary = run_ingest(folder, settings, tmp_path, collection="shapes", model="tiny", instructions=[COLOUR, SHAPE],
                         rows_per_write=8)

    assert (summary.images, summary.vectors, summary.already_stored, summary.failed) == (40, 80, 0, 1)
    [failure] = [json.loads(line) for line in summary.report.read_text().splitlines()]
    assert failure["id"] == "broken-0.png" and "not an image" in failure["error"]
    store = stored(settings)
    expected = sorted(f"{'sub/' if n % 2 else ''}{n:04d}.png" for n in range(40))
    assert item_ids(store, "shapes") == expected
    conditions = store.conditions("shapes")
    assert [c.instruction for c in conditions] == ["what colour is it?", "what shape is it?"]
    assert [store.vector_count(c.rowid) for c in conditions] == [40, 40]
    changes = store.changes(0, 10_000)
    blocks = [c for c in changes if c.kind == "block"]
    assert len(blocks) >= 2 and not [c for c in changes if c.kind == "vector"]  # one log entry per block
    assert sum(len(store.block_vectors(c.item, c.last_item)[conditions[0].rowid][0]) for c in blocks) == 40
    trail = store.audit_trail(0, 1000)  # each written in its block's own transaction
    assert {(entry.key_id, entry.action) for entry in trail} == {
        ("ingest", "collection.create"), ("ingest", "conditions.add"), ("ingest", "items.ingest")}
    assert sum(entry.detail["items"] for entry in trail if entry.action == "items.ingest") == 40

    with InProcessGateway(gateway_settings(model_repository, settings.data_dir)) as gateway:
        for item_id in expected[:4]:
            image = (folder / item_id).read_bytes()
            served = embedded(gateway, image, [COLOUR, SHAPE])
            item = store.item("shapes", item_id)
            assert item is not None and item.source == str(folder / item_id) and item.kept
            for number, condition in enumerate(conditions):
                assert cosine(served[number], store.vector(condition.rowid, item.rowid)) >= 0.9999
        # the gateway's replica took the blocks in through the log: every item is searchable
        info = gateway.get("/collections/shapes").json()
        assert [c["index_in_use"]["vectors"] for c in info["conditions"]] == [40, 40]
        image = gateway.get(f"/collections/shapes/items/{expected[0]}/image")
        assert image.status_code == 200 and image.content == (folder / expected[0]).read_bytes()


def test_strict_fails_the_run_on_the_first_image_that_fails(ray_address, model_repository, tmp_path):
    folder = image_folder(tmp_path / "images", 4, corrupt=1)
    settings = Settings(model_repository=model_repository, data_dir=tmp_path / "data")
    with pytest.raises(IngestFailed, match="broken-0.png"):
        run_ingest(folder, settings, tmp_path, collection="shapes", model="tiny", instructions=[COLOUR],
                   strict=True)


@pytest.fixture
def image_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A real HTTP server on 127.0.0.1 serving a folder: a manifest's URLs point at it."""
    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()


def write_manifest(tmp_path: Path, base_url: str, served: Path, suffix: str) -> Path:
    """12 images, every third by URL from the HTTP server, the others by a path relative to the
    manifest, with metadata columns; and one row whose file does not exist."""
    (tmp_path / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for number in range(12):
        data = shape_png(colour_of(number))
        if number % 3 == 0:
            (served / f"{number}.png").write_bytes(data)
            location = f"{base_url}/{number}.png"
        else:
            (tmp_path / "images" / f"{number}.png").write_bytes(data)
            location = f"images/{number}.png"
        rows.append({"key": f"photo-{number}", "path": location, "colour": f"c{number % 2}", "rank": number})
    rows.append({"key": "missing", "path": "images/nowhere.png", "colour": "c0", "rank": 99})
    manifest = tmp_path / f"manifest.{suffix}"
    frame = pd.DataFrame(rows)
    {"csv": lambda: frame.to_csv(manifest, index=False), "jsonl": lambda: frame.to_json(manifest, orient="records",
     lines=True), "parquet": lambda: frame.to_parquet(manifest)}[suffix]()
    return manifest


def test_a_manifest_of_paths_and_urls_lands_in_postgres_with_its_metadata(
    ray_address, model_repository, postgres_url, image_server, tmp_path
):
    base_url, served = image_server
    manifest = write_manifest(tmp_path, base_url, served, "parquet")
    settings = Settings(model_repository=model_repository, database_url=SecretStr(postgres_url),
                        data_dir=tmp_path / "data")

    summary = run_ingest(manifest, settings, tmp_path, collection="photos", model="tiny", instructions=[COLOUR],
                         id_column="key")

    assert (summary.images, summary.failed) == (12, 1)
    store = stored(settings)
    assert item_ids(store, "photos") == sorted(f"photo-{n}" for n in range(12))
    item = store.item("photos", "photo-4")
    assert item is not None and item.metadata == {"colour": "c0", "rank": 4}
    assert item.source == str(tmp_path / "images" / "4.png")
    assert store.item("photos", "photo-3").source == f"{base_url}/3.png"  # type: ignore[union-attr]
    assert store.read_blob(item.blob) == (tmp_path / "images" / "4.png").read_bytes()


@pytest.mark.parametrize("suffix", ["csv", "jsonl"])
def test_csv_and_json_lines_manifests_read_as_parquet_does(ray_address, image_server, tmp_path, suffix):
    """The formats differ only in Ray's reader: the rows it gives the prepare step are compared."""
    base_url, served = image_server
    rows = {}
    for kind in (suffix, "parquet"):
        manifest = write_manifest(tmp_path / kind, base_url, served, kind)
        read = read_images(str(manifest), "manifest", None, "key").take_all()
        rows[kind] = sorted((r["id"], r["source"].replace(str(tmp_path / kind), ""), r["metadata"]) for r in read)
    assert rows[suffix] == rows["parquet"] and len(rows[suffix]) == 13
    assert ("photo-3", f"{base_url}/3.png", '{"colour": "c1", "rank": 3}') in rows[suffix]


def webdataset_shard(path: Path, first: int, count: int) -> None:
    with tarfile.open(path, "w") as shard:
        for number in range(first, first + count):
            for name, data in ((f"s{number:03d}.png", shape_png(colour_of(number))),
                               (f"s{number:03d}.json", json.dumps({"label": f"l{number}"}).encode())):
                member = tarfile.TarInfo(name)
                member.size = len(data)
                shard.addfile(member, io.BytesIO(data))


def test_webdataset_shards_give_each_sample_its_key_image_and_json_metadata(ray_address, tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    webdataset_shard(shards / "000000.tar", 0, 5)
    webdataset_shard(shards / "000001.tar", 5, 5)
    assert detect(str(shards)) == "webdataset" and detect(str(shards / "000001.tar")) == "webdataset"
    rows = sorted(read_images(str(shards), "webdataset", None, None).take_all(), key=lambda row: row["id"])
    assert [row["id"] for row in rows] == [f"s{n:03d}" for n in range(10)]
    assert rows[7]["data"] == shape_png(colour_of(7)) and json.loads(rows[7]["metadata"]) == {"label": "l7"}
    assert rows[7]["source"] == f"{shards / '000001.tar'}#s007"


def test_vectors_written_as_parquet_load_into_a_collection_without_the_model(
    ray_address, model_repository, tmp_path
):
    folder = image_folder(tmp_path / "images", 10)
    settings = Settings(model_repository=model_repository, data_dir=tmp_path / "data")
    output = tmp_path / "vectors"
    written = run_ingest(folder, settings, tmp_path, output=str(output), model="tiny", instructions=[COLOUR, SHAPE])
    assert written.images == 10
    table = pq.read_table(output, columns=["id", "source", "metadata", "image_sha256", "vector_0", "vector_1"])
    assert sorted(table["id"].to_pylist()) == sorted(f"{'sub/' if n % 2 else ''}{n:04d}.png" for n in range(10))
    assert np.array(table["vector_0"].to_pylist()).shape == (10, 64)  # the tiny family's embedding_dim
    with pytest.raises(SourceError, match="not empty"):  # a second run would write every image again
        run_ingest(folder, settings, tmp_path, output=str(output), model="tiny", instructions=[COLOUR])

    loaded = run_ingest(output, settings, tmp_path, collection="from-parquet", model="tiny",
                        instructions=[SHAPE, COLOUR])
    assert loaded.images == 10
    store = stored(settings)
    vectors = dict(zip(table["id"].to_pylist(), table["vector_1"].to_pylist()))
    shape = next(c for c in store.conditions("from-parquet") if c.instruction == "what shape is it?")
    for item in store.items("from-parquet"):
        assert not item.kept
        np.testing.assert_allclose(store.vector(shape.rowid, item.rowid), vectors[item.id], rtol=1e-6)


def test_without_image_bytes_an_item_records_its_source_and_its_image_route_says_so(
    ray_address, model_repository, tmp_path
):
    folder = image_folder(tmp_path / "images", 6)
    settings = Settings(model_repository=model_repository, data_dir=tmp_path / "data")
    run_ingest(folder, settings, tmp_path, collection="lean", model="tiny", instructions=[COLOUR],
               keep_images=False)
    with InProcessGateway(gateway_settings(model_repository, settings.data_dir)) as gateway:
        info = gateway.get("/collections/lean/items/0000.png").json()
        assert (info["source"], info["image_kept"]) == (str(folder / "0000.png"), False)
        image = gateway.get("/collections/lean/items/0000.png/image")
        assert image.status_code == 404 and image.json()["error"]["code"] == "image_not_kept"
        assert str(folder / "0000.png") in image.json()["error"]["message"]
        search = gateway.post("/search", json={"collection": "lean", "condition": COLOUR,
                                               "query": {"item_id": "0002.png"}, "k": 3})
        assert search.status_code == 200 and len(search.json()["results"]) == 3
        # a condition registered later: the gateway has no bytes to embed, so its backfill leaves them out ...
        assert gateway.post("/collections/lean/conditions", json={"instruction": SHAPE}).status_code == 202
        deadline = time.monotonic() + 30
        while (shape := gateway.get("/collections/lean").json()["conditions"][1])["status"] == "building":
            assert time.monotonic() < deadline, "the backfill did not finish"
            time.sleep(0.05)
        assert (shape["status"], shape["embedded"]) == ("ready", 0)
    # ... and ingesting the source again fills them in, without storing any item twice
    again = run_ingest(folder, settings, tmp_path, collection="lean")
    assert (again.images, again.already_stored, again.failed) == (0, 6, 0)
    store = stored(settings)
    assert [store.vector_count(c.rowid) for c in store.conditions("lean")] == [6, 6]


def test_a_gateway_serves_searches_throughout_an_ingest_and_then_finds_every_image(
    ray_address, model_repository, postgres_url, tmp_path
):
    folder = image_folder(tmp_path / "images", 300)
    with running_gateway(model_repository, tmp_path / "gateway.log", database_url=postgres_url,
                         data_dir=str(tmp_path / "gateway")) as url:
        client = httpx.Client(base_url=url, timeout=30)
        assert client.post("/collections", json={"name": "live", "model": "tiny"}).status_code == 201
        seed = client.post("/collections/live/items", json={"items": [{"id": "seed", "image": b64(shape_png())}]})
        assert seed.status_code == 201, seed.text
        assert client.post("/collections/live/conditions", json={"instruction": COLOUR}).status_code == 202
        settings = Settings(model_repository=model_repository, database_url=SecretStr(postgres_url),
                            data_dir=tmp_path / "data")
        outcome: dict[str, object] = {}
        worker = threading.Thread(target=lambda: outcome.update(summary=run_ingest(
            folder, settings, tmp_path, collection="live", rows_per_write=16)))
        worker.start()
        statuses = []
        query = {"collection": "live", "condition": COLOUR, "query": {"image": b64(shape_png((0, 200, 0)))}, "k": 5}
        deadline = time.monotonic() + 120
        while worker.is_alive() and time.monotonic() < deadline:
            statuses.append(client.post("/search", json=query).status_code)
            time.sleep(0.05)
        worker.join(timeout=max(1.0, deadline - time.monotonic()))
        assert not worker.is_alive() and outcome["summary"].images == 300  # type: ignore[attr-defined]
        assert statuses and set(statuses) == {200}
        deadline = time.monotonic() + 30
        while client.get("/collections/live").json()["conditions"][0]["index_in_use"]["vectors"] < 301:
            assert time.monotonic() < deadline, "the gateway did not take the ingested blocks in from the log"
            time.sleep(0.1)
        hits = client.post("/search", json={**query, "query": {"item_id": "0150.png"}, "k": 300}).json()["results"]
        assert len(hits) == 300


def test_a_rerun_after_kill_9_of_the_driver_stores_every_image_exactly_once(ray_address, model_repository, tmp_path):
    folder = image_folder(tmp_path / "images", 1500)
    data_dir = tmp_path / "data"
    command = [sys.executable, "-m", "focalserve_server", "ingest", str(folder), "--collection", "killed",
               "--model", "tiny", "--instruction", COLOUR, "--address", ray_address, "--batch-size", "8",
               "--rows-per-write", "16", "--data-dir", str(data_dir), "--model-repository", str(model_repository),
               "--report", str(tmp_path / "failures.jsonl")]
    settings = Settings(model_repository=model_repository, data_dir=data_dir)
    driver = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (data_dir / "focalserve.sqlite3").exists() or not _count(settings, "killed"):
            assert driver.poll() is None and time.monotonic() < deadline, "the ingest stored nothing"
            time.sleep(0.05)
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
    finally:
        if driver.poll() is None:
            driver.kill()
    partial = _count(settings, "killed")
    assert 0 < partial < 1500, "the driver finished before it was killed: the test needs more images"

    summary = run_ingest(folder, settings, tmp_path, collection="killed")
    store = stored(settings)
    assert summary.images == 1500 - partial and summary.already_stored >= partial
    assert len(item_ids(store, "killed")) == 1500
    [condition] = store.conditions("killed")
    assert store.vector_count(condition.rowid) == 1500


def _count(settings: Settings, collection: str) -> int:
    return stored(settings).item_count(collection) if stored(settings).collection(collection) else 0
