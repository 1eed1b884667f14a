"""The demo families' parameters shipped in the repository: keyed by the code that trains them,
holding only what training changed, rebuilding the trained model exactly, and exported without
training."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from focalserve_family import families_from_configs, read_repository
from focalserve_training import demo, demo_weights
from focalserve_training.demo_recipe import MODEL
from focalserve_training.demo_weights import ShippedFamily, ShippedWeightsError
from focalserve_training.models.factory import state_hash
from tests.helpers.models import TINY

SHIPPED_NAMES = ("demo", "demo-readout")


def sources(root):
    package = root / "focalserve_training"
    (package / "data").mkdir(parents=True)
    (package / "loop.py").write_text("STEPS = 800\n")
    (package / "export.py").write_text("OPSET = 1\n")
    (package / "data" / "config.json").write_text('{"seed": 1}')
    (package / "notes.txt").write_text("not code")
    return (package,)


@pytest.mark.parametrize("name", SHIPPED_NAMES)
def test_the_shipped_parameters_were_trained_by_this_code(name):
    shipped = demo_weights.read_shipped_family(demo_weights.shipped_path(name))
    current = demo_weights.weights_key(name, MODEL)
    assert shipped.weights_key == current, (
        f"training/demo_weights/{name}.safetensors was trained by other code (key {shipped.weights_key}; this "
        f"code's is {current}): run `{demo_weights.REBUILD_COMMAND}` (~25 min on 2 cores) and commit "
        f"training/demo_weights/"
    )
    assert shipped.name == name and shipped.model_name == MODEL


def test_the_key_changes_with_the_code_the_family_and_the_base_config(tmp_path):
    roots = sources(tmp_path)
    key = demo_weights.weights_key("demo", "focalserve-minilm", roots)
    assert key == demo_weights.weights_key("demo", "focalserve-minilm", roots)
    assert key != demo_weights.weights_key("other", "focalserve-minilm", roots)
    assert key != demo_weights.weights_key("demo", "focalserve-tiny", roots)
    (roots[0] / "notes.txt").write_text("still not code")
    assert key == demo_weights.weights_key("demo", "focalserve-minilm", roots)
    (roots[0] / "loop.py").write_text("STEPS = 801\n")
    changed = demo_weights.weights_key("demo", "focalserve-minilm", roots)
    assert changed != key
    (roots[0] / "data" / "config.json").write_text('{"seed": 2}')
    assert demo_weights.weights_key("demo", "focalserve-minilm", roots) not in (key, changed)


def test_modules_that_only_read_the_weights_are_left_out_of_the_key(tmp_path):
    roots = sources(tmp_path)
    weights, build = demo_weights.weights_key("demo", "m", roots), demo_weights.build_key("demo", "m", roots)
    (roots[0] / "export.py").write_text("OPSET = 2\n")
    assert demo_weights.weights_key("demo", "m", roots) == weights
    assert demo_weights.build_key("demo", "m", roots) != build


def test_every_listed_weights_reader_exists():
    """A renamed reader would otherwise silently leave the exemption and stale the shipped files."""
    packages = {directory.name: directory for directory in demo_weights._package_dirs()}
    for package, relative in demo_weights.WEIGHTS_READERS:
        assert (packages[package] / relative).is_file(), f"{package}/{relative} is listed but does not exist"


def test_library_versions_are_part_of_the_key(monkeypatch):
    key = demo_weights.build_key("demo", "focalserve-minilm")
    monkeypatch.setattr(demo_weights, "_version", lambda distribution: "0.0-other")
    assert demo_weights.build_key("demo", "focalserve-minilm") != key


@pytest.fixture(scope="module")
def trained():
    """A tiny FocalLens model as training leaves it: its image tower and condition token moved."""
    model = demo_weights.untrained_model(TINY, "full")
    with torch.no_grad():
        model.clip.visual.conv1.weight.add_(0.25)
        model.condition_token.gates.add_(1.0)
    return model


def ship(model, path, key="k") -> ShippedFamily:
    return demo_weights.save_shipped(model, path.stem, TINY, key, path)


def test_a_shipped_file_holds_only_what_training_changed_and_rebuilds_the_model(trained, tmp_path):
    path = tmp_path / "probe.safetensors"
    family = ship(trained, path)
    with safe_open(str(path), framework="pt") as handle:
        assert set(handle.keys()) == {"clip.visual.conv1.weight", "condition_token.gates"}
    model, read = demo_weights.load_shipped(path)
    assert read == family
    assert state_hash(model) == state_hash(trained)
    assert not model.training


def test_a_shipped_file_that_does_not_rebuild_its_model_is_refused(trained, tmp_path):
    path = tmp_path / "probe.safetensors"
    ship(trained, path)
    tensors = load_file(str(path))
    tensors["condition_token.gates"] += 1  # as if the frozen weights it was trained on differed
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(ShippedWeightsError, match="does not rebuild the trained model.*make demo-weights"):
        demo_weights.load_shipped(path)
    save_file(tensors, str(path), metadata={"name": "probe"})
    with pytest.raises(ShippedWeightsError, match="records no model_name"):
        demo_weights.load_shipped(path)
    with pytest.raises(ShippedWeightsError, match="missing: `make demo-weights`"):
        demo_weights.load_shipped(tmp_path / "absent.safetensors")


def test_the_demo_command_exports_shipped_parameters_without_training(trained, tmp_path, monkeypatch, capsys):
    def no_training(*args, **kwargs):
        raise AssertionError("exporting shipped parameters must not train")

    monkeypatch.setattr(demo, "train_stages", no_training)
    family = ship(trained, tmp_path / "weights" / "demo.safetensors", key="trained-by-older-code")
    demo.main(["--shipped", "--name", "demo", "--weights-dir", str(tmp_path / "weights"),
               "--repository", str(tmp_path / "repo"), "--backend", "python"])
    exported = families_from_configs(read_repository(tmp_path / "repo"))["demo"]
    assert exported.checkpoint_hash == family.checkpoint_hash
    assert all((tmp_path / "repo" / spec.name / "1" / "model.py").is_file() for spec in exported.models.values())
    output = capsys.readouterr()
    assert '"checkpoint_hash"' in output.out
    assert "was trained by other code" in output.err and "make demo-weights" in output.err


def test_the_install_constraints_pin_every_library_in_the_key():
    """`make install` pins what computes the weights, so a new release never stales a fresh clone's key."""
    root = Path(__file__).resolve().parents[3]
    pinned = dict(line.split("==") for line in (root / "constraints.txt").read_text().splitlines()
                  if line and not line.startswith("#"))
    assert set(pinned) == set(demo_weights.PINNED_DISTRIBUTIONS)
    assert all(demo_weights._version(name) == version for name, version in pinned.items())
