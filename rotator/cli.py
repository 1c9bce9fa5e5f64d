"""The ``rotator`` command line.

Every command that rotates goes through :meth:`Engine.reconcile`, the same
code path as the daemon's schedule.  Output goes to stdout (tables or
``--json``); audit events go to stdout for ``run`` (the daemon's log stream)
and to stderr for the other commands, so ``status --json`` stays pure JSON;
``audit.file`` gets them all.  Errors are one line on stderr.

No secret is ever printed: results carry ids, dates and states only, and an
unexpected exception is reported by its type name (``--debug`` for the
traceback).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import importlib
import io
import json
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, is_dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import IntEnum
from typing import IO, TYPE_CHECKING, Any, TextIO, TypeVar

import argcomplete

from rotator.config import DEFAULT_CONFIG_PATH, Config, format_duration, load_config, parse_duration
from rotator.errors import (
    ConfigError,
    RotatorError,
    VaultError,
    VerificationError,
    ZitadelError,
)
from rotator.model import Target, Trigger
from rotator.progress import progress, terminal_stream
from rotator.report import Outcome, RotationResult, StatusLabel, TargetStatus
from rotator.windows import ScheduledTarget, project, unsatisfiable

if TYPE_CHECKING:  # imported where used: `validate` and `--help` need neither Vault nor logging
    import structlog

    from rotator.app import App
    from rotator.audit import AuditLog
    from rotator.status_index import Snapshot


class UsageError(Exception):
    """A command line that cannot be carried out (exit 2)."""


class Exit(IntEnum):
    OK = 0
    FAILED = 1  # at least one target failed
    USAGE = 2  # configuration or command-line error
    UNAVAILABLE = 3  # Vault or ZITADEL unreachable or refusing us at start
    STUCK = 4  # at least one target is stuck (needs `rotate --force`)


EPILOG = """\
exit codes:
  0  success (nothing failed)
  1  at least one target failed (it will be retried; see `rotator status`),
     or `rotate` refused to remove a credential still in grace (--force does)
  2  configuration or usage error (nothing was done), or `plan` found a
     schedule that cannot be kept
  3  Vault or ZITADEL unreachable or refusing the rotator's credentials at
     start (or lost during a read-only command)
  4  at least one target is stuck after repeated failures; fix the cause, then
     `rotator rotate --force TARGET`

