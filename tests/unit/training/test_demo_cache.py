"""The per-machine cache of built demo families: keyed by what determines them, never half-written."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from focalserve_training import demo_cache


@pytest.fixture(autouse=True)
def cache_in(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("FOCALSERVE_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def built_family(root: Path, name: str = "demo", weights: bytes = b"weights") -> tuple[Path, Path]:
    repository = root / "repository"
    for role in ("image", "instruction", "text"):
        (repository / f"{name}_{role}" / "1").mkdir(parents=True)
        (repository / f"{name}_{role}" / "1" / "model.pt").write_bytes(weights + role.encode())
        (repository / f"{name}_{role}" / "config.pbtxt").write_text(f'name: "{name}_{role}"')
    (repository / "other_image").mkdir()  # another family: not part of this entry
    checkpoint = root / "run" / "latest.pt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"checkpoint")
    return repository, checkpoint


def sources(root: Path) -> tuple[Path, ...]:
    package = root / "package"
    (package / "data").mkdir(parents=True)
    (package / "loop.py").write_text("STEPS = 800\n")
    (package / "data" / "config.json").write_text('{"seed": 1}')
    (package / "notes.txt").write_text("not code")
    return (package,)


def test_the_key_follows_code_configs_and_name(tmp_path):
    roots = sources(tmp_path)
    key = demo_cache.build_key("demo", "focalserve-minilm", roots)
    assert key == demo_cache.build_key("demo", "focalserve-minilm", roots)
    assert key != demo_cache.build_key("other", "focalserve-minilm", roots)
    assert key != demo_cache.build_key("demo", "focalserve-tiny", roots)
    (roots[0] / "notes.txt").write_text("edited")
    assert key == demo_cache.build_key("demo", "focalserve-minilm", roots)  # not code: same build
    (roots[0] / "data" / "config.json").write_text('{"seed": 2}')
    changed = demo_cache.build_key("demo", "focalserve-minilm", roots)
    assert changed != key
    (roots[0] / "loop.py").write_text("STEPS = 801\n")
    assert demo_cache.build_key("demo", "focalserve-minilm", roots) not in (key, changed)


def test_the_key_covers_the_installed_packages_and_library_versions(monkeypatch):
    key = demo_cache.build_key("demo", "focalserve-minilm")
    monkeypatch.setattr(demo_cache, "_version", lambda distribution: "0.0-other")
    assert demo_cache.build_key("demo", "focalserve-minilm") != key


def test_a_stored_build_restores_into_a_fresh_clone(tmp_path):
    repository, checkpoint = built_family(tmp_path / "first")
    assert not demo_cache.restore("k1", "demo", tmp_path / "second" / "repo", tmp_path / "second" / "ckpt.pt")
    demo_cache.store("k1", "demo", repository, checkpoint)
    clone = tmp_path / "second"
    assert demo_cache.restore("k1", "demo", clone / "repo", clone / "runs" / "latest.pt")
    assert sorted(p.name for p in (clone / "repo").iterdir()) == ["demo_image", "demo_instruction", "demo_text"]
    assert (clone / "repo" / "demo_text" / "1" / "model.pt").read_bytes() == b"weightstext"
    assert (clone / "runs" / "latest.pt").read_bytes() == b"checkpoint"


def test_restore_replaces_a_stale_family_of_the_same_name(tmp_path):
    repository, checkpoint = built_family(tmp_path / "first")
    demo_cache.store("k1", "demo", repository, checkpoint)
    stale, _ = built_family(tmp_path / "stale", weights=b"old")
    demo_cache.restore("k1", "demo", stale, tmp_path / "ckpt.pt")
    assert (stale / "demo_image" / "1" / "model.pt").read_bytes() == b"weightsimage"
    assert (stale / "other_image").is_dir()


def test_concurrent_stores_leave_one_whole_entry_and_no_staging(tmp_path, cache_in):
    repository, checkpoint = built_family(tmp_path / "first")
    threads = [threading.Thread(target=demo_cache.store, args=("k1", "demo", repository, checkpoint)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [p.name for p in (cache_in / "demo").iterdir()] == ["k1"]
    assert (cache_in / "demo" / "k1" / demo_cache.CHECKPOINT).read_bytes() == b"checkpoint"


def test_only_the_newest_builds_are_kept(tmp_path, cache_in):
    repository, checkpoint = built_family(tmp_path / "first")
    for index in range(demo_cache.KEPT_ENTRIES + 2):
        demo_cache.store(f"k{index}", "demo", repository, checkpoint)
    kept = sorted(p.name for p in (cache_in / "demo").iterdir())
    assert kept == [f"k{index}" for index in range(2, demo_cache.KEPT_ENTRIES + 2)]


def test_the_cache_lives_where_the_environment_says(monkeypatch, tmp_path):
    monkeypatch.delenv("FOCALSERVE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert demo_cache.cache_dir() == tmp_path / "xdg" / "focalserve"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert demo_cache.cache_dir() == tmp_path / "home" / ".cache" / "focalserve"


def test_the_demo_build_restores_a_cached_family_instead_of_training(tmp_path, monkeypatch, capsys):
    from focalserve_training import demo

    repository, checkpoint = built_family(tmp_path / "built")
    demo_cache.store(demo_cache.build_key("demo", demo.MODEL), "demo", repository, checkpoint)

    def no_training(*args, **kwargs):
        raise AssertionError("a cached build must not retrain")

    monkeypatch.setattr(demo, "train_family", no_training)
    clone = tmp_path / "clone"
    demo.main(["--family-only", "--repository", str(clone / "repo"), "--work-dir", str(clone / "runs")])
    assert (clone / "repo" / "demo_image" / "1" / "model.pt").is_file()
    assert (clone / "runs" / "focallens" / "checkpoints" / "latest.pt").read_bytes() == b"checkpoint"
    assert '"from_cache"' in capsys.readouterr().out
    with pytest.raises(AssertionError, match="must not retrain"):  # --force always trains
        demo.main(["--family-only", "--force", "--repository", str(clone / "repo"), "--work-dir", str(clone / "w")])
