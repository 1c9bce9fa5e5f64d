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
import importlib
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
from rotator.report import Outcome, RotationResult, TargetStatus
from rotator.windows import ScheduledTarget, project, unsatisfiable

if TYPE_CHECKING:  # imported where used: `validate` and `--help` need neither Vault nor logging
    import structlog

    from rotator.app import App
    from rotator.audit import AuditLog


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
  1  at least one target failed (it will be retried; see `rotator status`)
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
(an interrupted rotation is finished first; a credential still in grace
from an earlier rotation is retired). A stuck target is left alone unless
--force is given, which clears its stuck state and failure count first.
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
    rotate.add_argument("targets", nargs="*", metavar="TARGET")
    rotate.add_argument("--all", action="store_true", help="every configured target")
    rotate.add_argument(
        "--force", action="store_true", help="also rotate stuck targets (clears stuck)"
    )
    rotate.add_argument(
        "--dry-run", action="store_true", help="show what would happen; change nothing"
    )
    rotate.add_argument("--json", action="store_true", help="machine-readable output")
    rotate.add_argument(
        "--concurrency",
        type=int,
        metavar="N",
        help="targets rotated at once (default: daemon.concurrency)",
    )

    status = command("status", "current credential, expiry, next rotation and state per target")
    status.add_argument("targets", nargs="*", metavar="TARGET", help="default: all")
    status.add_argument("--json", action="store_true", help="machine-readable output")

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

    command("validate", "check the configuration (no network)")

    verify = command("verify", "prove the credential stored in Vault for TARGET works")
    verify.add_argument("target", metavar="TARGET")
    return root


# --------------------------------------------------------------------------- output helpers


def _when(value: datetime | None) -> str:
    if value is None:
        return "-"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


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
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        out.write(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
        out.write("\n")


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
                structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
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
    if Outcome.FAILED in outcomes:
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
        return _select(config, args.targets, all_=args.all, command="rotate")
    if args.command == "status" and args.targets:
        return _select(config, args.targets, all_=False, command="status")
    if args.command == "verify":
        return [config.target(args.target)]
    return list(config.targets)


def _select(config: Config, names: Sequence[str], *, all_: bool, command: str) -> list[Target]:
    if names and all_:
        raise UsageError(f"{command}: give target names or --all, not both")
    if all_:
        return list(config.targets)
    if not names:
        raise UsageError(f"{command}: name at least one TARGET, or --all")
    return [config.target(name) for name in dict.fromkeys(names)]


def cmd_rotate(app: App, args: argparse.Namespace) -> int:
    targets = _targets_of(app.config, args)

    def one(target: Target) -> RotationResult:
        if args.dry_run:
            return _forced_plan(app.engine.reconcile(target, trigger=Trigger.CLI, dry_run=True))
        result = app.engine.reconcile(
            target, trigger=Trigger.CLI, rotate_now=True, unstick=args.force
        )
        if result.outcome is Outcome.STUCK:
            hint = f"`rotator rotate --force {target.name}` once the cause is fixed"
            result = replace(result, error=f"stuck ({result.error}); {hint}")
        return result

    concurrency = args.concurrency or app.config.daemon.concurrency
    with progress("rotate", len(targets), failed=_failed) as advance:
        results = _each(one, targets, concurrency, progress=advance)
    _print_results(results, sys.stdout, as_json=args.json)
    return exit_code(results)


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
    return result.outcome in (Outcome.FAILED, Outcome.STUCK)


def _forced_plan(result: RotationResult) -> RotationResult:
    """A dry run of ``rotate``: it rotates now, due or not, instead of at the due time."""
    if any(a.startswith("rotate now") for a in result.actions):
        return result
    kept = tuple(a for a in result.actions if not a.startswith("rotate at "))
    return replace(result, actions=(*kept, "rotate now (requested)"))


def _is_stuck(status: TargetStatus) -> bool:
    return status.state == "stuck"


def _failing(status: TargetStatus) -> bool:
    return _is_stuck(status) or bool(status.failures)


def _status_rows(statuses: Sequence[TargetStatus]) -> list[list[str]]:
    rows = [["TARGET", "KIND", "CREDENTIAL", "EXPIRES", "NEXT ROTATION", "VAULT", "STATE"]]
    for s in statuses:
        state = s.state + (f" ({s.failures} failures)" if s.failures and s.state != "stuck" else "")
        rows.append(
            [
                s.target,
                s.kind,
                s.credential_id or "-",
                _when(s.expires_at),
                _when(s.next_rotation_at),
                str(s.vault_version) if s.vault_version else "-",
                state,
            ]
        )
    return rows


def cmd_status(app: App, args: argparse.Namespace) -> int:
    targets = _targets_of(app.config, args)
    with progress("status", len(targets), failed=_failing, delay=_QUIET_SECONDS) as advance:
        statuses = _each(app.engine.status, targets, _READ_CONCURRENCY, progress=advance)
    if args.json:
        sys.stdout.write(json.dumps([_jsonable(s) for s in statuses], indent=2) + "\n")
    else:
        _table(_status_rows(statuses), sys.stdout)
        for s in statuses:
            if s.last_error:
                sys.stdout.write(f"{s.target}: last error: {s.last_error}\n")
    if any(_is_stuck(s) for s in statuses):
        return Exit.STUCK
    if any(s.failures or s.state == "expired" for s in statuses):
        return Exit.FAILED
    return Exit.OK


def cmd_plan(app: App, args: argparse.Namespace) -> int:
    now = app.clock.now()
    targets = app.config.targets
    with progress("plan", len(targets), failed=_failed, delay=_QUIET_SECONDS) as advance:
        results = _each(app.engine.plan, targets, _READ_CONCURRENCY, progress=advance)
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
            "horizon": format_duration(args.horizon),
            "targets": [_jsonable(r) for r in results],
            "rotations": [_jsonable(p) for p in projected],
        }
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
    else:
        sys.stdout.write(f"now: {_when(now)}\n")
        for r in results:
            if r.outcome is Outcome.FAILED:
                sys.stdout.write(f"{r.target}: cannot plan: {r.error}\n")
                continue
            for action in r.actions or ("nothing to do",):
                sys.stdout.write(f"{r.target}: {action}\n")
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
        for p in problems:
            for problem in p.problems:
                sys.stderr.write(f"rotator: plan: {p.target} at {_when(p.at)}: {problem}\n")
    if problems:
        return Exit.USAGE
    if any(r.outcome is Outcome.FAILED for r in results):
        return Exit.FAILED
    return Exit.OK