The configuration file is --config FILE, else $ROTATOR_CONFIG, else
/etc/zitadel-rotator/config.yaml. Reference: config/reference.md.
"""

ROTATE_HELP = """\
Rotate now: every named target (or all with --all) gets a new credential,
whether or not it is due, through the same code path as the schedule
(an interrupted rotation is finished first). A target whose previous
credential is still in grace is refused: rotating would remove that
credential at once, under consumers that may still use it; --force does it.
A stuck target is left alone unless --force is given, which clears its
stuck state and failure count first.
--dry-run prints what would happen and changes nothing.
"""


# --------------------------------------------------------------------------- argv


def _common(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """Options accepted both before and after the subcommand."""
    default: Any = None if top else argparse.SUPPRESS
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=default,
        help="configuration file (default: $ROTATOR_CONFIG or " + DEFAULT_CONFIG_PATH + ")",
    )
    parser.add_argument(
        "--log-format",
        choices=("json", "console"),
        default="json" if top else argparse.SUPPRESS,
        help="format of log and audit lines (default: json)",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        default=False if top else argparse.SUPPRESS,
        help="debug logging, and a traceback on unexpected errors",
    )


def _horizon(text: str) -> timedelta:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="rotator",
        description="Rotates ZITADEL service-user keys and PATs into HashiCorp Vault.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(root, top=True)
    root.add_argument("--version", action=_Version, nargs=0, help="show the version and exit")
    commands = root.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help_: str, description: str | None = None) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            help=help_,
            description=description or help_,
            epilog=EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        _common(sub, top=False)
        return sub

    run = command("run", "the daemon: rotate every target when due, until stopped")
    run.add_argument(
        "--once", action="store_true", help="one reconcile pass over all targets, then exit"
    )

    rotate = command("rotate", "rotate now", ROTATE_HELP)
    _target_names(rotate.add_argument("targets", nargs="*", metavar="TARGET"))
    rotate.add_argument("--all", action="store_true", help="every configured target")
    rotate.add_argument(
        "--force", action="store_true", help="also rotate stuck targets (clears stuck)"
    )
    rotate.add_argument(
        "--dry-run", action="store_true", help="show what would happen; change nothing"
    )
    rotate.add_argument("--json", action="store_true", help="machine-readable output")
    rotate.add_argument(
        "--emergency",
        action="store_true",
        help="web key targets only: create and activate a new key at once and delete the "
        "compromised one (relying parties with a cached JWKS reject new tokens until they "
        "refresh it)",
    )
    rotate.add_argument(
        "--concurrency",
        type=int,
        metavar="N",
        help="targets rotated at once (default: daemon.concurrency)",
    )

    status = command("status", "current credential, expiry, next rotation and state per target")
    _target_names(status.add_argument("targets", nargs="*", metavar="TARGET", help="default: all"))
    status.add_argument("--json", action="store_true", help="machine-readable output")
    _fresh(status)

    plan = command(
        "plan",
        "what would happen and when, changing nothing",
        "What reconcile would do now for each target, and every rotation projected "
        "over --horizon against windows, freezes and expiry. Changes nothing. Exits 2 "
        "when a rotation cannot be scheduled as configured.",
    )
    plan.add_argument(
        "--horizon",
        type=_horizon,
        default=timedelta(days=90),
        help="how far ahead to project (default 90d)",
    )
    plan.add_argument("--json", action="store_true", help="machine-readable output")
    _fresh(plan)

    validate = command(
        "validate",
        "check the configuration and the files it names (no network)",
        "Check the configuration file, and read the files it names as the rotator "
        "will: the own key file (JSON, fields, PEM private key), CA bundles (PEM "
        "certificates) and Vault auth files. Nothing connects. Exit 2 on any problem.",
    )
    validate.add_argument("--json", action="store_true", help="machine-readable output")
    validate.add_argument(
        "--config-only",
        action="store_true",
        help="do not read the files it names (a config meant for another machine, "
        "e.g. one rendered from the Helm chart)",
    )
    validate.add_argument(
        "--online",
        action="store_true",
        help="also connect and check that every target's users exist in ZITADEL and are "
        "machine users (two identities: two different ones)",
    )

    verify = command(
        "verify",
        "prove the credentials stored in Vault work",
        "Read each target's credential from Vault and prove it at ZITADEL: a "
        "jwt-bearer token exchange for a key, userinfo for a PAT. Changes nothing.",
    )
    _target_names(verify.add_argument("targets", nargs="*", metavar="TARGET"))
    verify.add_argument("--all", action="store_true", help="every configured target")
    verify.add_argument("--json", action="store_true", help="machine-readable output")

    from rotator import inventory_cli  # noqa: PLC0415 - keeps this function's imports local

    inventory_cli.add_parser(command)

    completion = command(
        "completion",
        "print the shell completion script (bash, zsh or fish)",
        "Print a completion script for SHELL. Install it with, for example:\n"
        "  bash: rotator completion bash > /etc/bash_completion.d/rotator\n"
        "  zsh:  rotator completion zsh > \"${fpath[1]}/_rotator\"\n"
        "  fish: rotator completion fish > ~/.config/fish/completions/rotator.fish",
    )
    completion.add_argument("shell", choices=("bash", "zsh", "fish"))
    return root


def _fresh(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="read every target's state from Vault instead of the status index "
        "(one read per target: slower over many targets)",
    )


class _Version(argparse.Action):
    """``--version``: the package metadata is looked up only when asked for
    (importlib.metadata costs every command ~15 ms of start-up otherwise)."""

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        from rotator import __version__  # noqa: PLC0415

        sys.stdout.write(f"rotator {__version__}\n")  # stdout, as argparse's own action
        parser.exit()


def _target_names(action: argparse.Action) -> None:
    """Complete TARGET with the names in the configuration (when it loads)."""

    def names(parsed_args: argparse.Namespace, **_: Any) -> list[str]:
        path = (
            getattr(parsed_args, "config", None)
            or os.environ.get("ROTATOR_CONFIG")
            or DEFAULT_CONFIG_PATH
        )
        try:
            return [t.name for t in load_config(path).targets]
        except Exception:  # completion must never fail loudly
            return []

    action.completer = names  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- output helpers


def _when(value: datetime | None) -> str:
    return "-" if value is None else _when_utc(value)


@functools.lru_cache(maxsize=4096)
def _when_utc(value: datetime) -> str:
    # cached, and no strftime: `plan` writes four per projected rotation (160,000 at
    # 10,000 targets), most of them one of a few midnights
    t = value.astimezone(UTC)
    return f"{t.year:04d}-{t.month:02d}-{t.day:02d} {t.hour:02d}:{t.minute:02d} UTC"


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, timedelta):
        return format_duration(value)
    if is_dataclass(value) and not isinstance(value, type):
        return {k: _jsonable(v) for k, v in asdict(value).items()}
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _table(rows: Sequence[Sequence[str]], out: TextIO) -> None:
    widths = [max(map(len, column)) for column in zip(*rows, strict=True)]
    # one format and one write: `plan` tables 40,000 rows at 10,000 targets
    line = "  ".join(f"{{:<{width}}}" for width in widths)
    out.write("".join(line.format(*row).rstrip() + "\n" for row in rows))


def _setup_logging(fmt: str, debug: bool) -> None:
    """Route stdlib logging (ours and the libraries') through structlog's
    renderers: one JSON object per record (``timestamp``, ``level``, ``logger``,
    ``event`` and the record's ``extra`` fields) or a console line."""
    import structlog  # noqa: PLC0415 - not loaded for `validate`

    renderer: structlog.types.Processor
    drop: tuple[str, ...]
    if fmt == "json":
        # No traceback in JSON: a library's exception text may quote a URL
        # (a webhook URL is a secret) and the lines are for machines.
        renderer = structlog.processors.JSONRenderer(default=str)
        drop = ("exc_info", "stack_info")
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False)
        drop = ()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                # the audit lines' format (``...Z``): one timestamp shape per stream
                structlog.processors.TimeStamper(fmt=_RFC3339_UTC, utc=True, key="timestamp"),
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                structlog.stdlib.ExtraAdder(),
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                _drop_keys(drop),
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.WARNING)
    # HTTP and gRPC client libraries log full URLs and headers at INFO/DEBUG: a
    # webhook URL is a secret (Slack), an Authorization header always is.
    for chatty in _WIRE_LOGGERS:
        logging.getLogger(chatty).setLevel(logging.WARNING)


