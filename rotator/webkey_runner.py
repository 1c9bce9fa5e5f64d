"""``kind: webkey`` targets in the running rotator: the glue between an
:class:`~rotator.app.App` (Vault, the rotator's identity, audit, clock) and
:class:`~rotator.webkeys.WebKeyRotation`, shared by the CLI and the daemon.

Results come back as :class:`~rotator.report.RotationResult` (so ``rotate``
prints them and exit codes and metrics treat them like every other target),
with ``next_run_at`` from the target's state (:func:`rotator.webkeys.next_run_at`):
that is the daemon's time for the target, as for key and PAT targets.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from rotator.app import process_identity
from rotator.errors import RotatorError, ZitadelPermissionDenied
from rotator.report import Outcome, RotationResult
from rotator.webkeys import (
    EMERGENCY_WARNING,
    NextStep,
    WebKeyResult,
    WebKeyRotation,
    WebKeyState,
    WebKeyTarget,
    emergency_applies,
    next_run_at,
    next_steps,
)
from rotator.zitadel.webkeys import WebKeyClient

if TYPE_CHECKING:
    from rotator.app import App

#: WebKeyResult outcomes -> RotationResult outcomes.
_OUTCOMES = {
    "activated": Outcome.ROTATED,
    "retired": Outcome.RETIRED,
    "rolled_back": Outcome.FAILED,
    "failed": Outcome.FAILED,
}


@dataclass(frozen=True)
class WebKeyStatus:
    target: str
    kind: str
    active_key_id: str | None
    active_since: datetime | None
    step: str
    next_step: str | None
    next_step_at: datetime | None
    #: kids served at /oauth/v2/keys now; None when ZITADEL could not be asked
    published: int | None
    emergency: bool
    warning: str | None
    last_result: str | None
    last_error: str | None
    retiring: tuple[str, ...]


def _at(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


class WebKeyRunner:
    def __init__(self, app: App, *, confirm_attempts: int = 10,
                 confirm_delay: float = 1.0) -> None:
        self.app = app
        config = app.config
        #: failed steps and rolled-back cycles back off like key targets' retries;
        #: after daemon.max_attempts rollbacks in a row no cycle starts by itself
        self.retry: dict[str, Any] = {"retry_base": config.daemon.retry_base,
                                      "retry_cap": config.daemon.retry_cap,
                                      "max_rollbacks": config.daemon.max_attempts}
        prefix = config.vault.state_prefix.strip("/")
        key_file = app.key_file
        if key_file is None:  # an App built by hand (tests): the token source's provider
            key_file = app.token_source._provider
        self.client = WebKeyClient(app.oidc, app.token_source, key_file)
        self.rotation = WebKeyRotation(
            self.client, app.store, clock=app.clock,
            state_path=lambda t: f"{prefix}/webkeys/{t.name}",
            emit=self._emit, confirm_attempts=confirm_attempts, confirm_delay=confirm_delay,
            identity=process_identity(config),
            # a step's claim outlives its calls (the confirm polls included); each
            # state write renews it
            claim_timeout=(6 * max(config.zitadel.timeout, config.vault.timeout)
                           + timedelta(seconds=confirm_attempts * confirm_delay)),
            **self.retry,
        )

    def permission_problems(self) -> list[str]:
        """``validate --online``: can the rotator's identity read the web keys?
        Only reading can be probed without a side effect; creating, activating
        and deleting need the same instance role (IAM_OWNER), so a refusal here
        names it."""
        try:
            self.client.list()
        except ZitadelPermissionDenied as exc:
            names = ", ".join(t.name for t in self.targets)
            return [f"{names}: the rotator's identity may not read the instance's web keys "
                    f"(iam.web_key.read): grant it IAM_OWNER ({exc})"]
        return []

    def _emit(self, event: str, **fields: Any) -> None:
        self.app.audit.emit(event, **fields)

    @property
    def targets(self) -> tuple[WebKeyTarget, ...]:
        return self.app.config.webkey_targets

    def next_run_at(self, target: WebKeyTarget, state: WebKeyState) -> datetime | None:
        return next_run_at(target, state, self.app.clock.now(), **self.retry)

    def run(self, target: WebKeyTarget, *, rotate_now: bool = False, emergency: bool = False,
            trigger: str = "schedule", dry_run: bool = False) -> RotationResult:
        """One reconcile of ``target`` (``dry_run``: what it would do, changing nothing)."""
        if dry_run:
            state, _ = self.rotation.load(target)
            return RotationResult(target.name, Outcome.DRY_RUN, credential_id=state.current,
                                  actions=tuple(describe(s) for s in self.steps(target, state)))
        try:
            result = self.rotation.reconcile(target, rotate_now=rotate_now or emergency,
                                             emergency=emergency, trigger=trigger)
        except RotatorError as exc:  # a CAS conflict, or Vault gone while reporting a failure
            return RotationResult(target.name, Outcome.FAILED, error=str(exc),
                                  next_run_at=self.app.clock.now() + timedelta(minutes=1))
        return self.result(target, result)

    def steps(self, target: WebKeyTarget, state: WebKeyState) -> list[NextStep]:
        return next_steps(target, state, self.app.clock.now(), **self.retry)

    def result(self, target: WebKeyTarget, result: WebKeyResult) -> RotationResult:
        state = result.state
        steps = self.steps(target, state)
        cycle = next((s for s in steps if s.step != "delete"), None)
        actions = [f"{result.outcome}" + (f": {result.detail}" if result.detail else "")]
        actions += result.warnings
        actions += [f"next: {describe(s)}" for s in steps[:1]]
        failed = result.outcome in ("failed", "rolled_back")
        return RotationResult(
            target=target.name,
            outcome=_OUTCOMES.get(result.outcome, Outcome.UP_TO_DATE),
            rotation_id=state.rotation_id,
            credential_id=state.current,
            previous_credential_id=(state.retiring[-1].kid if state.retiring else None),
            next_run_at=self.next_run_at(target, state),
            next_rotation_at=cycle.at if cycle is not None else None,
            error=result.detail if failed else None,
            actions=tuple(actions),
        )

    def status(self, target: WebKeyTarget) -> WebKeyStatus:
        state, _ = self.rotation.load(target)
        now = self.app.clock.now()
        published: int | None
        try:
            published = len(self.client.published())
        except RotatorError:
            published = None
        steps = self.steps(target, state)
        # a cycle held after rollbacks in a row has no time: it sorts last, show it first
        held = [s for s in steps if s.step == "create" and s.at is None and s.note]
        first = (held or steps)[0] if steps else None
        applies = emergency_applies(state, now)
        return WebKeyStatus(
            target=target.name, kind="webkey", active_key_id=state.current,
            active_since=_at(state.active_since), step=state.step,
            next_step=describe(first) if first else None,
            next_step_at=first.at if first else None,
            published=published, emergency=state.emergency,
            warning=EMERGENCY_WARNING if applies else None,
            last_result=state.last_result, last_error=state.last_error,
            retiring=tuple(r.kid for r in state.retiring),
        )


def describe(step: NextStep) -> str:
    what = {
        "create": "create and publish a new key",
        "confirm": "confirm the new key is served in the JWKS",
        "activate": f"activate {step.key_id or 'the new key'}",
        "delete": f"delete {step.key_id or 'the previous key'}",
    }.get(step.step, step.step)
    if step.at is None and step.note:  # held (e.g. after rollbacks in a row): the note says why
        return f"{what}: {step.note}"
    when = step.at.isoformat(timespec="seconds") if step.at else "never (no window fits)"
    return f"{what} at {when}" + (f" ({step.note})" if step.note else "")


__all__ = ["WebKeyRunner", "WebKeyStatus", "describe"]