def cmd_verify(app: App, args: argparse.Namespace) -> int:
    target = app.config.target(args.target)
    secret = app.store.read(target.vault_path)
    if secret is None:
        sys.stderr.write(f"rotator: {target.name}: no secret at {target.vault_path}\n")
        return Exit.FAILED
    data = {k: v for k, v in secret.data.items() if k != "previous"}
    from rotator.kinds import ops_for  # noqa: PLC0415

    ops = ops_for(target.kind)
    try:
        ops.verify(app.oidc, data)
        what = f"{ops.label} {ops.credential_id(data)} works ({ops.proof})"
    except (VerificationError, ZitadelError) as exc:
        sys.stderr.write(f"rotator: {target.name}: verification failed: {exc}\n")
        return Exit.FAILED
    sys.stdout.write(f"{target.name}: {what}; Vault {target.vault_path} version {secret.version}\n")
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


Handler = Callable[["App", argparse.Namespace], int]
_HANDLERS: dict[str, Handler] = {
    "run": cmd_run,
    "rotate": cmd_rotate,
    "status": cmd_status,
    "plan": cmd_plan,
    "verify": cmd_verify,
}
#: Commands that only read Vault keep working while ZITADEL is unreachable.
_VAULT_ONLY = frozenset({"status"})
#: Commands that never call the management API (no API detection for them).
_NO_MANAGEMENT_API = frozenset({"status", "verify"})


#: Reads of many targets' state (status, plan) run this many at once.
_READ_CONCURRENCY = 16
#: status and plan show progress only once they have taken this long.
_QUIET_SECONDS = 2.0


def _fail(message: str) -> None:
    sys.stderr.write(f"rotator: error: {message}\n")


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
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
        _fail(str(exc) if exc.file else f"{config_path}: {exc}")
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
        for warning in config.warnings:
            sys.stderr.write(f"rotator: warning: {config.source}: {warning}\n")
        noun = "target" if len(config.targets) == 1 else "targets"
        sys.stdout.write(f"config OK: {len(config.targets)} {noun}\n")
        return Exit.OK

    # Imported only by the commands that connect: Vault, HTTP and crypto clients.
    from rotator.app import build  # noqa: PLC0415
    from rotator.audit import AuditLog  # noqa: PLC0415

    _targets_of(config, args)  # usage errors before anything connects
    if args.command != "run" and not args.debug:
        # One-shot commands: their errors are reported once, at the end.
        logging.getLogger().setLevel(logging.ERROR)
    # one-shot commands: audit lines share stderr with the progress bar (if any)
    stream: IO[str] = sys.stdout if args.command == "run" else terminal_stream(sys.stderr)
    audit = AuditLog(stream=stream, file=config.audit.file, console=args.log_format == "console")
    connect = functools.partial(
        build,
        config,
        audit=audit,
        require_zitadel=args.command not in _VAULT_ONLY,
        probe_api=args.command not in _NO_MANAGEMENT_API,
    )
    if args.command == "run" and not args.once:
        return _serve(config, audit, connect)
    try:
        app = connect()
    except ConfigError:
        raise
    except RotatorError as exc:
        _fail(f"cannot start: {exc}")
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
        _fail(str(exc))
        return Exit.UNAVAILABLE
    except RotatorError as exc:
        _fail(str(exc))  # our own errors carry vetted, secret-free messages
        return Exit.FAILED
    finally:
        app.close()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
