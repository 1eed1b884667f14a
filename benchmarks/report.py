"""Shared reporting: percentiles, markdown tables, and the machine a run happened on."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

RESULTS_DIR = Path(__file__).parent / "results"


def percentiles_ms(latencies_s: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99 in milliseconds; NaN when nothing completed."""
    if not len(latencies_s):
        return {"p50_ms": float("nan"), "p95_ms": float("nan"), "p99_ms": float("nan")}
    values = np.percentile(np.asarray(latencies_s, dtype=np.float64) * 1000.0, [50, 95, 99])
    return {"p50_ms": float(values[0]), "p95_ms": float(values[1]), "p99_ms": float(values[2])}


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub markdown table; floats get 3 significant digits past the point where it matters."""

    def cell(value: object) -> str:
        if isinstance(value, float):
            return f"{value:.1f}" if abs(value) >= 10 else f"{value:.3g}"
        return str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def machine() -> dict[str, object]:
    """What the numbers were measured on, for RESULTS.md."""
    import faiss
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "gpu": gpu,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "faiss": faiss.__version__,
        "commit": _git_commit(),
    }


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True, cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def save_json(name: str, payload: dict) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, sort_keys=True))
    return path


def command_of(module: str, argv: Sequence[str] | None) -> str:
    """The command that repeats a part's run: the options it was given, or else the process's own."""
    return shlex.join(["python", "-m", module, *(sys.argv[1:] if argv is None else argv)])


def output_arguments(parser: argparse.ArgumentParser, figure: str) -> None:
    """--json (the whole result) and --plot (its figure, by default beside RESULTS.md, which shows it)."""
    parser.add_argument("--json", type=Path, help="write the whole result here")
    parser.add_argument("--plot", type=Path, default=Path(__file__).resolve().parent / figure)


def finished(result: dict[str, Any], command: str, tables: dict[str, str], json_path: Path | None) -> dict[str, Any]:
    """A part's whole result (its command, the machine, its tables), printed and, where asked, saved as JSON."""
    for text in tables.values():
        print(text)
    full = {"command": command, "machine": machine(), **result, "tables": tables}
    if json_path is not None:
        json_path.write_text(json.dumps(full, indent=2, default=str))
    return full
