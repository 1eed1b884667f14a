"""The conditions benchmark's tables from rows measured in part (`--no-raw`, `--no-gateway`)."""

from __future__ import annotations

from benchmarks import conditions

GATEWAY = {c: {"embed_p50_ms": [10.0, 20.0], "add_items_per_s": 1.0} for c in ("full", "readout")}


def test_a_gateway_only_row_makes_only_the_gateway_table():
    tables = conditions.tables([{"model": "m", "gateway": GATEWAY}], (1, 2))
    assert set(tables) == {"conditions_gateway"}
    assert "| m | full | 10.0 | 20.0 | 2 | 1 |" in tables["conditions_gateway"]


def test_a_raw_only_row_makes_only_the_raw_table():
    tables = conditions.tables([{"model": "m", "raw": {"full": [4.0, 8.0], "readout": [4.0, 5.0]}}], (1, 2))
    assert set(tables) == {"conditions_raw"}
