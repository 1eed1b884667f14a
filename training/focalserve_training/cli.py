"""`focalserve export|train|eval`: training's subcommands, plugged into the `focalserve` CLI."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from focalserve_family import BACKENDS, CONDITIONINGS, FAMILY_KINDS
from focalserve_training.options import FSC_CLIP_REFERENCE, LORA_ALPHA

Handler = Callable[[argparse.Namespace], None]


def _ends_cleanly(handler: Handler) -> Handler:
    """The command, ending with the message (no traceback) when the data or the checkpoint is at fault."""

    def run(args: argparse.Namespace) -> None:
        from focalserve_training.data import MissingImagesError
        from focalserve_training.models.architecture import CheckpointMismatch
        from focalserve_training.models.focallens import ConditioningError

        try:
            handler(args)
        except (CheckpointMismatch, ConditioningError) as error:
            sys.exit(f"focalserve {args.command}: {error}")
        except MissingImagesError as error:
            sys.exit(f"focalserve {args.command}: {error} (check --image-root, or pass --skip-missing-images)")

    return run


def _lora_alpha_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--lora-alpha",
        type=float,
        default=LORA_ALPHA,
        help="a LoRA checkpoint's deltas are scaled by lora_alpha / rank (default: the FSC-CLIP release's %(default)s)",
    )


def _conditioning_argument(parser: argparse.ArgumentParser, default: str | None, help_default: str) -> None:
    parser.add_argument(
        "--conditioning",
        choices=CONDITIONINGS,
        default=default,
        help="focallens: how the instruction enters the image tower. full: in every layer (one image forward per "
        "instruction); readout: the image trunk runs once and a light readout stream per instruction reads it, "
        f"so one pass over an image serves every instruction ({help_default})",
    )


def add_export_command(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser("export", help="export a model family into a Triton model repository")
    parser.add_argument("--family", choices=FAMILY_KINDS, required=True)
    parser.add_argument("--model", required=True, help="open_clip model config name, e.g. ViT-B-32")
    parser.add_argument(
        "--pretrained", default=None, help="open_clip pretrained tag or weights file; 'none' for random"
    )
    parser.add_argument(
        "--checkpoint", type=Path, default=None, help="a FocalServe or FSC-CLIP checkpoint file (full or LoRA)"
    )
    _lora_alpha_argument(parser)
    parser.add_argument("--name", required=True, help="family name: models are NAME_image, NAME_text, ...")
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--backend", choices=BACKENDS, default="python")
    parser.add_argument("--max-batch-size", type=int, default=64)
    _conditioning_argument(parser, None, "default: what the checkpoint records; full without one")
    parser.set_defaults(handler=_ends_cleanly(_export))


def _export(args: argparse.Namespace) -> None:
    from focalserve_family import default_batching
    from focalserve_training.export import export_family
    from focalserve_training.models import load_family_model

    pretrained = None if args.pretrained in (None, "none") else args.pretrained
    model = load_family_model(
        args.family, args.model, pretrained, args.checkpoint, args.lora_alpha, args.conditioning
    )
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
    _lora_alpha_argument(parser)
    parser.add_argument(
        "--lock-text",
        type=int,
        nargs="?",
        const=0,
        default=None,
        metavar="UNLOCKED_LAYERS",
        help="freeze the text tower the recipe trains (focallens: the instruction tower) except its last "
        "UNLOCKED_LAYERS layers (default 0), as open_clip's --lock-text; a Hugging Face tower's projection "
        "stays trainable. Default: the whole tower trains",
    )
    parser.add_argument(
        "--data",
        default="colorshape",
        help="colorshape | scenes | colorshape+scenes | llava:FILE.json | captions:FILE.jsonl",
    )
    parser.add_argument("--image-root", type=Path, default=Path("."))
    parser.add_argument(
        "--skip-missing-images",
        action="store_true",
        help="leave out records whose image file is missing (default: stop before training and name them)",
    )
    parser.add_argument(
        "--strip-prompt-suffixes",
        action="store_true",
        help="llava: drop LLaVA-1.5's answer-format prompts ('Answer the question using a single word or phrase.')",
    )
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
    _conditioning_argument(parser, "full", "default: %(default)s; recorded in the checkpoint")
    _fsc_clip_arguments(parser)
    parser.set_defaults(handler=_ends_cleanly(_train))


def _fsc_clip_arguments(parser: argparse.ArgumentParser) -> None:
    """The fsc-clip recipe's knobs; defaults are the reference's COCO ViT-B/32 script."""
    group = parser.add_argument_group("fsc-clip")
    reference = FSC_CLIP_REFERENCE
    group.add_argument(
        "--global-hn-weight",
        type=float,
        default=reference.global_hn_weight,
        help="weight of the global hard-negative loss (default %(default)s; the reference's CC3M scripts: 1.0)",
    )
    group.add_argument(
        "--local-hn-weight",
        type=float,
        default=reference.local_hn_weight,
        help="weight of the local hard-negative loss (default %(default)s; ViT-B-16 and ViT-L-14 scripts: 0.5)",
    )
    for flag, default, meaning in (
        ("--focal-gamma", reference.focal_gamma, "SCR's focal exponent"),
        ("--label-smoothing", reference.label_smoothing, "SCR's label smoothing"),
    ):
        group.add_argument(flag, type=float, default=default, help=f"{meaning} (default %(default)s)")
    group.add_argument(
        "--strict-negative-slots",
        action=argparse.BooleanOptionalAction,
        default=reference.strict_negative_slots,
        help="slot j holds generator j's negative or is masked, as in the reference (default); "
        "--no-strict-negative-slots lets another generator fill an empty slot",
    )


def _train(args: argparse.Namespace) -> None:
    from focalserve_training.loop import TrainConfig, train
    from focalserve_training.options import FSCCLIPOptions
    from focalserve_training.recipes import DataSpec, ModelSpec, create_recipe

    kind, _, path = args.data.partition(":")
    data = DataSpec(
        kind,
        Path(path) if path else None,
        args.image_root,
        args.synthetic_size,
        args.seed,
        skip_missing_images=args.skip_missing_images,
        strip_prompt_suffixes=args.strip_prompt_suffixes,
    )
    model = ModelSpec(
        args.model, args.pretrained, args.init_checkpoint, args.lora_alpha, args.lock_text, args.conditioning
    )
    fsc_clip = FSCCLIPOptions(
        args.global_hn_weight, args.local_hn_weight, args.focal_gamma, args.label_smoothing, args.strict_negative_slots
    )
    recipe = create_recipe(args.recipe, model, data, args.seed, fsc_clip)
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
    _lora_alpha_argument(parser)
    parser.add_argument(
        "--baseline-checkpoint",
        type=Path,
        default=None,
        help="CLIP checkpoint whose embeddings give the unconditional rows",
    )
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.set_defaults(handler=_ends_cleanly(_eval))


def _eval(args: argparse.Namespace) -> None:
    from focalserve_training.evaluate import Encoder, evaluate, write_report
    from focalserve_training.models import load_family_model

    model = load_family_model(args.family, args.model, args.pretrained, args.checkpoint, args.lora_alpha)
    encoder = Encoder(model, args.model)
    baseline = None
    if args.baseline_checkpoint:
        baseline = Encoder(load_family_model("clip", args.model, checkpoint=args.baseline_checkpoint), args.model)
    results = {args.family: evaluate(encoder, baseline, n_images=args.images)}
    for path in write_report(results, args.output_dir):
        print(path)
