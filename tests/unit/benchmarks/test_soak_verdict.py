"""The soak's verdict: a pool that fills to its cap is not growth, a leak is."""

from __future__ import annotations

from benchmarks.soak import verdict


def samples(threads: list[int]) -> list[dict]:
    return [{"rss_mb": 100.0, "open_files": 40, "threads": count, "db_connections": 12, "search_p99_ms": 500.0,
             "log_rows": 10} for count in threads]


def test_threads_that_come_and_go_below_a_cap_are_not_growth():
    # warm-up (the first fifth), then a pool at its cap with passing peaks in both thirds
    judged = verdict(samples([24, 28, 30, 28, 30, 28, 29, 28, 30, 28, 28, 30, 28, 29, 28]), 0, 0)
    assert judged["threads_peak_growth"] == {"value": 0, "met": True}


def test_threads_that_keep_rising_are_growth():
    judged = verdict(samples([24, 28, 28, 29, 29, 30, 30, 31, 31, 32, 32, 33, 33, 34, 34]), 0, 0)
    assert judged["threads_peak_growth"]["value"] > 0 and not judged["threads_peak_growth"]["met"]
