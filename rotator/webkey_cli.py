"""The command line for ``kind: webkey`` targets: what ``rotate``, ``status``
and ``plan`` add for them (rotator/cli.py calls these; the protocol is
rotator/webkeys.py, its wiring rotator/webkey_runner.py).  No key material
exists on this side: ids, instants and counts only."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TextIO

from rotator.report import RotationResult
from rotator.webkeys import EMERGENCY_WARNING, WebKeyTarget, project

if TYPE_CHECKING:
    from rotator.app import App
    from rotator.config import Config
    from rotator.webkey_runner import WebKeyRunner, WebKeyStatus


class Refused(Exception):
    """A command line that cannot be carried out for web key targets."""


def selected(config: Config, names: Sequence[str], *, all_: bool) -> list[WebKeyTarget]:
    """The web key targets among ``names`` (all of them with ``all_`` or no names)."""
    if all_ or not names:
        return list(config.webkey_targets)
    return [t for n in dict.fromkeys(names) if (t := config.webkey_target(n)) is not None]


def check_emergency(config: Config, names: Sequence[str], *, all_: bool) -> None:
    """``--emergency`` is for web key targets, named one by one."""
    if all_:
        raise Refused("rotate --emergency: name the web key target(s); --all is refused")
    others = [n for n in names if config.webkey_target(n) is None]
    if others:
        kinds = {t.name: t.kind.value for t in config.targets}
        listed = ", ".join(f"{n} (kind {kinds.get(n, 'unknown')})" for n in others)
        raise Refused(f"rotate --emergency is only for kind webkey targets, not {listed}: "
                      "a compromised key or PAT is replaced with `rotator rotate --force`")


def runner(app: App) -> WebKeyRunner:
    from rotator.webkey_runner import WebKeyRunner  # noqa: PLC0415 - only with webkey targets

    return WebKeyRunner(app)


def rotate(app: App, targets: Sequence[WebKeyTarget], *, emergency: bool, dry_run: bool,
           err: TextIO = sys.stderr) -> list[RotationResult]:
    if not targets:
        return []
    run = runner(app)
    if emergency and not dry_run:
        for t in targets:
            err.write(f"rotator: warning: {t.name}: {EMERGENCY_WARNING}\n")
    return [run.run(t, rotate_now=True, emergency=emergency, trigger="cli", dry_run=dry_run)
            for t in targets]


def _when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC") if value else "-"


def status(app: App, targets: Sequence[WebKeyTarget]) -> list[WebKeyStatus]:
    if not targets:
        return []
    run = runner(app)
    return [run.status(t) for t in targets]


def print_status(statuses: Sequence[WebKeyStatus], out: TextIO,
                 table: Callable[[Sequence[Sequence[str]], TextIO], None]) -> None:
    rows = [["WEB KEY TARGET", "ACTIVE KEY", "SINCE", "STEP", "PUBLISHED", "NEXT STEP"]]
    rows += [[s.target, s.active_key_id or "-", _when(s.active_since), s.step,
              "?" if s.published is None else str(s.published), s.next_step or "-"]
             for s in statuses]
    table(rows, out)
    for s in statuses:
        if s.warning:
            out.write(f"{s.target}: WARNING: {s.warning}\n")
        elif s.emergency:
            out.write(f"{s.target}: the last rotation was an emergency rotation\n")
        if s.retiring:
            out.write(f"{s.target}: previous key(s) still published: {', '.join(s.retiring)}\n")
        if s.last_error:
            out.write(f"{s.target}: last error: {s.last_error}\n")


def failing(statuses: Sequence[WebKeyStatus]) -> bool:
    return any(s.last_error and s.last_result != "activated" for s in statuses)


def plan(app: App, horizon: timedelta, out: TextIO) -> list[dict[str, Any]]:
    """Each web key target's next step and its steps over ``horizon``."""
    if not app.config.webkey_targets:
        return []
    run = runner(app)
    now = app.clock.now()
    document = []
    for target in app.config.webkey_targets:
        state, _ = run.rotation.load(target)
        steps = project(target, state, now, horizon, **run.retry)
        first = run.steps(target, state)[:1]
        from rotator.webkey_runner import describe  # noqa: PLC0415

        out.write(f"{target.name}: next: {describe(first[0]) if first else 'nothing'}\n")
        for s in steps:
            out.write(f"  {_when(s.at)}  {s.step}"
                      + (f" {s.key_id}" if s.key_id else "") + (f" ({s.note})" if s.note else "")
                      + "\n")
        document.append({"target": target.name, "kind": "webkey",
                         "steps": [{"at": s.at.isoformat() if s.at else None, "step": s.step,
                                    "key_id": s.key_id, "note": s.note} for s in steps]})
    return document


__all__ = ["Refused", "check_emergency", "plan", "print_status", "rotate", "selected", "status"]
