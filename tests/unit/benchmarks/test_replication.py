"""The replication benchmark's accounting and report, without servers (the harness itself runs in
tests/integration/test_bench_replication_smoke.py)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from benchmarks.replication import (
    CpuMeter,
    Plan,
    catchup_table,
    descendants,
    lag_table,
    parse_args,
    plan_of,
    probe_body,
    process_table,
    scaling_table,
    start_order,
    summary,
    tables,
)

PLAN = Plan(replicas=3)
BURN = "import time\nend = time.process_time() + {seconds}\nwhile time.process_time() < end: pass\n"


def cell(replicas: int, workload: str, rate: float) -> dict:
    is_add = workload == "add"
    return {"replicas": replicas, "workload": workload, "clients": 3, "requests": 100, "errors": 0, "rate": rate,
            "p50_ms": 10.0, "p99_ms": 20.0, "mean_batch": 16.0 if workload != "search item_id" else None,
            "lock": {"samples": 50, "held_fraction": 0.5, "mean_waiting": 0.25} if is_add else None,
            "cores": {"loadgen": 0.1, "gateways": 1.0, "postgres": 0.3, "other": 0.05}}


def lag_side(p99_ms: float, not_visible: int = 0) -> dict:
    return {"writes": 50, "not_visible": not_visible, "p50_ms": 50.0, "p95_ms": 90.0, "p99_ms": p99_ms,
            "max_ms": p99_ms}


def start(ready_s: float, cpu_s: float) -> dict:
    return {"ready_s": ready_s, "gateway_cpu_s": cpu_s, "machine_cores": 1.5, "stop_s": 0.5}


PAYLOAD = {
    "scaling": [cell(1, "add", 100.0), cell(1, "search item_id", 200.0), cell(1, "search text", 150.0),
                cell(3, "add", 120.0), cell(3, "search item_id", 300.0), cell(3, "search text", 150.0)],
    "lock_hold": {"batch": 16, "p50_ms": 20.0, "bound_images_per_s": 800.0},
    "lag": {"poll_interval_s": 0.1, "probe_pause_ms": 5.0, "probe_search_p50_ms": 3.0,
            "passive": lag_side(120.0), "min_seq": lag_side(15.0)},
    "catchup": {"vectors": 100_000, "dim": 64, "tail_vectors": 1000, "head": 102_003, "snapshot_seq": 101_003,
                "write_vectors_per_s": 1200.0, "snapshot_bytes": 27_500_000,
                "starts": {"empty database": [start(9.0, 4.0), start(8.0, 3.5)],
                           "from nothing": [start(10.0, 5.5), start(12.0, 6.0)],
                           "from snapshot + tail": [start(8.5, 4.0), start(9.5, 4.5)]},
                "rebuild": {"read_vectors_s": 0.6, "faiss_add_s": 0.07, "vectors": 100_000},
                "replay": {"snapshot_load_s": 0.1, "read_tail_s": 0.07, "tail_changes": 1000}},
}


def test_the_scaling_table_gives_each_rate_against_one_replica():
    table = scaling_table(PAYLOAD["scaling"])
    assert "| 3 | add | 3 | 100 | 0 | 120.0 images/s | 1.20x |" in table
    assert "| 3 | search item_id | 3 | 100 | 0 | 300.0 QPS | 1.50x |" in table
    assert "| 50% | 0.25 |" in table  # the log lock, on add cells only
    assert table.count("\n") == 2 + len(PAYLOAD["scaling"]) - 1


def test_the_lag_table_judges_the_p99_target_and_counts_a_write_never_seen_as_a_miss():
    assert lag_table(PAYLOAD["lag"]).count("**yes**") == 2
    missed = {**PAYLOAD["lag"], "passive": lag_side(120.0, not_visible=1), "min_seq": lag_side(1500.0)}
    assert lag_table(missed).count("**no**") == 2


def test_the_catchup_table_compares_each_kinds_best_start_with_an_empty_databases_best():
    table = catchup_table(PAYLOAD["catchup"])
    assert "| from nothing | 100000 (then 1000 more) | - (rebuilt from the vectors table) | 10.0, 12.0 | 10.0 | 2 |" \
        in table
    assert "| from snapshot + tail | 101000 | 1000 changes | 8.5, 9.5 | 8.5 | 0.5 | 4 | 1.5 | 0.5 |" in table
    assert "| empty database | 0 | - | 9.0, 8.0 | 8 | 0 | 3.5 |" in table


def test_the_summary_states_ratios_the_lock_bound_and_the_lag_target():
    text = summary(PAYLOAD, PLAN)
    assert "100 images/s on one replica, 120 on 3 (1.20x)" in text
    assert "at most ~800 images/s" in text and "reached 15% of that" in text
    assert "80 ms per batch on one replica" in text  # held half the time at 100/16 batches a second
    assert "target p99 < 1 s: met" in text and "1000 changes of log tail" in text
    assert "+2.0 s and +0.5 s for the vectors (gateway CPU +2.0 s and +0.5 s)" in text


def test_tables_cover_only_the_parts_that_ran():
    assert set(tables(PAYLOAD, PLAN)) == {"replication_summary", "replication_scaling", "replication_lag",
                                          "replication_catchup"}
    only_catchup = tables({"catchup": PAYLOAD["catchup"]}, PLAN)
    assert set(only_catchup) == {"replication_summary", "replication_catchup"}
    assert only_catchup["replication_summary"].startswith("- **Catch-up**")


def test_arguments_map_onto_the_plan_and_one_replica_is_refused():
    args = parse_args(["--replicas", "2", "--seconds", "1.5", "--lag-writes", "3", "--catchup-vectors", "10"])
    plan = plan_of(args)
    assert (plan.replicas, plan.seconds, plan.lag_writes, plan.catchup_vectors) == (2, 1.5, 3, 10)
    assert plan.poll_interval_s == 0.1  # the gateway's default: the lag is measured as deployed
    with pytest.raises(SystemExit):
        parse_args(["--replicas", "1"])


def test_a_probe_search_filters_on_the_probe_and_carries_min_seq():
    body = probe_body("seed-0", "lag-3", 42)
    assert body["query"] == {"item_id": "seed-0"} and body["filter"] == {"probe": "lag-3"}
    assert body["min_seq"] == 42 and body["k"] == 1
    assert probe_body("seed-0", None, 0)["filter"] == {}


def test_the_cpu_meter_charges_this_process_to_the_load_generator():
    meter = CpuMeter({})
    meter.start()
    end = time.process_time() + 0.2
    while time.process_time() < end:
        pass
    cores = meter.stop()
    assert cores["loadgen"] > 0.2 and cores["other"] >= 0.0


def test_the_cpu_meter_charges_a_group_with_its_roots_descendants():
    """A shell (the root) that waits on a python burning a core: the python's CPU is the group's."""
    root = subprocess.Popen(["sh", "-c", f'"{sys.executable}" -c "$0"; true', BURN.format(seconds=3.0)])
    try:
        deadline = time.monotonic() + 20
        while len(descendants(process_table(), [root.pid])) < 2:  # until the python has started
            assert time.monotonic() < deadline, "the burner never started"
            time.sleep(0.05)
        meter = CpuMeter({"tree": [root.pid]})
        meter.start()
        time.sleep(0.4)
        cores = meter.stop()
    finally:
        root.kill()
        root.wait(timeout=30)
    assert cores["tree"] > 0.15  # burning while the shell and this process slept
    assert cores["loadgen"] < cores["tree"]


def test_starts_come_in_rounds_of_alternating_order_after_the_first_from_nothing():
    assert start_order(1) == ["from snapshot + tail", "empty database"]
    assert start_order(2) == ["from snapshot + tail", "empty database", "empty database", "from nothing",
                              "from snapshot + tail"]
    assert all(start_order(3).count(kind) == 3 - (kind == "from nothing") for kind in set(start_order(3)))