_RFC3339_UTC = "%Y-%m-%dT%H:%M:%S.%fZ"


def _drop_keys(keys: Sequence[str]) -> structlog.types.Processor:
    def drop(_logger: object, _method: str, event: structlog.types.EventDict) -> Any:
        for key in keys:
            event.pop(key, None)
        return event

    return drop


_WIRE_LOGGERS = ("httpx", "httpcore", "urllib3", "requests", "hvac", "grpc", "authlib")


# --------------------------------------------------------------------------- commands


def exit_code(results: Iterable[RotationResult]) -> Exit:
    """STUCK beats FAILED beats OK."""
    outcomes = {r.outcome for r in results}
    if Outcome.STUCK in outcomes:
        return Exit.STUCK
    if Outcome.FAILED in outcomes or Outcome.REFUSED in outcomes:
        return Exit.FAILED
    return Exit.OK


def _print_results(results: Sequence[RotationResult], out: TextIO, *, as_json: bool) -> None:
    if as_json:
        out.write(json.dumps([_jsonable(r) for r in results], indent=2) + "\n")
        return
    rows = [["TARGET", "OUTCOME", "CREDENTIAL", "PREVIOUS", "EXPIRES", "NEXT RUN", "DETAIL"]]
    for r in results:
        detail = r.error or "; ".join(r.actions)
        rows.append(
            [
                r.target,
                r.outcome.value,
                r.credential_id or "-",
                r.previous_credential_id or "-",
                _when(r.expires_at),
                _when(r.next_run_at),
                detail,
            ]
        )
    _table(rows, out)


def _targets_of(config: Config, args: argparse.Namespace) -> list[Target]:
    """The targets a command acts on; a usage error (exit 2) before anything connects."""
    if args.command == "rotate":
        if args.emergency:
            from rotator.webkey_cli import Refused, check_emergency  # noqa: PLC0415

            try:
                check_emergency(config, args.targets, all_=args.all)
            except Refused as exc:
                raise UsageError(str(exc)) from None
            if not args.targets:
                raise UsageError("rotate --emergency: name the web key target(s)")
            return []
        return _select(config, args.targets, all_=args.all, command="rotate")
    if args.command == "status" and args.targets:
        return _select(config, args.targets, all_=False, command="status")
    if args.command == "verify":
        return _select(config, args.targets, all_=args.all, command="verify")
    if args.command == "inventory":
        from rotator.inventory_cli import check_args  # noqa: PLC0415

        problem = check_args(args, config.zitadel.api)
        if problem:
            raise UsageError(problem)
    return list(config.targets)


def _select(config: Config, names: Sequence[str], *, all_: bool, command: str) -> list[Target]:
    if names and all_:
        raise UsageError(f"{command}: give target names or --all, not both")
    if all_:
        return list(config.targets)
    if not names:
        raise UsageError(f"{command}: name at least one TARGET, or --all")
    if command == "verify" and any(config.webkey_target(n) for n in names):
        raise UsageError("verify: web key targets keep nothing in Vault to verify; "
                         "`rotator status` shows them")
    # web key targets are rotator/webkey_cli.py's
    return [config.target(n) for n in dict.fromkeys(names) if config.webkey_target(n) is None]


