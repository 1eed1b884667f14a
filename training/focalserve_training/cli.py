"""`focalserve export|train|eval`: training's subcommands, plugged into the `focalserve` CLI."""

from __future__ import annotations

import argparse
from pathlib import Path

from focalserve_family import BACKENDS, FAMILY_KINDS


def add_export_command(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser("export", help="export a model family into a Triton model repository")
    parser.add_argument("--family", choices=FAMILY_KINDS, required=True)
    parser.add_argument("--model", required=True, help="open_clip model config name, e.g. ViT-B-32")
    parser.add_argument(
        "--pretrained", default=None, help="open_clip pretrained tag or weights file; 'none' for random"
    )
    parser.add_argument("--checkpoint", type=Path, default=None, help="a FocalServe or FSC-CLIP checkpoint file")
    parser.add_argument("--name", required=True, help="family name: models are NAME_image, NAME_text, ...")
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--backend", choices=BACKENDS, default="python")
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.set_defaults(handler=_export)


def _export(args: argparse.Namespace) -> None:
    from focalserve_family import default_batching
    from focalserve_training.export import export_family
    from focalserve_training.models import load_family_model

    pretrained = None if args.pretrained in (None, "none") else args.pretrained
    model = load_family_model(args.family, args.model, pretrained, args.checkpoint)
    batching = default_batching(args.backend, args.max_batch_size)
    for directory in export_family(model, args.family, args.model, args.name, args.repository, args.backend, batching):
        print(directory)


def add_train_command(subcommands: argparse._SubParsersAction) -> None:
    from focalserve_training.recipe_names import RECIPES

    parser = subcommands.add_parser("train", help="train a recipe (clip, focallens, fsc-clip); torchrun for DDP")
    parser.add_argument("recipe", choices=RECIPES)
    parser.add_argument("--model", required=True, help="open_clip model config name, e.g. ViT-L-14-336")
    parser.add_argument("--pretrained", default=None, help="open_clip pretrained tag or weights file")
    parser.add_argument("--init-checkpoint", type=Path, default=None, help="start from this checkpoint")
    parser.add_argument(
        "--data",
        default="colorshape",
        help="colorshape | scenes | colorshape+scenes | llava:FILE.json | captions:FILE.jsonl",
    )
    parser.add_argument("--image-root", type=Path, default=Path("."))
    parser.add_argument("--synthetic-size", type=int, default=4096, help="images in a synthetic dataset")
    parser.add_argument("--output-dir", type=Path, required=True, help="checkpoints and logs; resumes from here")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=128, help="per process")
    parser.add_argument("--accum-steps", type=int, default=1)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--warmup-steps", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--save-every", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-amp", action="store_true")
    parser.set_defaults(handler=_train)


def _train(args: argparse.Namespace) -> None:
    from focalserve_training.loop import TrainConfig, train
    from focalserve_training.recipes import DataSpec, ModelSpec, create_recipe

    kind, _, path = args.data.partition(":")
    data = DataSpec(kind, Path(path) if path else None, args.image_root, args.synthetic_size, args.seed)
    recipe = create_recipe(args.recipe, ModelSpec(args.model, args.pretrained, args.init_checkpoint), data, args.seed)
    config = TrainConfig(
        args.output_dir,
        epochs=args.epochs,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        accum_steps=args.accum_steps,
        lr=args.lr,
        weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps,
        amp=not args.no_amp,
        seed=args.seed,
        workers=args.workers,
        save_every=args.save_every,
    )
    print(train(recipe, config))


def add_eval_command(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser("eval", help="evaluate checkpoints on held-out ColorShape data")
    parser.add_argument("--model", required=True)
    parser.add_argument("--family", choices=FAMILY_KINDS, required=True)
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--pretrained", default=None)
    parser.add_argument(
        "--baseline-checkpoint",
        type=Path,
        default=None,
        help="CLIP checkpoint whose embeddings give the unconditional rows",
    )
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.set_defaults(handler=_eval)


def _eval(args: argparse.Namespace) -> None:
    from focalserve_training.evaluate import Encoder, evaluate, write_report
    from focalserve_training.models import load_family_model

    encoder = Encoder(load_family_model(args.family, args.model, args.pretrained, args.checkpoint), args.model)
    baseline = None
    if args.baseline_checkpoint:
        baseline = Encoder(load_family_model("clip", args.model, checkpoint=args.baseline_checkpoint), args.model)
    results = {args.family: evaluate(encoder, baseline, n_images=args.images)}
    for path in write_report(results, args.output_dir):
        print(path)
