"""The gateway imports what serving needs and nothing else: the start of every gateway process
(a pod scaling out, a restart after a fault, each test that starts one) pays for every import.

Each probe runs in a fresh interpreter, since this test process has imported everything."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

# Model building and its heavy dependencies: a served family is a TorchScript file, a tokenizer
# file and a config, so none of these is needed to serve one, nor to parse a command line.
MODEL_BUILDING = ("open_clip", "torchvision", "torch._dynamo", "transformers", "matplotlib", "timm", "sympy")

STARTED_GATEWAY = """
import json, sys, time
from fastapi.testclient import TestClient
from focalserve_server.app import create_app
from focalserve_server.config import Settings

settings = Settings(model_repository=sys.argv[1], data_dir=sys.argv[2])
with TestClient(create_app(settings)) as client:
    deadline = time.monotonic() + 60  # readiness follows the start by a moment (the change log's first catch-up)
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, client.get("/readyz").text
        time.sleep(0.05)
    answer = client.post("/embed", json={"model": "tiny", "inputs": [{"text": "red"}]})
    assert answer.status_code == 200, answer.text
print(json.dumps(sorted(sys.modules)))
"""

CLI_PARSER = """
import json, sys
from focalserve_server.cli import build_parser
build_parser(sys.argv[1] if len(sys.argv) > 1 else None)
print(json.dumps(sorted(sys.modules)))
"""


def loaded_modules(probe: str, *args: str) -> set[str]:
    result = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return set(json.loads(result.stdout.splitlines()[-1]))


def offending(modules: set[str], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == f or m.startswith(f + ".") for f in forbidden))


def test_a_started_gateway_has_loaded_no_model_building_or_training_code(model_repository: Path, tmp_path: Path):
    """Started on the embedded backend, ready, one text embedded: its tokenizer and preprocessing
    come from the exported repository, not from open_clip."""
    modules = loaded_modules(STARTED_GATEWAY, str(model_repository), str(tmp_path / "data"))
    assert "torch" in modules  # the embedded backend runs the exported graphs
    assert offending(modules, (*MODEL_BUILDING, "focalserve_training")) == []


def test_the_command_line_starts_without_torch():
    """`focalserve --help`, `focalserve index add`, ...: commands that run no model import no torch
    (training's commands register their options here and import what they run when they run)."""
    assert offending(loaded_modules(CLI_PARSER), ("torch", *MODEL_BUILDING)) == []


def test_focalserve_serve_loads_no_other_commands_registration():
    modules = loaded_modules(CLI_PARSER, "serve")
    assert offending(modules, ("torch", *MODEL_BUILDING, "focalserve_training", "focalserve_devtools")) == []
