"""RESULTS.md's generated sections and the report helpers the benchmarks share."""

from __future__ import annotations

import math

import pytest

from benchmarks.__main__ import RESULTS_MD, replace_generated
from benchmarks.report import markdown_table, percentiles_ms

PAGE = "intro\n<!-- generated:serving -->\nold table\n<!-- /generated:serving -->\nprose that stays\n"


def test_a_generated_section_is_replaced_and_the_prose_around_it_kept():
    text = replace_generated(PAGE, "serving", "| new |")
    assert text == "intro\n<!-- generated:serving -->\n| new |\n<!-- /generated:serving -->\nprose that stays\n"
    assert replace_generated(text, "serving", "| newer |").count("<!-- generated:serving -->") == 1


def test_a_missing_section_is_an_error_not_a_silent_skip():
    with pytest.raises(KeyError, match="faiss_search"):
        replace_generated(PAGE, "faiss_search", "| x |")


def test_results_md_has_every_section_make_bench_writes():
    text = RESULTS_MD.read_text()
    for name in ("run", "serving", "raw", "variants", "faiss_run", "faiss_indexes", "faiss_search", "replication_run",
                 "replication_summary", "replication_scaling", "replication_lag", "replication_catchup"):
        replace_generated(text, name, "ok")


def test_markdown_table_and_percentiles():
    assert markdown_table(["a", "b"], [[1, 2.5], ["x", 1234.5]]) == "| a | b |\n|---|---|\n| 1 | 2.5 |\n| x | 1234.5 |"
    assert percentiles_ms([0.001] * 99 + [0.1]) == {"p50_ms": 1.0, "p95_ms": 1.0, "p99_ms": pytest.approx(1.99)}
    assert all(math.isnan(v) for v in percentiles_ms([]).values())
