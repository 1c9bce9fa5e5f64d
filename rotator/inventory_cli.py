"""``rotator inventory``: the command around :mod:`rotator.inventory`.

Output: a table, or JSON lines with ``--json`` (one ``org`` record per org,
then one ``credential`` record per credential; schema in config/cli.md).
Exit 3 when an org cannot be read, else 1 when a ``--fail-on`` category is
present, else 0.  Only ids, names and dates are printed: never a secret.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TextIO, cast

from rotator.config import format_duration, parse_duration
from rotator.inventory import (
    FAIL_CATEGORIES,
    Inventory,
    InventoryItem,
    ManagedIndex,
    Thresholds,
    managed_index,
    stanza,
    suggestions,
    take_inventory,
)
from rotator.model import Target
from rotator.ports import InventoryTransport
from rotator.state import TargetState

if TYPE_CHECKING:
    from rotator.app import App

#: Exit codes (the same numbers as rotator.cli.Exit).
OK, FAILED, UNAVAILABLE = 0, 1, 3


def _duration(text: str) -> timedelta:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _fail_on(text: str) -> tuple[str, ...]:
    wanted = tuple(dict.fromkeys(w.strip() for w in text.split(",") if w.strip()))
    unknown = [w for w in wanted if w not in FAIL_CATEGORIES]
    if unknown or not wanted:
        raise argparse.ArgumentTypeError(
            f"unknown category {', '.join(unknown) or '(none)'}; "
            f"choose from {', '.join(FAIL_CATEGORIES)}"
        )
    return wanted


def add_parser(command: Callable[[str, str, str], argparse.ArgumentParser]) -> None:
    sub = command(
        "inventory",
        "every key, PAT and client secret of every machine user, managed or not",
        "List the machine users of the organizations the rotator's identity can read "
        "(its own by default) with each key, PAT and client secret: id, kind, created, "
        "expiry, and flags managed (by which target) / unmanaged / never-expires / "
        "expiring / expired. Changes nothing. Exit 3 when an organization cannot be "
        "read, 1 when a --fail-on category is present.",
    )
    sub.add_argument(
        "--org", action="append", default=[], metavar="ORG", help="an organization id (repeatable)"
    )
    sub.add_argument(
        "--all-orgs", action="store_true", help="every organization whose users it can read (v2)"
    )
    sub.add_argument(
        "--expiring",
        type=_duration,
        default=timedelta(days=14),
        metavar="DURATION",
        help="flag credentials expiring within this (default 14d)",
    )
    sub.add_argument(
        "--horizon",
        type=_duration,
        default=timedelta(days=1825),
        metavar="DURATION",
        help="an expiry further away than this counts as never-expires (default 1825d)",
    )
    sub.add_argument("--json", action="store_true", help="JSON lines (schema: config/cli.md)")
    sub.add_argument(
        "--fail-on",
        type=_fail_on,
        default=(),
        metavar="CATEGORIES",
        help=f"exit 1 when any credential is in one of these (comma-separated: "
        f"{','.join(FAIL_CATEGORIES)})",
    )
    sub.add_argument(
        "--suggest",
        action="store_true",
        help="print a target stanza for each unmanaged credential of a machine user",
    )


def check_args(args: argparse.Namespace, api: str) -> str | None:
    """A usage error, before anything connects (``api``: ``zitadel.api``)."""
    if args.org and args.all_orgs:
        return "inventory: give --org or --all-orgs, not both"
    if args.all_orgs and api == "v1":
        # v1 has no instance-wide user listing: it would fail in ZITADEL, not here
        return ("inventory: --all-orgs needs zitadel.api: v2; v1 lists users per "
                "organization only: name the orgs with --org")
    return None


# --------------------------------------------------------------------------- run


def read_managed(app: App) -> ManagedIndex:
    """The targets' Vault state: which credential each target manages."""
    states: list[tuple[Target, TargetState | None]] = []
    for target in app.config.targets:
        raw = app.store.read(app.engine.state_path(target))
        states.append((target, TargetState.from_dict(dict(raw.data)) if raw else None))
    return managed_index(states)


def own_org(app: App) -> str:
    """The org of the rotator's own machine user (from its key file's ``userId``)."""
    from rotator.app import key_file_provider  # noqa: PLC0415

    user_id = str(key_file_provider(app.config, app.store)().get("userId", ""))
    return app.transport.resolve_user(user_id).org_id


