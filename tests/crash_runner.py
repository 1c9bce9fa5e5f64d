"""Runs one reconcile of a target and dies (SIGKILL-like ``os._exit``) the
moment the engine reports a given step, to prove crash convergence.

    python -m tests.crash_runner SPEC_JSON TARGET_KIND KILL_AFTER_EVENT

The audit log is the hook: the process is killed right after the event's
line is written, i.e. exactly between two steps of the protocol.  One kill
point is not an event: ``verification.refused`` kills it right after the
first refused verification of a new client secret, i.e. while verification
is being retried (ZITADEL's projection lag), which no audit line marks.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from rotator.errors import VerificationError
from rotator.model import Trigger
from tests.enginekit import KitSpec, build_kit

#: Kill point: a new client secret was refused once, verification retries next.
REFUSED = "verification.refused"


def main() -> None:
    spec = KitSpec.loads(sys.argv[1])
    target = spec.target(sys.argv[2])  # key, pat, secret, twin-secret, ...
    kill_after = sys.argv[3]

    def die(event: dict[str, Any]) -> None:
        if event["event"] == kill_after:
            sys.stdout.flush()
            os._exit(137)

    with build_kit(spec, audit_stream=sys.stdout) as kit:
        kit.engine.audit.subscribe(die)
        if kill_after == REFUSED:
            verify = kit.oidc.verify_secret

            def refused_then_die(client_id: str, client_secret: str, *, user_id: str) -> None:
                try:
                    verify(client_id, client_secret, user_id=user_id)
                except VerificationError:
                    sys.stdout.flush()
                    os._exit(137)

            # the engine's verifier is this very client
            setattr(kit.oidc, "verify_secret", refused_then_die)  # noqa: B010
        result = kit.engine.reconcile(target, trigger=Trigger.CLI, rotate_now=True)
        print(f"result {result.outcome}", flush=True)


if __name__ == "__main__":
    main()
