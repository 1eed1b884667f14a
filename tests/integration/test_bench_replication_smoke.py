"""The replication benchmark's harness end to end at a tiny scale: every part measures, nothing errs.

Numbers are not checked (they live in benchmarks/RESULTS.md); this keeps the harness from rotting:
a real PostgreSQL, two real replicas and one, the lag probes and the three catch-up starts.
"""

from __future__ import annotations

import json

import pytest

import benchmarks.report
from benchmarks import replication

ARGV = ["--replicas", "2", "--seconds", "0.5", "--warmup", "2", "--lock-probes", "2", "--lag-writes", "3",
        "--catchup-vectors", "600", "--tail-vectors", "50", "--write-batch", "200", "--start-rounds", "1"]


@pytest.mark.slow
def test_the_replication_benchmark_measures_every_part_without_errors(tmp_path, monkeypatch, demo_repository):
    monkeypatch.setattr(benchmarks.report, "RESULTS_DIR", tmp_path)
    monkeypatch.setattr(replication, "WORK_DIR", tmp_path / "work")
    payload = replication.main([*ARGV, "--repository", str(demo_repository)])

    assert [(row["replicas"], row["workload"]) for row in payload["scaling"]] == [
        (replicas, workload) for replicas in (1, 2) for workload in ("add", "search item_id", "search text")]
    for row in payload["scaling"]:
        assert row["errors"] == 0 and row["requests"] > 0 and row["rate"] > 0, row
        assert row["cores"]["gateways"] > 0, row
    assert all(row["lock"]["samples"] > 0 for row in payload["scaling"] if row["workload"] == "add")
    for side in ("passive", "min_seq"):
        assert payload["lag"][side]["writes"] == 3 and payload["lag"][side]["not_visible"] == 0
    catchup = payload["catchup"]
    assert {kind: len(runs) for kind, runs in catchup["starts"].items()} == {
        "empty database": 1, "from nothing": 1, "from snapshot + tail": 1}
    assert catchup["rebuild"]["vectors"] == 600 and catchup["replay"]["tail_changes"] == 50
    saved = json.loads((tmp_path / "replication.json").read_text())
    assert set(saved["tables"]) == {"replication_summary", "replication_scaling", "replication_lag",
                                    "replication_catchup"}
