"""Evaluation: mAP by hand, the metrics each family gets, and the JSON + PNG report."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from focalserve_training.evaluate import (
    Encoder,
    evaluate,
    evaluation_phrasings,
    mean_average_precision,
    meets_target,
    write_report,
)
from tests.helpers.models import TINY, tiny_clip, tiny_focallens

N_IMAGES, N_SCENES = 30, 20
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def clip_results():
    return evaluate(Encoder(tiny_clip(), TINY), n_images=N_IMAGES, n_scenes=N_SCENES)


@pytest.fixture(scope="module")
def focallens_results():
    focallens, baseline = Encoder(tiny_focallens(), TINY), Encoder(tiny_clip(), TINY)
    return evaluate(focallens, baseline, n_images=N_IMAGES, n_scenes=N_SCENES)


# Unit vectors on a quarter circle; similarities 0-1 .8, 0-2 .6, 0-3 0, 1-2 .96, 1-3 .6, 2-3 .8.
POINTS = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [0.0, 1.0]], dtype=torch.float64)


def test_mean_average_precision_matches_a_hand_computed_example():
    # Query 0 (a): 1 b, 2 a, 3 b -> AP 1/2.   Query 1 (b): 2 a, 0 a, 3 b -> AP 1/3.
    # Query 2 (a): 1 b, 3 b, 0 a -> AP 1/3.   Query 3 (b): 2 a, 1 b, 0 a -> AP 1/2.
    assert mean_average_precision(POINTS, ["a", "b", "a", "b"]) == pytest.approx(5 / 12)


def test_mean_average_precision_averages_precision_at_each_hit_and_skips_queries_without_one():
    # Query 0: 1 a, 2 a, 3 b -> (1/1 + 2/2) / 2 = 1.   Query 1: 2 a, 0 a, 3 b -> 1.
    # Query 2: 1 a, 3 b, 0 a -> (1/1 + 2/3) / 2 = 5/6.   Query 3: no other b, so skipped.
    assert mean_average_precision(POINTS, ["a", "a", "a", "b"]) == pytest.approx(
        (1 + 1 + 5 / 6) / 3
    )


def test_mean_average_precision_is_one_when_same_labels_rank_first():
    clusters = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    assert (
        mean_average_precision(torch.nn.functional.normalize(clusters, dim=1), ["a", "a", "b", "b"])
        == 1.0
    )


def _assert_unit_interval(value) -> None:
    assert isinstance(value, float) and 0.0 <= value <= 1.0, value


def test_clip_models_get_unconditional_retrieval_compositionality_and_zero_shot(clip_results):
    assert set(clip_results) == {"retrieval_map", "compositionality_accuracy", "zero_shot_accuracy"}
    assert set(clip_results["retrieval_map"]) == {"colour", "shape"}
    for row in clip_results["retrieval_map"].values():
        assert set(row) == {"unconditional"}
        _assert_unit_interval(row["unconditional"])
    _assert_unit_interval(clip_results["compositionality_accuracy"])
    _assert_unit_interval(clip_results["zero_shot_accuracy"])
    # accuracies are shares of whole items
    assert (clip_results["compositionality_accuracy"] * N_SCENES) == pytest.approx(
        round(clip_results["compositionality_accuracy"] * N_SCENES)
    )
    assert (clip_results["zero_shot_accuracy"] * N_IMAGES) == pytest.approx(
        round(clip_results["zero_shot_accuracy"] * N_IMAGES)
    )


def test_focallens_gets_conditional_and_baseline_unconditional_retrieval_only(
    focallens_results, clip_results
):
    assert set(focallens_results) == {"retrieval_map", "phrasing_map"}
    assert set(focallens_results["retrieval_map"]) == {"colour", "shape"}
    for condition, row in focallens_results["retrieval_map"].items():
        # "conditional" plus, possibly, variants of it (e.g. per set of phrasings)
        assert {"unconditional", "conditional"} <= set(row)
        assert all(kind == "unconditional" or kind.startswith("conditional") for kind in row)
        for value in row.values():
            _assert_unit_interval(value)
        # the unconditional row comes from the baseline (the same tiny CLIP as clip_results)
        assert row["unconditional"] == clip_results["retrieval_map"][condition]["unconditional"]


def test_focallens_is_scored_under_each_phrasing_for_both_attributes(focallens_results):
    phrasings = evaluation_phrasings()
    scores = focallens_results["phrasing_map"]
    assert set(scores) == {"trained", "held_out"}
    for kind, conditions in phrasings.items():
        for condition, texts in conditions.items():
            assert set(scores[kind][condition]) == set(texts)
            for row in scores[kind][condition].values():
                assert set(row) == {"colour", "shape"}
                _assert_unit_interval(row["colour"])
            averaged = focallens_results["retrieval_map"][condition]
            key = "conditional" if kind == "trained" else "conditional_heldout_phrasing"
            mean = np.mean([row[condition] for row in scores[kind][condition].values()])
            assert averaged[key] == pytest.approx(mean)


def test_the_target_asks_for_the_attribute_and_a_lead_over_the_other():
    assert meets_target("colour", {"colour": 0.90, "shape": 0.70})
    assert not meets_target("colour", {"colour": 0.84, "shape": 0.30})  # below 0.85
    assert not meets_target("shape", {"colour": 0.80, "shape": 0.90})  # leads by 0.10 only


def test_evaluation_is_deterministic(clip_results):
    again = evaluate(Encoder(tiny_clip(), TINY), n_images=N_IMAGES, n_scenes=N_SCENES)
    assert again == clip_results


def test_write_report_writes_the_results_as_json_and_a_png_plot(
    tmp_path, clip_results, focallens_results
):
    results = {"clip": clip_results, "focallens": focallens_results}
    json_path, plot_path = write_report(results, tmp_path / "report")
    assert json_path == tmp_path / "report" / "results.json"
    assert json.loads(json_path.read_text()) == results
    assert plot_path.read_bytes()[:8] == PNG_SIGNATURE
    assert plot_path.stat().st_size > 1000