def cmd_rotate(app: App, args: argparse.Namespace) -> int:
    from rotator import webkey_cli  # noqa: PLC0415

    targets = [] if args.emergency else _targets_of(app.config, args)
    webkeys = webkey_cli.selected(app.config, args.targets, all_=args.all)

    def one(target: Target) -> RotationResult:
        # Without --force, a credential still in grace is not removed early
        # (outcome refused): consumers still on it would lose it unwarned.
        result = app.engine.reconcile(
            target,
            trigger=Trigger.CLI,
            rotate_now=True,
            unstick=args.force,
            supersede=args.force,
            dry_run=args.dry_run,
        )
        if result.outcome is Outcome.STUCK:
            hint = f"`rotator rotate --force {target.name}` once the cause is fixed"
            result = replace(result, error=f"stuck ({result.error}); {hint}")
        return result

    concurrency = args.concurrency or app.config.daemon.concurrency
    with progress("rotate", len(targets), failed=_failed) as advance:
        results = _each(one, targets, concurrency, progress=advance)
    if targets and not args.dry_run:  # the status index: what this command changed
        app.engine.publish_index(app.config.targets, targets)
    results += webkey_cli.rotate(app, webkeys, emergency=args.emergency, dry_run=args.dry_run)
    _print_results(results, sys.stdout, as_json=args.json)
    for r in results:
        if r.error:  # one line each on stderr too: the table may go to a file or a pipe
            sys.stderr.write(f"rotator: {r.target}: {r.outcome.value}: {_one_line(r.error)}\n")
    return exit_code(results)


def _one_line(text: str) -> str:
    return " ".join(text.split())


T = TypeVar("T")
R = TypeVar("R")


def _each(
    fn: Callable[[T], R],
    items: Sequence[T],
    concurrency: int,
    *,
    progress: Callable[[R], None] | None = None,
) -> list[R]:
    """``fn`` over ``items`` on ``concurrency`` threads, results in order;
    ``progress`` is called with each result as soon as it is there (any thread)."""
    if progress is not None:
        inner, report = fn, progress

        def fn(item: T) -> R:
            result = inner(item)
            report(result)
            return result

    if concurrency <= 1 or len(items) <= 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(concurrency, len(items))) as pool:
        return list(pool.map(fn, items))


def _failed(result: RotationResult) -> bool:
    return result.outcome in (Outcome.FAILED, Outcome.STUCK, Outcome.REFUSED)


def _is_stuck(status: TargetStatus) -> bool:
    return status.state == "stuck"


def relative(value: datetime, now: datetime) -> str:
    """``in 29d``, ``in 5h``, ``in 12m``, ``3d ago``, ``now``: one unit, rounded down."""
    seconds = (value - now).total_seconds()
    span = abs(seconds)
    if span < 60:
        return "now"
    if span >= 2 * 86400:
        text = f"{int(span // 86400)}d"
    elif span >= 2 * 3600:
        text = f"{int(span // 3600)}h"
    else:
        text = f"{int(span // 60)}m"
    return f"in {text}" if seconds > 0 else f"{text} ago"


def _when_rel(value: datetime | None, now: datetime) -> str:
    """``2024-06-01 00:00 UTC (in 29d)``."""
    return "-" if value is None else f"{_when(value)} ({relative(value, now)})"


def _state_text(s: TargetStatus, now: datetime) -> str:
    if s.state is StatusLabel.FAILING:
        return f"failing ({s.failures} failure{'' if s.failures == 1 else 's'})"
    if s.state is StatusLabel.INTERRUPTED:
        return "interrupted (resumes on next run)"
    if s.state is StatusLabel.ROTATING and s.rotating_until is not None:
        return f"rotating (by {s.rotating_owner}, deadline {relative(s.rotating_until, now)})"
    return str(s.state)


def _next_text(s: TargetStatus, now: datetime) -> str:
    text = _when_rel(s.next_rotation_at, now)
    if s.next_rotation_at is not None and s.next_action in ("retry", "resume"):
        text = text[:-1] + f", {s.next_action})"
    return text


def _failing(status: TargetStatus) -> bool:
    return _is_stuck(status) or bool(status.failures)


def _status_rows(statuses: Sequence[TargetStatus], now: datetime) -> list[list[str]]:
    rows = [["TARGET", "KIND", "CREDENTIAL", "EXPIRES", "NEXT ROTATION", "VAULT", "STATE"]]
    for s in statuses:
        rows.append(
            [
                s.target,
                s.kind,
                s.credential_id or "-",
                _when_rel(s.expires_at, now),
                _next_text(s, now),
                str(s.vault_version) if s.vault_version else "-",
                _state_text(s, now),
            ]
        )
    return rows


