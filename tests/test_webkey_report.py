"""What web key targets show outside the CLI: their gauges, the webhook
notice when an activation is rolled back, and the projected steps."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from rotator.metrics import Metrics
from rotator.notify import from_audit
from rotator.webkey_runner import WebKeyStatus, describe
from rotator.webkeys import WebKeyState, WebKeyTarget, next_steps, project

NOW = datetime(2026, 12, 1, 12, tzinfo=UTC)


def test_gauges_of_a_web_key_target() -> None:
    metrics = Metrics()
    metrics.observe_webkey(WebKeyStatus(
        target="signing", kind="webkey", active_key_id="k2", active_since=NOW, step="idle",
        next_step=None, next_step_at=None, published=3, emergency=False, warning=None,
        last_result="activated", last_error=None, retiring=("k1",)))
    body = metrics.render()[0].decode()
    (line,) = [row for row in body.splitlines()
               if row.startswith("rotator_webkey_active_since_timestamp_seconds{")]
    assert line.split()[0] == 'rotator_webkey_active_since_timestamp_seconds{target="signing"}'
    assert float(line.split()[1]) == NOW.timestamp()
    assert 'rotator_webkey_published_keys{target="signing"} 3.0' in body


def test_a_rolled_back_activation_is_a_webhook_notice() -> None:
    notice = from_audit({"event": "rotation.rolled_back", "target": "signing", "kind": "webkey",
                         "key_id": "k2", "previous_key_id": "k1",
                         "error": "tokens are not signed with the new web key k2"})
    assert notice is not None
    assert notice.severity == "error"
    assert notice.message == ("web key activation of target `signing` did not take and was "
                              "rolled back (the previous key signs again): tokens are not "
                              "signed with the new web key k2")


def test_next_steps_and_projection_follow_the_state() -> None:
    target = WebKeyTarget("signing", every=timedelta(days=30), publish_ahead=timedelta(days=1),
                          retain=timedelta(days=2))
    idle = WebKeyState(current="k1", active_since=NOW.isoformat())
    (step,) = next_steps(target, idle, NOW)
    assert (step.step, step.at) == ("create", NOW + timedelta(days=30))
    steps = project(target, idle, NOW, timedelta(days=40))
    assert [(s.step, s.at) for s in steps] == [
        ("create", NOW + timedelta(days=30)),
        ("activate", NOW + timedelta(days=31)),
        ("delete", NOW + timedelta(days=33)),
    ]
    failing = WebKeyState(step="created", current="k1", new="k2", attempts=3,
                          last_error="not served yet")
    (retry,) = next_steps(target, failing, NOW)
    assert (retry.step, retry.at) == ("confirm", NOW + timedelta(minutes=4))


def test_after_a_rollback_the_next_cycle_is_shown_with_its_cool_down() -> None:
    target = WebKeyTarget("signing", every=timedelta(days=30))
    retry = {"retry_base": timedelta(minutes=10), "retry_cap": timedelta(hours=1),
             "max_rollbacks": 5}
    old = (NOW - timedelta(days=40)).isoformat()
    rolled = WebKeyState(current="k1", active_since=old, rollbacks=3,
                         rolled_back_at=NOW.isoformat(), last_result="rolled_back")
    (step,) = next_steps(target, rolled, NOW, **retry)
    assert step.at == NOW + timedelta(minutes=40)
    assert describe(step) == ("create and publish a new key at 2026-12-01T12:40:00+00:00 "
                              "(cool-down after 3 rollbacks in a row)")
    capped = WebKeyState(current="k1", active_since=old, rollbacks=4,
                         rolled_back_at=NOW.isoformat())
    assert next_steps(target, capped, NOW, **retry)[0].at == NOW + timedelta(hours=1)
    held = WebKeyState(current="k1", active_since=old, rollbacks=5,
                       rolled_back_at=NOW.isoformat())
    (step,) = next_steps(target, held, NOW, **retry)
    assert step.at is None
    assert describe(step) == ("create and publish a new key: held: 5 rollbacks in a row; fix "
                              "the cause, then `rotator rotate signing` starts a cycle")
    assert project(target, held, NOW, timedelta(days=90), **retry) == []
