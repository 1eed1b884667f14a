"""What the project installs: only namespaced import packages, with their data files."""

from __future__ import annotations

import tomllib
from importlib.metadata import distribution
from importlib.resources import files
from pathlib import Path

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


def test_the_image_copies_every_package_folder_the_distribution_finds():
    root = Path(__file__).resolve().parents[3]
    folders = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["where"]
    dockerfile = (root / "Dockerfile").read_text()
    assert all(f"COPY {folder}/ {folder}/" in dockerfile for folder in folders), folders