def status_notes(s: TargetStatus, now: datetime) -> list[str]:
    """The lines under the status table for ``s``: what the table cannot say."""
    notes = list(s.notes)  # identities, the one-identity client-secret caveat
    if s.previous_credential_id and s.retire_at:
        notes.append(
            f"{s.target}: previous {s.kind} {s.previous_credential_id} stays valid until "
            f"it is retired at {_when_rel(s.retire_at, now)}"
        )
    if s.state is StatusLabel.MISSING and s.last_success_at is None and not s.failures:
        notes.append(
            f"{s.target}: nothing rotated yet; `rotator rotate {s.target}` creates its first "
            f"{s.kind} now (the daemon does on its next pass)"
        )
    if s.last_error:
        notes.append(f"{s.target}: last error: {s.last_error}")
    return notes


def _index(app: App, targets: Sequence[Target], args: argparse.Namespace) -> Snapshot:
    """The status index's entries for ``targets`` (none with ``--fresh``)."""
    from rotator.status_index import Snapshot  # noqa: PLC0415

    if args.fresh or not targets:
        return Snapshot(entries={}, as_of=None)
    return app.engine.read_index(targets)


def _index_note(snapshot: Snapshot, read: int, now: datetime) -> str:
    """Where the figures come from: the index (and how old it is), the states, or both."""
    if not snapshot.entries:
        return f"read from {read} target state{'' if read == 1 else 's'} in Vault (now)"
    text = (f"from the status index as of {_when_rel(snapshot.as_of, now)} "
            f"({len(snapshot.entries)} target{'' if len(snapshot.entries) == 1 else 's'})")
    if read:
        text += f"; {read} not in it read from their state"
    return text + "; `--fresh` reads every target's state"


def cmd_status(app: App, args: argparse.Namespace) -> int:
    from rotator import webkey_cli  # noqa: PLC0415

    targets = _targets_of(app.config, args)
    snapshot = _index(app, targets, args)
    missing = [t for t in targets if t.name not in snapshot.entries]
    with progress("status", len(missing), failed=_failing, delay=_QUIET_SECONDS) as advance:
        read = _each(app.engine.status, missing, _READ_CONCURRENCY, progress=advance)
    fresh = {s.target: s for s in read}
    statuses = [
        fresh[t.name] if t.name in fresh
        else app.engine.status_from(t, snapshot.entries[t.name].state)
        for t in targets
    ]
    webkeys = webkey_cli.status(app, webkey_cli.selected(app.config, args.targets, all_=False))
    if args.json:
        everything = [_jsonable(s) for s in [*statuses, *webkeys]]
        sys.stdout.write(json.dumps(everything, indent=2) + "\n")
    else:
        now = app.clock.now()
        if targets:
            _table(_status_rows(statuses, now), sys.stdout)
        for s in statuses:
            for note in status_notes(s, now):
                sys.stdout.write(note + "\n")
        if targets:
            sys.stdout.write(_index_note(snapshot, len(missing), now) + "\n")
        if webkeys:
            webkey_cli.print_status(webkeys, sys.stdout, _table)
    if webkey_cli.failing(webkeys) and not any(_is_stuck(s) for s in statuses):
        return Exit.FAILED
    if any(_is_stuck(s) for s in statuses):
        return Exit.STUCK
    if any(s.failures or s.state == "expired" for s in statuses):
        return Exit.FAILED
    return Exit.OK


def _plan_all(app: App, targets: Sequence[Target], snapshot: Snapshot) -> list[RotationResult]:
    """Every target's plan: from its index summary, or its state when not indexed."""
    unindexed = [t for t in targets if t.name not in snapshot.entries]
    with progress("plan", len(unindexed), failed=_failed, delay=_QUIET_SECONDS) as advance:
        read = _each(app.engine.plan, unindexed, _READ_CONCURRENCY, progress=advance)
    planned = {r.target: r for r in read}
    # From the index it is CPU only with v2 (ZITADEL once per org listing): threads
    # would only contend.  v1 lists per user: those calls go out side by side.
    indexed = [t for t in targets if t.name not in planned]
    per_user = app.engine.transport.api != "v2"
    for result in _each(
        lambda t: app.engine.plan_from(t, snapshot.entries[t.name].state),
        indexed,
        _READ_CONCURRENCY if per_user else 1,
    ):
        planned[result.target] = result
    results = [planned[t.name] for t in targets]
    return results


