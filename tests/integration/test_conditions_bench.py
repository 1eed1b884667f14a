"""The many-conditions benchmark's harness at a tiny scale: both conditionings, raw and through a gateway.

Numbers are not checked (they live in benchmarks/RESULTS.md); this keeps the harness from rotting.
"""

from __future__ import annotations

import benchmarks.report
from benchmarks import conditions


def test_the_conditions_benchmark_measures_both_conditionings(tmp_path, monkeypatch):
    monkeypatch.setattr(benchmarks.report, "RESULTS_DIR", tmp_path)
    monkeypatch.setattr(conditions, "WORK_DIR", tmp_path / "work")
    monkeypatch.setattr(conditions, "GEOMETRIES", {"tiny": "focalserve-tiny"})
    monkeypatch.setattr(conditions, "ADD_ITEMS", 4)
    payload = conditions.main(["--models", "tiny", "--counts", "1", "3", "--seconds", "0.2"])

    [row] = payload["rows"]
    for conditioning in ("full", "readout"):
        assert len(row["raw"][conditioning]) == 2 and min(row["raw"][conditioning]) > 0
        assert len(row["gateway"][conditioning]["embed_p50_ms"]) == 2
        assert row["gateway"][conditioning]["add_items_per_s"] > 0
    assert "K=3 / K=1" in payload["tables"]["conditions_raw"]
    assert (tmp_path / "conditions.json").is_file()
