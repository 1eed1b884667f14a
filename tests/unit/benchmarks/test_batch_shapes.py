"""The batch-shape benchmark times every size in both executor modes on a real exported family."""

from __future__ import annotations

import torch

from benchmarks.batch_shapes import MODES, shape_costs, table
from benchmarks.workload import Workload


def test_every_size_is_timed_in_both_modes_and_the_executor_mode_is_restored(model_repository):
    rows = shape_costs(model_repository, "tiny", "cpu", "float32", Workload.colorshape(count=2), sizes=(1, 3))

    assert [(row["mode"], row["batch_size"]) for row in rows] == [(mode, size) for mode in MODES for size in (1, 3)]
    assert all(row["first_ms"] > 0 and row["second_ms"] > 0 and row["steady_ms"] > 0 for row in rows)
    assert torch._C._get_graph_executor_optimize()
    assert table(rows).count("\n") == len(rows) + 1