def cmd_plan(app: App, args: argparse.Namespace) -> int:
    from rotator import webkey_cli  # noqa: PLC0415

    now = app.clock.now()
    targets = app.config.targets
    snapshot = _index(app, targets, args)

    results = _plan_all(app, targets, snapshot)
    missing = len(targets) - len(snapshot.entries)
    scheduled = [
        ScheduledTarget(
            target=target,
            windows=app.config.schedule_for(target.name).windows,
            freezes=app.config.schedule_for(target.name).freeze,
            expires_at=result.expires_at,
        )
        for target, result in zip(app.config.targets, results, strict=True)
    ]
    projected = project(scheduled, args.horizon, now)
    problems = unsatisfiable(projected)
    if args.json:
        document = {
            "now": _jsonable(now),
            "index_as_of": _jsonable(snapshot.as_of),
            "horizon": format_duration(args.horizon),
            "targets": [_jsonable(r) for r in results],
            "rotations": [_jsonable(p) for p in projected],
            "webkeys": webkey_cli.plan(app, args.horizon, io.StringIO()),
        }
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
    else:
        sys.stdout.write(f"now: {_when(now)}\n")
        if targets:
            sys.stdout.write(_index_note(snapshot, missing, now) + "\n")
        sys.stdout.write("".join(
            f"{r.target}: cannot plan: {r.error}\n" if r.outcome is Outcome.FAILED
            else "".join(f"{r.target}: {action}\n" for action in r.actions or ("nothing to do",))
            for r in results
        ))
        if projected:
            sys.stdout.write(f"\nrotations in the next {format_duration(args.horizon)}:\n")
            rows = [["AT", "TARGET", "REASON", "OLD EXPIRES", "NEW EXPIRES", "RETIRE OLD"]]
            rows += [
                [
                    _when(p.at),
                    p.target,
                    p.reason,
                    _when(p.old_expires_at),
                    _when(p.new_expires_at),
                    _when(p.retire_at),
                ]
                for p in projected
            ]
            _table(rows, sys.stdout)
        if app.config.webkey_targets:
            sys.stdout.write(f"\nweb key steps in the next {format_duration(args.horizon)}:\n")
            webkey_cli.plan(app, args.horizon, sys.stdout)
        for p in problems:
            for problem in p.problems:
                sys.stderr.write(f"rotator: plan: {p.target} at {_when(p.at)}: {problem}\n")
    if problems:
        return Exit.USAGE
    if any(r.outcome is Outcome.FAILED for r in results):
        return Exit.FAILED
    return Exit.OK


def verify_one(app: App, target: Target) -> dict[str, Any]:
    """Prove the credential stored for ``target`` works; the verdict as a record."""
    from rotator.kinds import ops_for  # noqa: PLC0415 - not for validate or --help

    ops = ops_for(target.kind)
    record: dict[str, Any] = {
        "target": target.name,
        "kind": target.kind.value,
        "vault_path": target.vault_path,
        "vault_version": None,
        "credential_id": None,
        "ok": False,
        "error": None,
    }
    secret = app.store.read(target.vault_path)
    if secret is None:
        record["error"] = f"no secret at {target.vault_path}"
        return record
    data = {k: v for k, v in secret.data.items() if k != "previous"}
    record["vault_version"] = secret.version
    try:
        record["credential_id"] = ops.credential_id(data)
        ops.verify(app.oidc, data)
    except (VerificationError, ZitadelError) as exc:
        record["error"] = f"verification failed: {exc}"
        return record
    except (KeyError, TypeError, ValueError):
        record["error"] = f"the secret at {target.vault_path} is not a {ops.label} record"
        return record
    record["ok"] = True
    record["proof"] = ops.proof
    return record


def cmd_verify(app: App, args: argparse.Namespace) -> int:
    targets = _targets_of(app.config, args)
    records = _each(lambda t: verify_one(app, t), targets, _READ_CONCURRENCY)
    if args.json:
        sys.stdout.write(json.dumps(records, indent=2) + "\n")
    for r, target in zip(records, targets, strict=True):
        if not r["ok"]:
            sys.stderr.write(f"rotator: {r['target']}: {r['error']}\n")
        elif not args.json:
            from rotator.kinds import ops_for  # noqa: PLC0415 - not for validate or --help

            label = ops_for(target.kind).label
            sys.stdout.write(
                f"{r['target']}: {label} {r['credential_id']} works ({r['proof']}); "
                f"Vault {r['vault_path']} version {r['vault_version']}\n"
            )
    return Exit.OK if all(r["ok"] for r in records) else Exit.FAILED


