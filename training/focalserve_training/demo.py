"""`make demo-model`: the demo family, trained on synthetic ColorShape on a CPU.

The base is `focalserve-minilm`: a tiny ViT trained from scratch beside a pretrained sentence
encoder (all-MiniLM-L6-v2, installed offline) as the text tower, which is what lets the demo
understand instructions worded in ways it never saw.

1. the base CLIP on ColorShape captions (recipe `clip`; the text tower locked, LiT-style);
2. FocalLens fine-tuned from it on ColorShape images under thousands of templated
   instructions (recipe `focallens`; the instruction tower's pretrained layers locked), twice:
   with full conditioning (`demo`) and with readout conditioning (`demo-readout`, one trunk
   pass per image for all its instructions), same data, steps and seed;
3. FSC-CLIP fine-tuned from it on two-object scenes with hard negatives (recipe `fsc-clip`);
4. evaluation of all four on held-out data, both FocalLens models under held-out phrasings one
   by one (JSON, PNG and Markdown tables);
5. export of the FocalLens models as the `demo` and `demo-readout` families into the model
   repository (libtorch flavour).

Every step uses the same code paths as a real-scale run (`focalserve train|eval|export`).
`--family-only` (what `make serve` and `make test` run) does steps 1, 2 and 5 for one family
(`--conditioning`); where this machine's cache (`demo_cache`) holds the checkpoint that the same
training code and library versions produce, it does step 5 alone, on that checkpoint.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from focalserve_family import CONDITIONINGS, Conditioning
from focalserve_training import demo_cache
from focalserve_training.evaluate import ACCURACIES, Encoder, Evaluation, evaluate, meets_target, write_report
from focalserve_training.export import export_family
from focalserve_training.loop import TrainConfig, train
from focalserve_training.models import load_family_model
from focalserve_training.recipes import DataSpec, ModelSpec, create_recipe

MODEL = "focalserve-minilm"


@dataclass(frozen=True)
class Stage:
    recipe: str
    data: DataSpec
    steps: int
    lr: float
    init_from: str | None = None  # an earlier stage's name
    lock_text: int | None = 0  # unlocked layers of the trained text tower (ModelSpec.lock_text)
    conditioning: Conditioning = "full"  # focallens stages (ModelSpec.conditioning)


STAGES = {
    "base": Stage("clip", DataSpec("colorshape", size=8192, seed=1), steps=300, lr=1e-3),
    # The instruction tower's last two MiniLM layers train: a linear map of frozen mean-pooled
    # features cannot tell "its shape, not its colour" from "its colour, not its shape".
    "focallens": Stage(
        "focallens", DataSpec("colorshape", size=8192, seed=2), steps=800, lr=1e-3, init_from="base", lock_text=2
    ),
    # At the full stage's 1e-3 the readout run diverged after warm-up (loss 0.9 at step 50, 4.1 at 70).
    "focallens-readout": Stage(
        "focallens", DataSpec("colorshape", size=8192, seed=2), steps=1200, lr=5e-4, init_from="base", lock_text=2,
        conditioning="readout",
    ),
    "fsc-clip": Stage(
        "fsc-clip", DataSpec("colorshape+scenes", size=4096, seed=3), steps=120, lr=5e-5, init_from="base"
    ),
}


# The stage each served FocalLens family is trained in; it starts from the base CLIP.
FAMILY_STAGES: dict[Conditioning, str] = {"full": "focallens", "readout": "focallens-readout"}
READOUT_SUFFIX = "-readout"  # `make demo-model` exports the readout family as NAME-readout


def run_stage(name: str, stage: Stage, work_dir: Path, checkpoints: dict[str, Path]) -> Path:
    init = checkpoints[stage.init_from] if stage.init_from else None
    spec = ModelSpec(MODEL, checkpoint=init, lock_text=stage.lock_text, conditioning=stage.conditioning)
    recipe = create_recipe(stage.recipe, spec, stage.data)
    config = TrainConfig(
        work_dir / name,
        max_steps=stage.steps,
        batch_size=128,
        lr=stage.lr,
        warmup_steps=min(50, stage.steps // 5),
        # One worker renders the next batch while the step runs: 8.6 instead of 10.0 min for the
        # whole demo on 2 cores, and bit-identical weights (every sample is a function of its index).
        workers=1,
    )
    return train(recipe, config)


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


def train_family(work_dir: Path, stages: tuple[str, ...]) -> dict[str, Path]:
    """Run `stages` in order; each resumes from its own checkpoints if they exist."""
    checkpoints: dict[str, Path] = {}
    for name in stages:
        checkpoints[name] = run_stage(name, STAGES[name], work_dir, checkpoints)
    return checkpoints


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--work-dir", type=Path, default=Path("runs/demo"))
    parser.add_argument("--name", default="demo")
    parser.add_argument("--force", action="store_true", help="retrain even if checkpoints or a cached build exist")
    parser.add_argument("--family-only", action="store_true",
                        help="steps 1, 2 and 5 only: the served family, without FSC-CLIP and the evaluation "
                             "(what `make serve` and `make test` need; the exported weights are the same)")
    parser.add_argument("--no-cache", action="store_true", help="neither reuse nor keep a build in the cache")
    parser.add_argument("--conditioning", choices=CONDITIONINGS, default="full",
                        help="--family-only: which FocalLens family to build (named --name)")
    args = parser.parse_args(argv)
    if args.force and args.work_dir.exists():
        shutil.rmtree(args.work_dir)
    started = time.monotonic()
    # family name -> the stage that trains it
    families = ({args.name: FAMILY_STAGES[args.conditioning]} if args.family_only else
                {args.name: FAMILY_STAGES["full"], args.name + READOUT_SUFFIX: FAMILY_STAGES["readout"]})
    keys = {name: demo_cache.weights_key(name, MODEL) for name in families}
    report: dict[str, str] = {}
    restored: dict[str, Path] = {}  # a cached checkpoint, exported below by this clone's export code
    if args.family_only and not (args.force or args.no_cache):
        name, stage = next(iter(families.items()))
        served_checkpoint = args.work_dir / stage / "checkpoints" / "latest.pt"
        if demo_cache.restore(keys[name], served_checkpoint):
            restored = {stage: served_checkpoint}
            report = {"from_cache": str(demo_cache.cache_dir()), "key": keys[name]}
    stages = ("base", *families.values()) if args.family_only else tuple(STAGES)
    checkpoints = restored or train_family(args.work_dir, stages)
    models = {
        name: load_family_model("focallens" if STAGES[name].recipe == "focallens" else "clip", MODEL, checkpoint=path)
        for name, path in checkpoints.items()
    }
    if not args.family_only:
        base = Encoder(models["base"], MODEL)
        results = {
            "base CLIP (unconditional)": evaluate(base),
            "FocalLens (conditional)": evaluate(Encoder(models["focallens"], MODEL), baseline=base),
            "FocalLens readout (conditional)": evaluate(Encoder(models["focallens-readout"], MODEL), baseline=base),
            "FSC-CLIP (unconditional)": evaluate(Encoder(models["fsc-clip"], MODEL)),
        }
        json_path, plot_path = write_report(results, args.work_dir)
        tables = "\n\n".join([results_table(results), readout_table(results),
                               phrasing_table(results["FocalLens (conditional)"]),
                               phrasing_table(results["FocalLens readout (conditional)"])])
        (args.work_dir / "results.md").write_text(tables + "\n")
        print(tables)
        report = {"results": str(json_path), "plot": str(plot_path)}
    # The committed repository is the GPU (libtorch) flavour; the embedded backend serves the same
    # files, and `make stack` exports a python-backend copy for the CPU tritonserver.
    for name, stage in families.items():
        export_family(models[stage], "focallens", MODEL, name, args.repository, "libtorch")
        if not (args.no_cache or restored):
            demo_cache.store(keys[name], checkpoints[stage])
    print(json.dumps({**report, "repository": str(args.repository),
                      "minutes": round((time.monotonic() - started) / 60, 1)}))


if __name__ == "__main__":
    main()
