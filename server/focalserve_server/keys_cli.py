"""`focalserve keys ...`: make, list, rotate and revoke keys, set their grants, read the audit trail,
directly in the store that `focalserve serve`'s settings choose (FOCALSERVE_DATA_DIR or
FOCALSERVE_DATABASE_URL): how an operator makes the first admin key without a running gateway.
Every gateway sees a change at its next poll of the store."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from pydantic import ValidationError

from focalserve_client.schemas import Grant, KeyCreate, KeyLimits
from focalserve_server.access import admin
from focalserve_server.collections.store import Store
from focalserve_server.errors import FocalServeError
from focalserve_server.store_flags import add_store_flags, store_settings

ACTOR = "cli"  # the audit trail's name for changes made with this command
LIMIT_FLAGS = ("window_s", "requests", "images", "burst", "concurrency")


def add_keys_command(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser("keys", help="manage API keys, their grants and limits; read the audit trail",
                                    description=__doc__)
    add_store_flags(parser)
    actions = parser.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="make a key; prints it once")
    create.add_argument("name", help="who the key is for, e.g. team-a")
    _grant_flag(create)
    for flag in LIMIT_FLAGS:
        create.add_argument("--" + flag.replace("_", "-"), type=int, help=KeyLimits.model_fields[flag].description)
    create.set_defaults(run=_create)
    actions.add_parser("list", help="every key: id, prefix, grants, limits, last use").set_defaults(run=_list)
    for name, run, text in (("rotate", _rotate, "a new secret for the key; prints it once"),
                            ("revoke", _revoke, "revoke the key everywhere")):
        action = actions.add_parser(name, help=text)
        action.add_argument("key_id")
        action.set_defaults(run=run)
    grant = actions.add_parser("grant", help="replace the key's grants")
    grant.add_argument("key_id")
    _grant_flag(grant)
    grant.set_defaults(run=_grant)
    audit = actions.add_parser("audit", help="the audit trail, oldest first, as JSON lines")
    audit.add_argument("--after", type=int, default=0, help="entries after this seq")
    audit.add_argument("--limit", type=int, default=100)
    audit.set_defaults(run=_audit)
    parser.set_defaults(handler=_run)


def _grant_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--grant", action="append", default=[], dest="grants", metavar="COLLECTIONS:ACTION",
                        help="e.g. 'a-*:write', 'shared:read', '*:admin' (repeatable)")


def _run(args: argparse.Namespace) -> None:
    from focalserve_server.collections.factory import open_store
    from focalserve_server.collections.health import StoreHealth

    store = open_store(store_settings(args, "keys"), StoreHealth())
    run: Callable[[Store, argparse.Namespace], None] = args.run
    try:
        run(store, args)
    except (FocalServeError, ValidationError) as error:
        sys.exit(f"focalserve keys {args.action}: {getattr(error, 'message', error)}")
    finally:
        store.close()


def _grants(texts: list[str]) -> list[Grant]:
    grants = []
    for text in texts:
        collections, _, action = text.rpartition(":")
        grants.append(Grant.model_validate({"collections": collections, "action": action}))
    return grants


def _create(store: Store, args: argparse.Namespace) -> None:
    limits = {flag: getattr(args, flag) for flag in LIMIT_FLAGS if getattr(args, flag) is not None}
    request = KeyCreate(name=args.name, grants=_grants(args.grants), limits=KeyLimits(**limits))
    issued = admin.create_key(store, request, ACTOR)
    print(issued["key"])
    print(f"key {issued['id']} made for {args.name!r}: this is the only time it is shown", file=sys.stderr)


def _list(store: Store, args: argparse.Namespace) -> None:
    for key in store.keys():
        print(json.dumps(admin.describe(key)))


def _rotate(store: Store, args: argparse.Namespace) -> None:
    print(admin.rotate_key(store, args.key_id, ACTOR)["key"])


def _revoke(store: Store, args: argparse.Namespace) -> None:
    admin.revoke_key(store, args.key_id, ACTOR)


def _grant(store: Store, args: argparse.Namespace) -> None:
    print(json.dumps(admin.set_grants(store, args.key_id, _grants(args.grants), ACTOR)))


def _audit(store: Store, args: argparse.Namespace) -> None:
    for record in store.audit_trail(args.after, args.limit):
        print(json.dumps(admin.audit_entry(record)))
