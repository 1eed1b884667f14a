"""The `focalserve` command. Subcommands come from the `focalserve.commands` entry points,
so that training's commands (export, train, eval) plug in without the server importing them."""

from __future__ import annotations

import argparse
import logging
import sys
from importlib.metadata import entry_points
from typing import get_origin

from pydantic import ValidationError

from focalserve_server.config import Settings


def add_serve_command(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser("serve", help="run the HTTP gateway")
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        if get_origin(field.annotation) is list:
            parser.add_argument(flag, nargs="*", default=None, help=field.description)
        else:
            parser.add_argument(flag, default=None, help=f"{field.description or ''} (env FOCALSERVE_{name.upper()})")
    parser.add_argument("--log-level", default="info")
    parser.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> None:
    overrides = {name: getattr(args, name) for name in Settings.model_fields if getattr(args, name) is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as error:  # a flag or FOCALSERVE_* variable out of range: say which, no traceback
        sys.exit(f"focalserve serve: {error}")
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.workers > 1:
        from focalserve_server.workers.supervisor import serve_workers

        serve_workers(settings, args.log_level)
        return
    import uvicorn

    from focalserve_server.app import create_app
    from focalserve_server.sockets import listening_socket

    server = uvicorn.Server(uvicorn.Config(create_app(settings), log_level=args.log_level))
    server.run(sockets=[listening_socket(settings)])


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every subcommand, or of `command` alone when it names one: `focalserve serve`
    then never imports training's registration, nor `focalserve train` the gateway's settings."""
    parser = argparse.ArgumentParser(prog="focalserve", description=__doc__)
    subcommands = parser.add_subparsers(dest="command", required=True)
    entries = sorted(entry_points(group="focalserve.commands"), key=lambda e: e.name)
    chosen = [entry for entry in entries if entry.name == command] or entries
    for entry in chosen:
        entry.load()(subcommands)
    return parser


def main(argv: list[str] | None = None) -> None:
    arguments = sys.argv[1:] if argv is None else argv
    args = build_parser(arguments[0] if arguments else None).parse_args(arguments)
    args.handler(args)