def cmd_validate(config: Config, args: argparse.Namespace) -> int:
    """The configuration loaded (or we would not be here); now the files it names."""
    checks = []
    if not args.config_only:
        from rotator.preflight import local_checks  # noqa: PLC0415 - reads the key file (PEM)

        checks = local_checks(config)
    errors = [c for c in checks if not c.ok and not c.warning_only]
    users = _identity_problems(config) if args.online and not errors else []
    if args.json:
        document = {
            "ok": not errors,
            "config": config.source,
            "targets": [t.name for t in config.targets] + [t.name for t in config.webkey_targets],
            "warnings": list(config.warnings),
            "files": [
                {"field": c.field, "path": c.path, "ok": c.ok, "problem": c.problem}
                for c in checks
            ],
        }
        if args.online:
            document["users"] = users
            document["ok"] = document["ok"] and not users
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
        return Exit.USAGE if errors or users else Exit.OK
    for warning in config.warnings:
        sys.stderr.write(f"rotator: warning: {config.source}: {warning}\n")
    for c in checks:
        if not c.ok:
            kind = "warning" if c.warning_only else "error"
            sys.stderr.write(f"rotator: {kind}: {config.source}: {c.field}: {c.path} {c.problem}\n")
    for problem in users:
        sys.stderr.write(f"rotator: error: {config.source}: {problem}\n")
    if errors or users:
        return Exit.USAGE
    count = len(config.targets) + len(config.webkey_targets)
    noun = "target" if count == 1 else "targets"
    files = f", {len(checks)} file{'' if len(checks) == 1 else 's'} checked" if checks else ""
    sys.stdout.write(f"config OK: {count} {noun}{files}\n")
    return Exit.OK


def _identity_problems(config: Config) -> list[str]:
    """``validate --online``: every target's users, asked of ZITADEL (where reachable)."""
    from rotator.app import build  # noqa: PLC0415 - only this option connects
    from rotator.audit import AuditLog  # noqa: PLC0415

    try:
        app = build(config, audit=AuditLog(stream=io.StringIO()), require_zitadel=False)
    except RotatorError as exc:  # Vault unreachable or sealed: nothing to ask with
        sys.stderr.write(f"rotator: warning: cannot connect, users not checked: {exc}\n")
        return []
    try:
        if app.zitadel_error is not None:
            sys.stderr.write(f"rotator: warning: ZITADEL not reachable, users not checked: "
                             f"{app.zitadel_error}\n")
            return []
        problems = [p for target in config.targets for p in app.engine.identity_problems(target)]
        if config.webkey_targets:
            from rotator.webkey_runner import WebKeyRunner  # noqa: PLC0415

            problems += WebKeyRunner(app).permission_problems()
        return problems
    finally:
        app.close()


def cmd_completion(args: argparse.Namespace) -> int:
    from argcomplete.shell_integration import shellcode  # noqa: PLC0415 - completion only

    sys.stdout.write(shellcode(["rotator"], shell=args.shell))
    return Exit.OK


def cmd_run(app: App, args: argparse.Namespace) -> int:
    """``run --once``; the long-running ``run`` is :func:`_serve`."""
    # Imported here: the scheduler, metrics and HTTP server are only for `run`.
    from rotator.daemon import run_daemon  # noqa: PLC0415

    return run_daemon(app, app.config, once=args.once)


def _serve(config: Config, audit: AuditLog, connect: Callable[[], App]) -> int:
    """The daemon connects itself, and keeps trying while ZITADEL or Vault is down."""
    from rotator.daemon import serve  # noqa: PLC0415

    built: list[App] = []

    def build_app() -> App:
        app = connect()
        built.append(app)
        logging.getLogger("rotator").info("using ZITADEL API %s", app.api)
        return app

    try:
        return serve(config, audit, build_app)
    finally:
        for app in built:
            app.close()


# --------------------------------------------------------------------------- main


def _inventory(app: App, args: argparse.Namespace) -> int:
    from rotator.inventory_cli import cmd_inventory  # noqa: PLC0415

    return cmd_inventory(app, args)


Handler = Callable[["App", argparse.Namespace], int]
_HANDLERS: dict[str, Handler] = {
    "run": cmd_run,
    "rotate": cmd_rotate,
    "status": cmd_status,
    "plan": cmd_plan,
    "verify": cmd_verify,
    "inventory": _inventory,
}
#: Commands that only read Vault keep working while ZITADEL is unreachable.
_VAULT_ONLY = frozenset({"status"})
#: Commands that never call the management API (no API detection for them).
_NO_MANAGEMENT_API = frozenset({"status", "verify"})


#: Reads of many targets' state (status, plan) run this many at once.
_READ_CONCURRENCY = 16
#: status and plan show progress only once they have taken this long.
_QUIET_SECONDS = 2.0
#: The cyclic collector's thresholds in one-shot commands (the default is 700, 10, 10).
ONE_SHOT_GC_THRESHOLDS = (100_000, 20, 20)


def _fail(message: str, exc: BaseException | None = None, *, debug: bool = False) -> None:
    sys.stderr.write(f"rotator: error: {message}\n")
    if debug and exc is not None:  # what lies beneath, scrubbed (rotator/causes.py)
        from rotator.causes import cause_lines  # noqa: PLC0415

        for line in cause_lines(exc):
            sys.stderr.write(f"rotator: debug: {line}\n")


