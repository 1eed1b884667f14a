"""What the project installs: only namespaced import packages, with their data files."""

from __future__ import annotations

from importlib.metadata import distribution
from importlib.resources import files

import pytest


@pytest.mark.parametrize("name", ["focalserve", "focalserve-client"])
def test_every_installed_import_package_is_namespaced(name):
    top_level = distribution(name).read_text("top_level.txt")
    assert top_level is not None
    names = top_level.split()
    assert names and all(package.startswith("focalserve_") for package in names), names


def test_the_gateway_and_training_packages_carry_their_data_files():
    assert files("focalserve_server").joinpath("ui", "index.html").is_file()
    assert files("focalserve_training").joinpath("templates", "model.py").is_file()
    assert any(path.name.endswith(".json") for path in files("focalserve_training").joinpath("model_configs").iterdir())
