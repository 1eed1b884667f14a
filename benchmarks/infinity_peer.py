"""infinity-emb as system (f): the server users of CLIP embeddings pick, on a CLIP of the family's image geometry.

infinity-emb pins its own transformers, sentence-transformers and numpy<2, so it lives in its own
virtual environment (`.venv-infinity`, made by `make bench` from benchmarks/infinity-requirements.txt)
and never shares ours. Its model is built there by `benchmarks/infinity_model.py` from the family's
open_clip vision config, once per family and geometry, under benchmarks/.work/NAME/infinity. It
answers unconditional image embeddings: the peer is what a user without FocalServe would run.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import open_clip
from open_clip.tokenizer import default_bpe

from benchmarks.families import ROOT, WORK_DIR, BenchFamily
from focalserve_training.models import register_model_configs

INFINITY_VENV = ROOT / ".venv-infinity"
BUILDER = Path(__file__).resolve().parent / "infinity_model.py"
GEOMETRY_FILE = "focalserve-geometry.json"  # what the saved model was built from; a different one rebuilds it
# No hub, no telemetry: the model is a local directory and nothing leaves the machine.
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "DO_NOT_TRACK": "1",
               "INFINITY_ANONYMOUS_USAGE_STATS": "0"}


def infinity_python() -> Path:
    python = INFINITY_VENV / "bin" / "python"
    if not python.is_file():
        raise RuntimeError(f"{INFINITY_VENV} is missing: `make bench` creates it")
    return python


def geometry(family: BenchFamily) -> dict:
    """The family's image geometry as open_clip configures it: vision config and embedding width."""
    register_model_configs()
    config = open_clip.get_model_config(family.spec.open_clip_model)
    if config is None:
        raise KeyError(f"open_clip has no config {family.spec.open_clip_model!r}")
    return {"vision_cfg": config["vision_cfg"], "embed_dim": config["embed_dim"]}


def prepare_model(family: BenchFamily, work_dir: Path = WORK_DIR) -> Path:
    """The peer's model directory for `family`, built in infinity-emb's environment unless already there."""
    directory = work_dir / family.name / "infinity"
    wanted = geometry(family)
    marker = directory / GEOMETRY_FILE
    if marker.is_file() and json.loads(marker.read_text()) == wanted:
        return directory
    command = [str(infinity_python()), str(BUILDER), "--vision-config", json.dumps(wanted["vision_cfg"]),
               "--embed-dim", str(wanted["embed_dim"]), "--bpe", default_bpe(), "--out", str(directory)]
    subprocess.run(command, check=True, env={**os.environ, **OFFLINE_ENV}, capture_output=True)
    marker.write_text(json.dumps(wanted))
    return directory


def server_command(model_dir: Path, name: str, port: int, max_batch_size: int) -> list[str]:
    """infinity-emb's own CLI on 127.0.0.1, torch engine on the CPU, batches as large as the gateway's."""
    return [str(INFINITY_VENV / "bin" / "infinity_emb"), "v2", "--model-id", str(model_dir), "--served-model-name",
            name, "--host", "127.0.0.1", "--port", str(port), "--device", "cpu", "--engine", "torch",
            "--batch-size", str(max_batch_size)]


def server_env() -> dict[str, str]:
    return {**os.environ, **OFFLINE_ENV}
