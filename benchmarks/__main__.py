"""`make bench`: every benchmark part, from serving to start-up; RESULTS.md's tables rewritten.

    .venv/bin/python -m benchmarks [--parts serving fronts faiss replication export latency conditions startup ingest
        access soak]
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
from pathlib import Path

from benchmarks import (
    access,
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
         "soak")


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS),
                        help="what to run; only its sections of RESULTS.md are rewritten")
    parser.add_argument("--seconds", type=float, default=5.0, help="timed part of each serving measurement")
    parser.add_argument("--faiss-sizes", nargs="+", default=["100000", "1000000"])
    parser.add_argument("--ingest-images", type=int, default=20_000, help="images of the ingest part")
    args = parser.parse_args(argv)
    text = RESULTS_MD.read_text()
    if "serving" in args.parts:
        served = asyncio.run(serving.run(serving.parse_args(["--seconds", str(args.seconds)])))
        command = shlex.join(["python", "-m", "benchmarks", *sys.argv[1:]])
        text = replace_generated(text, "run", run_section(command, served["machine"]))
        text = replace_all(text, served["tables"])
    if "fronts" in args.parts:
        measured = fronts.main([])
        text = replace_generated(text, "fronts_run", run_section(measured["command"], measured["machine"]))
        text = replace_all(text, measured["tables"])
    if "faiss" in args.parts:
        searched = faiss_bench.main(["--sizes", *args.faiss_sizes])
        text = replace_generated(text, "faiss_run", run_section(searched["command"], searched["machine"]))
        text = replace_all(text, searched["tables"])
    if "replication" in args.parts:
        replicated = replication.main([])
        command = shlex.join(["python", "-m", "benchmarks", *sys.argv[1:]])
        text = replace_generated(text, "replication_run", run_section(command, replicated["machine"]))
        text = replace_all(text, replicated["tables"])
    if "export" in args.parts:
        exported = export_bench.main([])
        text = replace_generated(text, "export_run", run_section(exported["command"], exported["machine"]))
        text = replace_all(text, exported["tables"])
    if "latency" in args.parts:
        measured = latency.main([])
        text = replace_generated(text, "latency_run", run_section(measured["command"], measured["machine"]))
        text = replace_all(text, measured["tables"])
    if "conditions" in args.parts:
        measured = conditions.main([])
        text = replace_generated(text, "conditions_run", run_section(measured["command"], measured["machine"]))
        text = replace_all(text, measured["tables"])
    if "startup" in args.parts:
        started = startup.main([])
        text = replace_generated(text, "startup_run", run_section(started["command"], started["machine"]))
        text = replace_all(text, started["tables"])
    if "ingest" in args.parts:
        ingested = ingest.main(["--images", str(args.ingest_images)])
        text = replace_generated(text, "ingest_run", run_section(ingested["command"], ingested["machine"]))
        text = replace_all(text, ingested["tables"])
    if "access" in args.parts:
        guarded = access.main([])
        text = replace_generated(text, "access_run", run_section(guarded["command"], guarded["machine"]))
        text = replace_all(text, guarded["tables"])
    if "soak" in args.parts:
        soaked = soak.main([])
        text = replace_generated(text, "soak_run", run_section(soaked["command"], soaked["machine"]))
        text = replace_all(text, soaked["tables"])
    RESULTS_MD.write_text(text)
    print(f"updated {RESULTS_MD}")


if __name__ == "__main__":
    main()
