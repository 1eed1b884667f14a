"""`make test` plans its lanes on whether the demo needs training; a cached build is restored on the way."""

from __future__ import annotations

from pathlib import Path

import pytest

from focalserve_devtools.demo_ready import main
from focalserve_training import demo_cache
from focalserve_training.demo import MODEL


def ready(repository: Path, checkpoint: Path) -> int:
    with pytest.raises(SystemExit) as exit_status:
        main(["--repository", str(repository), "--checkpoint", str(checkpoint)])
    return int(exit_status.value.code or 0)


def test_the_demo_is_ready_when_built_or_cached_and_a_cached_one_is_restored(tmp_path, monkeypatch):
    monkeypatch.setenv("FOCALSERVE_CACHE_DIR", str(tmp_path / "cache"))
    built = tmp_path / "built"
    for role in ("image", "instruction", "text"):
        (built / f"demo_{role}" / "1").mkdir(parents=True)
        (built / f"demo_{role}" / "1" / "model.pt").write_bytes(role.encode())
    checkpoint = tmp_path / "latest.pt"
    checkpoint.write_bytes(b"checkpoint")

    clone = tmp_path / "clone"
    assert ready(clone / "repository", clone / "latest.pt") == 1  # must train: nothing built, nothing cached
    assert ready(built, clone / "latest.pt") == 0  # already built
    demo_cache.store(demo_cache.build_key("demo", MODEL), "demo", built, checkpoint)
    assert ready(clone / "repository", clone / "latest.pt") == 0
    assert (clone / "repository" / "demo_image" / "1" / "model.pt").read_bytes() == b"image"
    assert (clone / "latest.pt").read_bytes() == b"checkpoint"