def cmd_inventory(app: App, args: argparse.Namespace) -> int:
    transport = cast(InventoryTransport, app.transport)
    problem = check_args(args, app.api)  # zitadel.api: auto may have found v1
    if problem:
        from rotator.cli import UsageError  # noqa: PLC0415

        raise UsageError(problem)
    orgs: list[str] | None = None if args.all_orgs else (list(args.org) or [own_org(app)])
    thresholds = Thresholds(expiring=args.expiring, horizon=args.horizon)
    inventory = take_inventory(transport, orgs, read_managed(app), app.clock.now(), thresholds)
    if args.json:
        write_json_lines(inventory, sys.stdout)
    else:
        write_table(inventory, sys.stdout)
    if args.suggest:
        write_suggestions(app, inventory, sys.stdout)
    return exit_code(inventory, args.fail_on)


def exit_code(inventory: Inventory, fail_on: Sequence[str]) -> int:
    if any(not o.readable for o in inventory.orgs):
        return UNAVAILABLE
    if any(inventory.present(category) for category in fail_on):
        return FAILED
    return OK


# --------------------------------------------------------------------------- output


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value else None


def record(item: InventoryItem, now: datetime) -> dict[str, Any]:
    return {
        "type": "credential",
        "org_id": item.org_id,
        "user_id": item.user_id,
        "username": item.username,
        "kind": item.kind,
        "id": item.id,
        "created_at": _iso(item.created_at),
        "expires_at": _iso(item.expires_at),
        "expires_in_seconds": int((item.expires_at - now).total_seconds()),
        "flags": list(item.flags),
        "managed_by": item.managed_by,
    }


def write_json_lines(inventory: Inventory, out: TextIO) -> None:
    for org in inventory.orgs:
        out.write(
            json.dumps(
                {
                    "type": "org",
                    "org_id": org.org_id,
                    "readable": org.readable,
                    "machine_users": org.machine_users,
                    "error": org.error,
                }
            )
            + "\n"
        )
    for item in inventory.items:
        out.write(json.dumps(record(item, inventory.taken_at)) + "\n")


def relative(value: datetime, now: datetime) -> str:
    from rotator.cli import relative as rel  # noqa: PLC0415 - one wording for every command

    return rel(value, now)


def _expiry_text(item: InventoryItem, now: datetime) -> str:
    if item.kind == "secret":
        return "never (secrets do not expire)"
    when = item.expires_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    if item.expires_at.year >= 9999:
        return f"{when} (never)"
    return f"{when} ({relative(item.expires_at, now)})"


def write_table(inventory: Inventory, out: TextIO) -> None:
    now = inventory.taken_at
    rows = [["ORG", "USER", "KIND", "ID", "CREATED", "EXPIRES", "FLAGS"]]
    for i in inventory.items:
        flags = ", ".join(f"managed ({i.managed_by})" if f == "managed" else f for f in i.flags)
        created = i.created_at.astimezone(UTC).strftime("%Y-%m-%d") if i.created_at else "-"
        rows.append(
            [i.org_id, i.username or i.user_id, i.kind, i.id, created, _expiry_text(i, now), flags]
        )
    if len(rows) > 1:
        widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
        for row in rows:
            out.write("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
            out.write("\n")
    for org in inventory.orgs:
        if org.readable:
            count = sum(1 for i in inventory.items if i.org_id == org.org_id)
            out.write(
                f"org {org.org_id}: {org.machine_users} machine user(s), {count} credential(s)\n"
            )
        else:
            out.write(f"org {org.org_id}: NOT READABLE: {org.error}\n")
    t = inventory.thresholds
    out.write(
        f"(expiring: within {format_duration(t.expiring)}; never-expires: 9999-12-31 or "
        f"beyond {format_duration(t.horizon)})\n"
    )


def write_suggestions(app: App, inventory: Inventory, out: TextIO) -> None:
    found = suggestions(inventory)
    if not found:
        out.write("# --suggest: no unmanaged credential on a machine user\n")
        return
    taken = {t.name for t in app.config.targets}
    out.write("# targets to paste under `targets:` in the configuration\n")
    for s in found:
        name = s.name
        n = 2
        while name in taken:
            name, n = f"{s.name}-{n}", n + 1
        taken.add(name)
        existing = app.store.read(s.vault_path)
        out.write(stanza(replace(s, name=name, adopt=existing is not None)))
