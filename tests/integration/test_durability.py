"""Durability: bulk ingest is resumable, and kill -9 during adds loses no acknowledged item."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import httpx

from focalserve_devtools.launch import gateway_process, running_gateway
from focalserve_training.data import ColorShapeGenerator
from tests.helpers.images import b64, png

SHAPE = "which shape is this?"


def test_bulk_ingest_cli_is_resumable(model_repository, tmp_path):
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    generator = ColorShapeGenerator(seed=5)
    for index in range(24):
        target = folder / ("sub" if index % 2 else "") / f"img {index}.png"
        generator.sample(index).image.save(target)
    (tmp_path / "meta.jsonl").write_text("\n".join(
        json.dumps({"file": f"img {i}.png", "colour": generator.sample(i).colour}) for i in range(0, 24, 2)))
    # --batch-size over the gateway's limit: the SDK learns the limit from the first refusal
    with running_gateway(model_repository, tmp_path / "gateway.log", data_dir=str(tmp_path / "data"),
                         max_inputs_per_request="4") as url:
        command = [sys.executable, "-m", "focalserve_server", "index", "add", "--collection", "folder",
                   "--model", "tiny", "--images", str(folder), "--metadata", str(tmp_path / "meta.jsonl"),
                   "--url", url, "--batch-size", "5"]
        first = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert first.returncode == 0, first.stderr
        assert json.loads(first.stdout.splitlines()[-1]) == {"collection": "folder", "added": 24, "skipped": 0}
        second = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert json.loads(second.stdout.splitlines()[-1]) == {"collection": "folder", "added": 0, "skipped": 24}
        httpx.delete(f"{url}/collections/folder/items/sub/img 7.png").raise_for_status()  # an interrupted run
        third = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert json.loads(third.stdout.splitlines()[-1]) == {"collection": "folder", "added": 1, "skipped": 23}
        item = httpx.get(f"{url}/collections/folder/items/img 4.png").json()
        assert item["metadata"] == {"colour": generator.sample(4).colour}
        assert httpx.get(f"{url}/collections/folder").json()["items"] == 24


def test_kill_9_during_adds_loses_no_acknowledged_item(model_repository, tmp_path):
    data_dir = tmp_path / "data"
    generator = ColorShapeGenerator(seed=9)
    images = [b64(png(generator.sample(i).image)) for i in range(200)]
    acknowledged: list[str] = []
    with gateway_process(model_repository, tmp_path / "first.log", data_dir=str(data_dir)) as (url, process):
        client = httpx.Client(base_url=url, timeout=60)
        client.post("/collections", json={"name": "crash", "model": "tiny"})
        client.post("/collections/crash/conditions", json={"instruction": SHAPE})
        stop = threading.Event()

        def add_until_killed() -> None:
            for start in range(0, len(images), 4):
                if stop.is_set():
                    return
                batch = [{"id": f"i{n}", "image": images[n]} for n in range(start, min(start + 4, len(images)))]
                try:
                    response = client.post("/collections/crash/items", json={"items": batch})
                except httpx.TransportError:
                    return
                if response.status_code == 201:
                    acknowledged.extend(item["id"] for item in batch)

        worker = threading.Thread(target=add_until_killed)
        worker.start()
        deadline = time.monotonic() + 60
        while len(acknowledged) < 40 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
        stop.set()
        worker.join(timeout=60)
    assert len(acknowledged) >= 40
    with running_gateway(model_repository, tmp_path / "second.log", data_dir=str(data_dir)) as url:
        client = httpx.Client(base_url=url, timeout=60)
        for item_id in acknowledged:
            assert client.get(f"/collections/crash/items/{item_id}").status_code == 200, item_id
        deadline = time.monotonic() + 120
        while client.get("/collections/crash/conditions").json()[0]["status"] != "ready":
            assert time.monotonic() < deadline
            time.sleep(0.2)
        info = client.get("/collections/crash").json()
        assert info["conditions"][0]["embedded"] == info["items"] >= len(acknowledged)
        for item_id in acknowledged[:10]:
            found = client.post("/search", json={"collection": "crash", "condition": SHAPE,
                                                 "query": {"item_id": item_id}, "k": 3})
            assert found.status_code == 200 and len(found.json()["results"]) == 3