def main(argv: Sequence[str] | None = None) -> int:
    root = parser()
    argcomplete.autocomplete(root)  # answers a shell's completion request, then exits
    args = root.parse_args(argv)
    if args.command == "completion":
        return cmd_completion(args)
    if args.command != "run" or args.once:
        # A one-shot command builds its objects and exits: the cyclic collector,
        # run every 700 allocations, rescanned an ever larger heap (a fifth of
        # `plan`'s CPU at 10,000 targets).  The daemon keeps the default.
        gc.set_threshold(*ONE_SHOT_GC_THRESHOLDS)
    if args.command != "validate":  # it logs nothing: spare it structlog's import
        _setup_logging(args.log_format, args.debug)
    if not args.debug:
        # Library deprecation notices (authlib inside zitadel-client) are not for
        # operators.  authlib installs an "always" filter on import: import it
        # first so ours goes in front of it.
        with contextlib.suppress(ImportError):
            importlib.import_module("authlib.deprecate")
        warnings.simplefilter("ignore", DeprecationWarning)
    config_path = args.config or os.environ.get("ROTATOR_CONFIG") or DEFAULT_CONFIG_PATH
    try:
        return _main(args, config_path)
    except UsageError as exc:
        _fail(str(exc))
        return Exit.USAGE
    except ConfigError as exc:
        # Errors raised below the config layer know the field, not the file.
        message = str(exc) if exc.file else f"{config_path}: {exc}"
        if args.command == "validate" and args.json:
            sys.stdout.write(json.dumps({"ok": False, "config": config_path, "error": message}))
            sys.stdout.write("\n")
        _fail(message)
        return Exit.USAGE
    except KeyboardInterrupt:
        _fail("interrupted")
        return 130
    except Exception as exc:
        if args.debug:
            raise
        # The message of an unexpected exception is not vetted for secrets: name its type only.
        _fail(f"unexpected {type(exc).__name__} (run with --debug for a traceback)")
        return Exit.FAILED


def _main(args: argparse.Namespace, config_path: str) -> int:
    config = load_config(config_path)
    if args.command == "validate":
        return cmd_validate(config, args)

    # Imported only by the commands that connect: Vault, HTTP and crypto clients.
    from rotator.app import build  # noqa: PLC0415
    from rotator.audit import AuditLog  # noqa: PLC0415

    targets = _targets_of(config, args)  # usage errors before anything connects
    if args.command != "run" and not args.debug:
        # One-shot commands: their errors are reported once, at the end.
        logging.getLogger().setLevel(logging.ERROR)
    elif not args.debug:
        # The daemon tells its operator where it listens, each target's next
        # run and a summary per pass (rotator/oplog.py): our INFO, not the libraries'.
        logging.getLogger("rotator").setLevel(logging.INFO)
    # one-shot commands: audit lines share stderr with the progress bar (if any)
    stream: IO[str] = sys.stdout if args.command == "run" else terminal_stream(sys.stderr)
    audit = AuditLog(
        stream=stream,
        file=config.audit.file,
        console=args.log_format == "console",
        trigger="schedule" if args.command == "run" else "cli",
    )
    connect = functools.partial(
        build,
        config,
        audit=audit,
        require_zitadel=args.command not in _VAULT_ONLY,
        probe_api=args.command not in _NO_MANAGEMENT_API,
        # rotate and plan call the management API at once: its client is
        # imported while the own token is fetched (web key targets do not use it)
        preload_transport=args.command in ("rotate", "plan") and bool(targets),
    )
    if args.command == "run" and not args.once:
        return _serve(config, audit, connect)
    try:
        app = connect()
    except ConfigError:
        raise
    except RotatorError as exc:
        _fail(f"cannot start: {exc}", exc, debug=args.debug)
        return Exit.UNAVAILABLE
    try:
        if app.zitadel_error is not None:
            sys.stderr.write(f"rotator: warning: ZITADEL not reachable: {app.zitadel_error}\n")
        logging.getLogger("rotator").info("using ZITADEL API %s", app.api)
        return _HANDLERS[args.command](app, args)
    except (UsageError, ConfigError):
        raise
    except (VaultError, ZitadelError) as exc:
        # The engine reports per-target failures itself; this is a read
        # (status, plan, verify) that lost Vault or ZITADEL mid-command.
        _fail(str(exc), exc, debug=args.debug)
        return Exit.UNAVAILABLE
    except RotatorError as exc:
        _fail(str(exc), exc, debug=args.debug)  # our own errors carry vetted, secret-free messages
        return Exit.FAILED
    finally:
        app.close()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
