"""`focalserve export|train|eval`: training's subcommands, plugged into the `focalserve` CLI."""

from __future__ import annotations

import argparse
from pathlib import Path

from training.models import FAMILIES
from training.triton_config import BACKENDS


def add_export_command(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser("export", help="export a model family into a Triton model repository")
    parser.add_argument("--family", choices=FAMILIES, required=True)
    parser.add_argument("--model", required=True, help="open_clip model config name, e.g. ViT-B-32")
    parser.add_argument("--pretrained", default=None, help="open_clip pretrained tag or weights file; 'none' for random")
    parser.add_argument("--checkpoint", type=Path, default=None, help="a FocalServe or FSC-CLIP checkpoint file")
    parser.add_argument("--name", required=True, help="family name: models are NAME_image, NAME_text, ...")
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--backend", choices=BACKENDS, default="python")
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.set_defaults(handler=_export)


def _export(args: argparse.Namespace) -> None:
    from training.export import export_family
    from training.models import load_family_model
    from training.triton_config import default_batching

    pretrained = None if args.pretrained in (None, "none") else args.pretrained
    model = load_family_model(args.family, args.model, pretrained, args.checkpoint)
    batching = default_batching(args.backend, args.max_batch_size)
    for directory in export_family(
        model, args.family, args.model, args.name, args.repository, args.backend, batching
    ):
        print(directory)
