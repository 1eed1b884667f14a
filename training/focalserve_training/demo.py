"""The demo families: exported from the parameters shipped in the repository, or trained anew.

`python -m focalserve_training.demo --shipped --name demo` (what `make serve` and `make test`
run) exports a family from `training/demo_weights/NAME.safetensors`: seconds, never training.
`--family-only` (`make demo-weights`) trains the served families (`demo_recipe`: the base CLIP,
then FocalLens with full and with readout conditioning; ~25 min on 2 cores), writes their
shipped files and exports them. Without either (`make demo-model`) it runs every stage,
FSC-CLIP too, evaluates all four on held-out data (both FocalLens models under held-out
phrasings one by one: JSON, PNG and Markdown tables), writes the shipped files and exports.

Every step uses the same code paths as a real-scale run (`focalserve train|eval|export`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from focalserve_family import BACKENDS, Backend
from focalserve_training import demo_weights
from focalserve_training.demo_recipe import FAMILY_STAGES, MODEL, STAGES, train_stages
from focalserve_training.evaluate import ACCURACIES, Encoder, Evaluation, evaluate, meets_target, write_report
from focalserve_training.export import export_family
from focalserve_training.models import FamilyModel, FocalLensCLIP, load_family_model

READOUT_SUFFIX = "-readout"  # the readout family is exported as NAME-readout


def results_table(results: dict[str, Evaluation]) -> str:
    """Markdown: retrieval mAP per condition (conditional models averaged over a sample of training
    phrasings, and over the held-out phrasings), compositionality and zero-shot accuracy."""
    header = (
        "| model | colour mAP | shape mAP | colour mAP, held-out phrasings | shape mAP, held-out phrasings "
        "| compositionality acc. | zero-shot acc. |"
    )
    lines = [header, "|---|---|---|---|---|---|---|"]
    for label, metrics in results.items():
        retrieval = metrics["retrieval_map"]
        kind = "conditional" if "conditional" in retrieval["colour"] else "unconditional"
        cells = [f"{retrieval[c][kind]:.3f}" for c in ("colour", "shape")]
        cells += [
            f"{retrieval[c].get('conditional_heldout_phrasing', float('nan')):.3f}".replace("nan", "-")
            for c in ("colour", "shape")
        ]
        cells += [f"{metrics[m]:.3f}" if m in metrics else "-" for m in ACCURACIES]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def phrasing_table(evaluation: Evaluation) -> str:
    """Markdown: a conditional model's mAP of both attributes under each evaluated phrasing."""
    lines = [
        "| phrasing | seen in training | asks for | colour mAP | shape mAP | target met |",
        "|---|---|---|---|---|---|",
    ]
    for kind, conditions in evaluation["phrasing_map"].items():
        for condition, phrasings in conditions.items():
            for text, scores in phrasings.items():
                met = "yes" if meets_target(condition, scores) else "**no**"
                lines.append(f"| {text} | {'yes' if kind == 'trained' else 'no'} | {condition} "
                             f"| {scores['colour']:.3f} | {scores['shape']:.3f} | {met} |")
    return "\n".join(lines)


def readout_table(results: dict[str, Evaluation]) -> str:
    """Markdown: readout against full conditioning, mAP of the asked attribute under trained and
    held-out phrasings (target: readout within 0.05 of full on each)."""
    full, readout = results["FocalLens (conditional)"], results["FocalLens readout (conditional)"]
    lines = ["| attribute | phrasings | full mAP | readout mAP | readout - full | at most 0.05 below full |",
             "|---|---|---|---|---|---|"]
    for attribute in ("colour", "shape"):
        for label, key in (("trained", "conditional"), ("held-out", "conditional_heldout_phrasing")):
            a, b = full["retrieval_map"][attribute][key], readout["retrieval_map"][attribute][key]
            lines.append(f"| {attribute} | {label} | {a:.3f} | {b:.3f} | {b - a:+.3f} | "
                         f"{'yes' if b >= a - 0.05 else '**no**'} |")
    return "\n".join(lines)


