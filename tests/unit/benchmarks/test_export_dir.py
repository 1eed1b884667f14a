"""The benchmarks' exports are keyed like the demo cache, so code that traces differently gets fresh ones."""

from __future__ import annotations

from pathlib import Path

from benchmarks.families import export_dir
from focalserve_training.demo_weights import build_key


def test_an_export_lives_under_the_key_of_the_code_and_libraries_that_traced_it(tmp_path: Path):
    directory = export_dir(tmp_path, "vitb32", "ViT-B-32")
    assert directory == tmp_path / "vitb32" / build_key("vitb32", "ViT-B-32")
    assert export_dir(tmp_path, "vitl14-336", "ViT-L-14-336").parent.name == "vitl14-336"
