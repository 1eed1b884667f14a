"""The serving benchmark's harness end to end at a tiny scale: it must measure, not count errors.

Numbers are not checked (performance lives in benchmarks/RESULTS.md); this only keeps the
harness from rotting: real gateway, real naive server, every request answered.
"""

from __future__ import annotations

import asyncio
import json

import benchmarks.report
from benchmarks import access, compaction, fronts, ingest, serving, soak


def test_the_serving_benchmark_measures_every_system_without_errors(tmp_path, monkeypatch, demo_repository):
    monkeypatch.setattr(benchmarks.report, "RESULTS_DIR", tmp_path)
    monkeypatch.setattr(serving, "FIGURES_DIR", tmp_path)
    args = serving.parse_args(["--models", "demo", "--systems", "raw", "gateway-embedded", "naive",
                               "--concurrency", "2", "--seconds", "0.5", "--max-requests", "40"])
    payload = asyncio.run(serving.run(args))

    rows = payload["measurements"]
    assert {(row["system"], row["variant"]) for row in rows} >= {("gateway-embedded", None), ("naive", None)}
    assert len(rows) == 2 + len(serving.VARIANTS)  # the gateway's request variants ran too
    for row in rows:
        assert row["errors"] == 0 and row["requests"] > 0, row
    assert payload["families"]["demo"]["raw"]["images_per_s"] > 0
    assert (tmp_path / "serving.json").is_file() and (tmp_path / "serving_throughput.png").is_file()


def test_the_fronts_benchmark_measures_workers_without_errors(demo_repository):
    """Two workers, a few requests: every load (single images, 64-image requests, one at a time) answered."""
    result = fronts.main(["--workers", "2", "--seconds", "1", "--concurrency", "4"])
    (row,) = result["gateways"]
    assert row["errors"] == 0 and row["requests"] > 0, row
    assert row["batched_images_per_s"] > 0 and row["mean_batch_size"] >= 1
    assert row["gateway_cpu_ms_per_request"] > 0 and row["loadgen_cpu_ms_per_request"] > 0
    assert "| 2 |" in result["tables"]["fronts"] and row["batched_front_cpu_ms_per_image"] is not None


def test_the_ingest_benchmark_measures_all_four_paths(demo_repository, tmp_path):
    """64 images, one block per store: the HTTP add path, the ingest, the ceiling and the bulk write
    each measured (every image stored, every vector written), with the table and the ratios."""
    result = ingest.main(["--images", "64", "--write-items", "1024", "--timeout-s", "120",
                          "--repository", str(demo_repository), "--json", str(tmp_path / "ingest.json")])

    assert result["http"]["images"] == 64 and result["http"]["images_per_s"] > 0
    assert result["ingest"]["images"] == 64 and result["ingest"]["images_per_s"] > 0
    assert result["ingest"]["startup_s"] > 0
    assert result["ceiling"]["images"] == 64 and result["ceiling"]["images_per_s"] > 0
    for kind in ("postgres", "sqlite"):
        written = result["writes"][kind]
        assert written["vectors"] == 2 * 1024 and written["vectors_per_s"] > 0, written
    assert set(result["ratios"]) >= {"ingest_vs_http", "ingest_vs_ceiling"}
    table = result["tables"]["ingest"]
    for row in ("`focalserve index add`", "`focalserve ingest`", "ceiling:", "| postgres | 2048 vectors",
                "| sqlite | 2048 vectors", "ingest / HTTP", "ingest / ceiling"):
        assert row in table, row
    assert json.loads((tmp_path / "ingest.json").read_text())["ingest"]["images"] == 64


def test_the_ingest_benchmark_without_ray_measures_the_ceiling_and_says_what_it_skipped(demo_repository, monkeypatch):
    """As on the GPU machine, where Ray cannot travel: the ingest and HTTP parts are skipped with a line
    saying why, the ceiling runs on photo-like JPEGs
    under generated conditions, decoded on two threads ahead of the model."""
    monkeypatch.setattr(ingest, "ray_missing", lambda: "ModuleNotFoundError: No module named 'ray'")
    result = ingest.main(["--images", "70", "--parts", "ceiling", "ingest", "http", "--conditions", "3",
                          "--image-kind", "photo", "--image-size", "96", "--prepare-threads", "2",
                          "--repository", str(demo_repository)])

    assert set(result["skipped"]) == {"ingest", "http"} and "ingest" not in result and "http" not in result
    ceiling = result["ceiling"]
    assert ceiling["images"] == 70 and ceiling["conditions"] == 3 and ceiling["embed_images_per_s"] > 0
    table = result["tables"]["ingest"]
    assert "ceiling:" in table and "3 conditions" in table and "Skipped: ingest: needs Ray" in table


def test_the_access_benchmark_measures_open_keyed_and_limited_gateways(demo_repository):
    result = access.main(["--seconds", "0.5", "--rounds", "1", "--concurrency", "2"])
    assert [row["config"] for row in result["rows"]] == ["open", "key", "key + limits"]
    assert all(row["requests"] > 0 and row["errors"] == 0 for row in result["rows"])
    assert 0 < result["leases"] < result["rows"][-1]["requests"]
    assert "| key + limits |" in result["tables"]["access"]


def test_the_soak_run_samples_two_gateways_and_loses_nothing(demo_repository, tmp_path):
    """The soak's smoke form: seconds, not minutes; what a short run can judge is judged."""
    result = soak.main(["--minutes", "0.2", "--sample-s", "4", "--plot", str(tmp_path / "soak.png")])
    assert len(result["samples"]) >= 3 and all(s["requests"] > 0 for s in result["samples"])
    assert result["verdict"]["server_errors"]["met"] and result["verdict"]["acknowledged_missing"]["met"]
    assert "| search p99 ms |" in result["tables"]["soak"] and (tmp_path / "soak.png").stat().st_size > 0


def test_the_compaction_benchmark_bounds_the_log_and_every_gateway_keeps_every_vector(demo_repository, tmp_path):
    """The million-write run's smoke form: a few thousand writes, past one heartbeat's compaction (on
    the full-conditioning demo family: the one `make test` exports)."""
    result = compaction.main(["--family", "demo", "--writes", "6000", "--conditions", "4", "--batch", "32",
                              "--plot", str(tmp_path / "compaction.png")])
    assert result["failed"] == {} and result["indexed_everywhere"]
    assert result["final"]["compacted_through"] > 0 and result["final"]["rows"] < result["writes"]
    assert "| log rows, max over the run |" in result["tables"]["compaction"]
