"""The per-machine cache of trained demo checkpoints: keyed by what determines the weights, never
half-written, and exported again by the clone that restores them."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from focalserve_family import families_from_configs, read_repository
from focalserve_training import demo_cache
from focalserve_training.models.factory import state_hash
from tests.helpers.models import TINY, tiny_focallens


@pytest.fixture(autouse=True)
def cache_in(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("FOCALSERVE_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def trained_checkpoint(root: Path, content: bytes = b"checkpoint") -> Path:
    checkpoint = root / "run" / "latest.pt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(content)
    return checkpoint


def sources(root: Path) -> tuple[Path, ...]:
    package = root / "focalserve_training"
    (package / "data").mkdir(parents=True)
    (package / "loop.py").write_text("STEPS = 800\n")
    (package / "export.py").write_text("OPSET = 1\n")
    (package / "data" / "config.json").write_text('{"seed": 1}')
    (package / "notes.txt").write_text("not code")
    return (package,)


def test_the_weights_key_follows_code_configs_and_name(tmp_path):
    roots = sources(tmp_path)
    key = demo_cache.weights_key("demo", "focalserve-minilm", roots)
    assert key == demo_cache.weights_key("demo", "focalserve-minilm", roots)
    assert key != demo_cache.weights_key("other", "focalserve-minilm", roots)
    assert key != demo_cache.weights_key("demo", "focalserve-tiny", roots)
    (roots[0] / "notes.txt").write_text("edited")
    assert key == demo_cache.weights_key("demo", "focalserve-minilm", roots)  # not code: same build
    (roots[0] / "data" / "config.json").write_text('{"seed": 2}')
    changed = demo_cache.weights_key("demo", "focalserve-minilm", roots)
    assert changed != key
    (roots[0] / "loop.py").write_text("STEPS = 801\n")
    assert demo_cache.weights_key("demo", "focalserve-minilm", roots) not in (key, changed)


def test_code_that_only_reads_the_weights_changes_the_build_key_but_not_the_weights_key(tmp_path):
    roots = sources(tmp_path)
    weights, build = (demo_cache.weights_key("demo", "m", roots), demo_cache.build_key("demo", "m", roots))
    (roots[0] / "export.py").write_text("OPSET = 2\n")
    assert demo_cache.weights_key("demo", "m", roots) == weights
    assert demo_cache.build_key("demo", "m", roots) != build


def test_every_module_left_out_of_the_weights_key_exists():
    packages = {directory.name: directory for directory in demo_cache._package_dirs()}
    for package, relative in demo_cache.WEIGHTS_READERS:
        assert (packages[package] / relative).is_file(), (package, relative)


def test_the_key_covers_the_installed_packages_and_library_versions(monkeypatch):
    key = demo_cache.build_key("demo", "focalserve-minilm")
    monkeypatch.setattr(demo_cache, "_version", lambda distribution: "0.0-other")
    assert demo_cache.build_key("demo", "focalserve-minilm") != key


def test_a_stored_checkpoint_restores_into_a_fresh_clone(tmp_path):
    checkpoint = trained_checkpoint(tmp_path / "first")
    assert not demo_cache.restore("k1", tmp_path / "second" / "ckpt.pt")
    demo_cache.store("k1", checkpoint)
    assert demo_cache.restore("k1", tmp_path / "second" / "runs" / "latest.pt")
    assert (tmp_path / "second" / "runs" / "latest.pt").read_bytes() == b"checkpoint"


def test_restore_replaces_a_stale_checkpoint(tmp_path):
    demo_cache.store("k1", trained_checkpoint(tmp_path / "first"))
    stale = trained_checkpoint(tmp_path / "stale", content=b"old")
    assert demo_cache.restore("k1", stale)
    assert stale.read_bytes() == b"checkpoint"


def test_concurrent_stores_leave_one_whole_entry_and_no_staging(tmp_path, cache_in):
    checkpoint = trained_checkpoint(tmp_path / "first")
    threads = [threading.Thread(target=demo_cache.store, args=("k1", checkpoint)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [p.name for p in (cache_in / "demo").iterdir()] == ["k1"]
    assert (cache_in / "demo" / "k1" / demo_cache.CHECKPOINT).read_bytes() == b"checkpoint"


def test_only_the_newest_builds_are_kept(tmp_path, cache_in):
    checkpoint = trained_checkpoint(tmp_path / "first")
    for index in range(demo_cache.KEPT_ENTRIES + 2):
        demo_cache.store(f"k{index}", checkpoint)
    kept = sorted(p.name for p in (cache_in / "demo").iterdir())
    assert kept == [f"k{index}" for index in range(2, demo_cache.KEPT_ENTRIES + 2)]


def test_the_cache_lives_where_the_environment_says(monkeypatch, tmp_path):
    monkeypatch.delenv("FOCALSERVE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert demo_cache.cache_dir() == tmp_path / "xdg" / "focalserve"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert demo_cache.cache_dir() == tmp_path / "home" / ".cache" / "focalserve"


def test_the_demo_build_exports_a_cached_checkpoint_instead_of_training(tmp_path, monkeypatch, capsys):
    from focalserve_training import demo

    monkeypatch.setattr(demo, "MODEL", TINY)  # the same path as the demo's MiniLM model, traced in seconds
    model = tiny_focallens()
    checkpoint = tmp_path / "built" / "latest.pt"
    checkpoint.parent.mkdir()
    torch.save({"state_dict": model.state_dict()}, checkpoint)
    demo_cache.store(demo_cache.weights_key("demo", TINY), checkpoint)

    def no_training(*args, **kwargs):
        raise AssertionError("a cached build must not retrain")

    monkeypatch.setattr(demo, "train_family", no_training)
    clone = tmp_path / "clone"
    demo.main(["--family-only", "--repository", str(clone / "repo"), "--work-dir", str(clone / "runs")])
    family = families_from_configs(read_repository(clone / "repo"))["demo"]
    assert family.checkpoint_hash == state_hash(model)  # exported here, from the cached weights
    assert all((clone / "repo" / spec.name / "1" / "model.pt").is_file() for spec in family.models.values())
    assert (clone / "runs" / "focallens" / "checkpoints" / "latest.pt").read_bytes() == checkpoint.read_bytes()
    assert '"from_cache"' in capsys.readouterr().out
    with pytest.raises(AssertionError, match="must not retrain"):  # --force always trains
        demo.main(["--family-only", "--force", "--repository", str(clone / "repo"), "--work-dir", str(clone / "w")])
