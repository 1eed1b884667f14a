"""`make bench`: every benchmark part, from serving to start-up; RESULTS.md's tables rewritten.

    .venv/bin/python -m benchmarks [--parts serving fronts faiss replication export latency conditions startup ingest
        access soak compaction]
        [--seconds S] [--faiss-sizes N ...] [--ingest-images N]

RESULTS.md keeps its prose; only the text between `<!-- generated:NAME -->` and
`<!-- /generated:NAME -->` is replaced, so the tables always come from the last full run.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import (
    access,
    compaction,
    conditions,
    export_bench,
    faiss_bench,
    fronts,
    ingest,
    latency,
    replication,
    serving,
    soak,
    startup,
)

RESULTS_MD = Path(__file__).resolve().parent / "RESULTS.md"
PARTS = ("serving", "fronts", "faiss", "replication", "export", "latency", "conditions", "startup", "ingest", "access",
         "soak", "compaction")


def replace_generated(text: str, name: str, content: str) -> str:
    """The text with section `name` holding `content`; a missing marker pair is an error, not a silent skip."""
    pattern = re.compile(rf"(<!-- generated:{name} -->\n).*?(<!-- /generated:{name} -->)", re.DOTALL)
    if not pattern.search(text):
        raise KeyError(f"RESULTS.md has no generated:{name} section")
    return pattern.sub(lambda match: match.group(1) + content + "\n" + match.group(2), text)


def replace_all(text: str, tables: dict[str, str]) -> str:
    for name, table in tables.items():
        text = replace_generated(text, name, table)
    return text


def run_section(command: str, machine: dict) -> str:
    gpu = machine.get("gpu") or "none"
    return (f"Command: `{command}`\n\nMachine: {machine['cpu']}, {machine['cores']} cores, GPU: {gpu}; "
            f"Python {machine['python']}, torch {machine['torch']}, faiss {machine['faiss']}; "
            f"commit {machine['commit']}.")


# Parts whose result names its own command: each run with the options `make bench` gives it.
SELF_DESCRIBED: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "fronts": lambda args: fronts.main([]),
    "faiss": lambda args: faiss_bench.main(["--sizes", *args.faiss_sizes]),
    "export": lambda args: export_bench.main([]),
    "latency": lambda args: latency.main([]),
    "conditions": lambda args: conditions.main([]),
    "startup": lambda args: startup.main([]),
    "ingest": lambda args: ingest.main(["--images", str(args.ingest_images)]),
    "access": lambda args: access.main([]),
    "soak": lambda args: soak.main([]),
    "compaction": lambda args: compaction.main([]),
}


def recorded(text: str, section: str, result: dict[str, Any], command: str | None = None) -> str:
    """The text with a part's run section (its own command, or `command`) and its tables replaced."""
    text = replace_generated(text, section, run_section(command or result["command"], result["machine"]))
    return replace_all(text, result["tables"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS),
                        help="what to run; only its sections of RESULTS.md are rewritten")
    parser.add_argument("--seconds", type=float, default=5.0, help="timed part of each serving measurement")
    parser.add_argument("--faiss-sizes", nargs="+", default=["100000", "1000000"])
    parser.add_argument("--ingest-images", type=int, default=20_000, help="images of the ingest part")
    args = parser.parse_args(argv)
    text = RESULTS_MD.read_text()
    whole_command = shlex.join(["python", "-m", "benchmarks", *sys.argv[1:]])
    for part in (part for part in PARTS if part in args.parts):  # in PARTS' order
        if part == "serving":
            served = asyncio.run(serving.run(serving.parse_args(["--seconds", str(args.seconds)])))
            text = recorded(text, "run", served, whole_command)
        elif part == "replication":
            text = recorded(text, "replication_run", replication.main([]), whole_command)
        else:
            text = recorded(text, f"{part}_run", SELF_DESCRIBED[part](args))
    RESULTS_MD.write_text(text)
    print(f"updated {RESULTS_MD}")


if __name__ == "__main__":
    main()