def export_shipped(name: str, weights_dir: Path, repository: Path, backend: Backend) -> dict[str, str]:
    """Export the family `name` from its shipped parameters; warn if the training code has changed since."""
    path = demo_weights.shipped_path(name, weights_dir)
    model, family = demo_weights.load_shipped(path)
    export_family(model, "focallens", family.model_name, name, repository, backend)
    current = demo_weights.weights_key(name, family.model_name)
    if current != family.weights_key:
        print(f"warning: {path} was trained by other code (key {family.weights_key}; this code's is {current}): "
              f"`{demo_weights.REBUILD_COMMAND}` retrains it", file=sys.stderr)
    return {"shipped": str(path), "checkpoint_hash": family.checkpoint_hash}


def evaluate_all(models: dict[str, FamilyModel], work_dir: Path) -> dict[str, str]:
    """Every stage's model on held-out data; the tables go to WORK_DIR/results.md."""
    base = Encoder(models["base"], MODEL)
    results = {
        "base CLIP (unconditional)": evaluate(base),
        "FocalLens (conditional)": evaluate(Encoder(models["focallens"], MODEL), baseline=base),
        "FocalLens readout (conditional)": evaluate(Encoder(models["focallens-readout"], MODEL), baseline=base),
        "FSC-CLIP (unconditional)": evaluate(Encoder(models["fsc-clip"], MODEL)),
    }
    json_path, plot_path = write_report(results, work_dir)
    tables = "\n\n".join([results_table(results), readout_table(results),
                          phrasing_table(results["FocalLens (conditional)"]),
                          phrasing_table(results["FocalLens readout (conditional)"])])
    (work_dir / "results.md").write_text(tables + "\n")
    print(tables)
    return {"results": str(json_path), "plot": str(plot_path)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--work-dir", type=Path, default=Path("runs/demo"))
    parser.add_argument("--weights-dir", type=Path, default=demo_weights.SHIPPED_DIR,
                        help="where the shipped parameters are read (--shipped) and written (training)")
    parser.add_argument("--name", default="demo", help="the full-conditioning family; its readout twin is NAME-readout")
    parser.add_argument("--backend", choices=BACKENDS, default="libtorch",
                        help="Triton backend of the exported families (the embedded backend serves either)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--shipped", action="store_true",
                      help="export the family --name from its shipped parameters, without training")
    mode.add_argument("--family-only", action="store_true",
                      help="train the served families only (no FSC-CLIP, no evaluation) and ship their parameters")
    parser.add_argument("--force", action="store_true", help="retrain every stage, ignoring checkpoints in --work-dir")
    args = parser.parse_args(argv)
    started = time.monotonic()
    if args.shipped:
        report = export_shipped(args.name, args.weights_dir, args.repository, args.backend)
    else:
        report = train_and_ship(args)
    print(json.dumps({**report, "repository": str(args.repository),
                      "minutes": round((time.monotonic() - started) / 60, 1)}))


def train_and_ship(args: argparse.Namespace) -> dict[str, str]:
    """Train (resuming from --work-dir unless --force), ship both FocalLens families' parameters, export them."""
    if args.force and args.work_dir.exists():
        shutil.rmtree(args.work_dir)
    families = {args.name: FAMILY_STAGES["full"], args.name + READOUT_SUFFIX: FAMILY_STAGES["readout"]}
    # The key of the code that trains, taken before it runs: an edit made during the run is not its code.
    keys = {name: demo_weights.weights_key(name, MODEL) for name in families}
    stages = ("base", *families.values()) if args.family_only else tuple(STAGES)
    checkpoints = train_stages(args.work_dir, stages)
    models = {
        stage: load_family_model("focallens" if STAGES[stage].recipe == "focallens" else "clip", MODEL, checkpoint=path)
        for stage, path in checkpoints.items()
    }
    report = {} if args.family_only else evaluate_all(models, args.work_dir)
    for name, stage in families.items():
        model = models[stage]
        assert isinstance(model, FocalLensCLIP)
        demo_weights.save_shipped(model, name, MODEL, keys[name], demo_weights.shipped_path(name, args.weights_dir))
        export_family(model, "focallens", MODEL, name, args.repository, args.backend)
    return {**report, "weights_dir": str(args.weights_dir)}


if __name__ == "__main__":
    main()
