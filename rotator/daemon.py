"""The daemon: when to call the engine, on which replica, and how to stop.

Scheduling (APScheduler 3.x ``BackgroundScheduler``, one worker thread so
reconciles never overlap):

* one job per target, ``target:<name>``, at the engine's
  ``RotationResult.next_run_at`` (retirement, retry or due time, windows
  applied: :func:`rotator.planner.next_run`), plus a little jitter;
  re-planned after every run.  The daemon does no scheduling arithmetic of
  its own;
* one periodic job, ``reconcile``, every ``daemon.reconcile_interval``: every
  target once, then the per-target gauges and expiry notifications from
  ``engine.status()``;
* ``coalesce`` and ``misfire_grace_time``: a job that could not run on time
  (the worker was busy, the machine slept) runs once, late.  A daemon that
  was *down* needs no stored jobs: on start (and on taking over the lease) it
  reconciles every target, so whatever became due meanwhile rotates, once.

High availability: with ``daemon.ha.enabled`` only the holder of a lease runs
jobs: ``backend: vault`` (:class:`rotator.lease.VaultLease`, a CAS-written KV
secret; works anywhere) or ``backend: kubernetes``
(:class:`rotator.kube_lease.KubernetesLease`, a coordination.k8s.io Lease;
in a cluster, with RBAC on that one Lease).  A separate thread renews the
lease every ``lease_ttl / 3``; a standby tries to take it as often, so it
takes over at most ``lease_ttl + lease_ttl/3`` after the active replica died
(the lease must lapse, then the next poll takes it; 6.7 s with a 5 s TTL,
measured 4.8 s).  Even two replicas acting at once cannot rotate a target twice: every
state write in Vault is check-and-set.

Windows: a fresh rotation starts only inside the target's rotation windows
and outside its freezes; the engine decides (:mod:`rotator.planner`).
Finishing an interrupted rotation, retrying a failed one, rotating an expired
or missing credential and retiring an old one are not held back.

Shutdown (SIGTERM/SIGINT, or ``stop_event``): no new job starts, the
reconcile in flight finishes its current target, the lease is released (a
standby takes over at its next poll), exit 0.  A rotation cut short by
SIGKILL is resumed from its state in Vault by whichever replica runs next.
"""

from __future__ import annotations

import logging
import random
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from multiprocessing.pool import ThreadPool
from types import FrameType
from typing import TYPE_CHECKING, Any, cast

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

from rotator.app import App, process_identity, tls_setting
from rotator.audit import AuditLog
from rotator.config import Config
from rotator.dispatch import Dispatcher
from rotator.errors import ConfigError, RotatorError
from rotator.health import Check, HealthServer, Readiness, discovery_probe, run_check
from rotator.metrics import Metrics
from rotator.model import Target, Trigger
from rotator.notify import Webhook
from rotator.oplog import OperatorLog, exit_reasons, summarise
from rotator.planner import with_jitter
from rotator.ports import InventoryTransport, Lease
from rotator.report import Outcome, RotationResult, TargetStatus

if TYPE_CHECKING:
    from rotator.inventory_watch import InventoryWatch

log = logging.getLogger(__name__)

#: Exit codes shared with the CLI (see ``rotator --help``).
EXIT_OK, EXIT_FAILED, EXIT_UNAVAILABLE, EXIT_STUCK = 0, 1, 3, 4
#: After an unexpected error in one target's job, try again this much later.
_ERROR_RETRY = timedelta(minutes=1)


def exit_code(results: list[RotationResult]) -> int:
    """STUCK beats FAILED beats OK: the convention of ``rotator run --once``."""
    outcomes = {r.outcome for r in results}
    if Outcome.STUCK in outcomes:
        return EXIT_STUCK
    if Outcome.FAILED in outcomes:
        return EXIT_FAILED
    return EXIT_OK


def identity(config: Config) -> str:
    """This replica's name in the lease (and in the rotation intents it writes)."""
    return process_identity(config)


def make_lease(app: App, config: Config) -> Lease | None:
    """The lease backend ``daemon.ha`` asks for; None when HA is off."""
    ha = config.daemon.ha
    if not ha.enabled:
        return None
    if ha.backend == "vault":
        from rotator.lease import VaultLease  # noqa: PLC0415 - only with HA on

        # The lease runs on the system clock, never on an offset engine clock.
        lease: Lease = VaultLease(
            app.store,
            ha.lease_path or f"{config.vault.state_prefix}/leader",
            identity(config),
            ha.lease_ttl,
            skew=min(timedelta(seconds=1), ha.lease_ttl / 10),
        )
        return lease
    from rotator.kube_lease import KubernetesLease  # noqa: PLC0415 - only in a cluster

    try:
        return KubernetesLease.in_cluster(
            ha.lease_name,
            identity(config),
            ha.lease_ttl,
            namespace=ha.lease_namespace,
            skew=min(timedelta(seconds=1), ha.lease_ttl / 10),
        )
    except ConfigError as exc:
        raise ConfigError(str(exc), file=config.source) from None


@dataclass
class _Role:
    leader: bool = False
    stopping: bool = False

    @property
    def name(self) -> str:
        if self.stopping:
            return "stopping"
        return "active" if self.leader else "standby"


class Daemon:
    def __init__(
        self,
        app: App,
        config: Config,
        *,
        lease: Lease | None,
        metrics: Metrics | None = None,
        webhook: Webhook | None = None,
        stop_event: threading.Event | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.app = app
        self.config = config
        self.engine = app.engine
        self.clock = app.clock
        self.lease = lease
        self.metrics = metrics or Metrics()
        self.metrics.declare_targets(config.targets, api=app.api)
        self.webhook = webhook
        self.stop_event = stop_event or threading.Event()
        #: Set only after the last job finished: the lease is renewed until then,
        #: so no standby takes over a rotation still in flight here.
        self._lease_stop = threading.Event()
        self.role = _Role(leader=lease is None)
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not crypto
        self._lock = threading.RLock()
        daemon = config.daemon
        self.lease_interval = (
            config.daemon.ha.lease_ttl.total_seconds() / 3 if lease is not None else 0.0
        )
        # APScheduler keeps the periodic pass; each target's own time is one
        # heap entry in the dispatcher, run on `concurrency` workers.
        self.scheduler = BackgroundScheduler(
            timezone=UTC,
            executors={"default": ThreadPoolExecutor(max_workers=1)},
            job_defaults={
                "coalesce": True,
                "max_instances": 1,
                "misfire_grace_time": max(1, int(daemon.misfire_grace.total_seconds())),
            },
        )
        self.workers = daemon.concurrency
        self.dispatcher = Dispatcher(self._job, workers=self.workers)
        #: Each target's last status, for the expiry notices: kept only with a
        #: webhook to send them (a status costs ~0.5 KB a target).
        self._statuses: dict[str, TargetStatus] = {}
        self.oplog = OperatorLog()  # next runs and pass summaries, for the operator
        #: kind: webkey targets, scheduled like the others by their state's next step
        self.webkeys = None
        if config.webkey_targets:
            from rotator.webkey_runner import WebKeyRunner  # noqa: PLC0415

            self.webkeys = WebKeyRunner(app)
        self._lease_thread: threading.Thread | None = None
        app.audit.subscribe(self.metrics.on_audit)
        if webhook is not None:
            app.audit.subscribe(webhook.on_audit)
        self.inventory = _inventory_watch(app, config, self.metrics, webhook)

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self.dispatcher.start()
        self.scheduler.start()
        self.scheduler.add_job(
            self.reconcile_pass,
            "interval",
            seconds=self.config.daemon.reconcile_interval.total_seconds(),
            id="reconcile",
            next_run_time=datetime.now(UTC),  # reconcile at once: whatever became due while down
        )
        if self.inventory is not None and self.config.inventory.interval is not None:
            self.scheduler.add_job(
                self.inventory_pass,
                "interval",
                seconds=self.config.inventory.interval.total_seconds(),
                id="inventory",
                next_run_time=datetime.now(UTC),
            )
        if self.lease is not None:
            self.metrics.set_leader(False)
            self._lease_tick()
            self.start_lease_thread()
        else:
            self.metrics.set_leader(True)

    def start_lease_thread(self) -> None:
        self._lease_thread = threading.Thread(
            target=self._lease_loop, name="rotator-lease", daemon=True
        )
        self._lease_thread.start()

    def stop(self) -> None:
        """Stop taking jobs, let the one in flight finish, release the lease."""
        with self._lock:
            self.role.stopping = True
        self.stop_event.set()
        if self.scheduler.running:
            self.scheduler.shutdown(wait=True)
        self.dispatcher.stop(wait=True)
        self._lease_stop.set()
        if self._lease_thread is not None:
            self._lease_thread.join(timeout=self.lease_interval + 5)
        if self.lease is not None and self.role.leader:
            try:
                self.lease.release()
                log.info("lease released")
            except RotatorError as exc:
                log.warning("could not release the lease (%s); it lapses by itself", exc)
        with self._lock:
            self.role.leader = False
        self.metrics.set_leader(False)

    @property
    def running(self) -> bool:
        lease_ok = self._lease_thread is None or self._lease_thread.is_alive()
        return bool(self.scheduler.running) and lease_ok and not self.role.stopping

    # ------------------------------------------------------------ leadership

    def _lease_loop(self) -> None:
        while not self._lease_stop.wait(self.lease_interval):
            try:
                self._lease_tick()
            except Exception:  # keep polling: a dead lease thread would strand the replica
                log.exception("lease tick failed")

    def _lease_tick(self) -> None:
        assert self.lease is not None
        try:
            held = self.lease.try_acquire()
        except RotatorError as exc:
            # Vault unreachable: keep acting only while the lease we last wrote
            # is surely unexpired (a standby cannot take it before then).
            held = self.role.leader and self.lease.is_held
            log.warning("lease renewal failed (%s); %s", exc, "still active" if held else "standby")
        with self._lock:
            if self.role.stopping:
                return
            was = self.role.leader
            self.role.leader = held
        if held and not was:
            log.info("became active: this replica holds the lease")
            self.app.audit.emit("daemon.active", identity=identity(self.config))
            self.metrics.set_leader(True)
            self._run_soon("reconcile")
        elif was and not held:
            log.warning("lost the lease: standing by")
            self.app.audit.emit("daemon.standby", identity=identity(self.config))
            self.metrics.set_leader(False)
            for target in self.config.targets:
                self.dispatcher.at(target.name, None)

    def _active(self) -> bool:
        """Leader, and (between lease ticks) our lease has not run out meanwhile."""
        if not self.role.leader or self.role.stopping:
            return False
        return self.lease is None or self.lease.is_held

    def _run_soon(self, job_id: str) -> None:
        if self.scheduler.running and not self.role.stopping:
            self.scheduler.modify_job(job_id, next_run_time=datetime.now(UTC))

    # ------------------------------------------------------------ jobs

    def reconcile_pass(self) -> None:
        """The periodic pass: every target once, behind whatever is due now;
        the expiry notices once the pass is through."""
        if self._active():
            names = [t.name for t in self.config.targets]
            names += [t.name for t in self.config.webkey_targets]
            self.oplog.begin_pass()
            self.dispatcher.add_pass(names, on_done=self._pass_done)

    def _pass_done(self) -> None:
        self.oplog.end_pass(self.clock.now())
        self._publish_index()
        self._check_expiry()

    def _publish_index(self) -> None:
        """File the pass's view of every target into the status index (a cache
        for status and plan: rotator/status_index.py); never fails the pass."""
        try:
            self.engine.publish_index(self.config.targets)
        except Exception as exc:  # a cache must not stop the daemon
            log.warning("status index not written: unexpected %s", type(exc).__name__)

    def inventory_pass(self) -> None:
        """The periodic inventory (leader only): metrics and notices for every credential."""
        if self.inventory is not None and self._active():
            self.inventory.run()

    def reconcile_all(self) -> list[RotationResult]:
        """``run --once``: every target once on the worker pool, then the expiry notices."""
        with ThreadPool(self.workers) as pool:
            results = [r for r in pool.map(self.run_target, self.config.targets) if r]
            results += [r for t in self.config.webkey_targets if (r := self.run_webkey(t.name))]
        self._publish_index()
        self._check_expiry()
        return results

    def _job(self, name: str) -> float | None:
        """A dispatcher job: reconcile, then seconds until the target's next run."""
        if self.config.webkey_target(name) is not None:
            result = self.run_webkey(name)
        else:
            result = self.run_target(self.config.target(name))
        if result is None or result.next_run_at is None:
            return None
        now = self.clock.now()
        when = with_jitter(result.next_run_at, now, self.config.daemon.jitter, self._rng)
        assert when is not None
        return (when - now).total_seconds()

    def run_target(self, target: Target) -> RotationResult | None:
        """Reconcile one target now (windows are the engine's) and record its gauges."""
        if not self._active() or self.stop_event.is_set():
            return None
        try:
            result = self.engine.reconcile(target, trigger=Trigger.SCHEDULE)
        except Exception as exc:  # a bug in one target's run must not stop the daemon
            log.error(
                "target %s: unexpected %s; retrying in %s",
                target.name,
                type(exc).__name__,
                _ERROR_RETRY,
            )
            retry = self.clock.now() + _ERROR_RETRY
            error = f"unexpected {type(exc).__name__}"
            failed = RotationResult(
                target=target.name, outcome=Outcome.FAILED, next_run_at=retry, error=error
            )
            self.oplog.record(failed, self.clock.now())
            return failed
        self.oplog.record(result, self.clock.now())
        self.metrics.observe_result(result)
        self.metrics.set_next_rotation(target.name, result.next_rotation_at)
        status = result.status or self._status(target)
        if status is not None:
            self.metrics.observe_status(status)
            if self.webhook is not None:
                self._statuses[target.name] = status
        return result

    def run_webkey(self, name: str) -> RotationResult | None:
        """Reconcile one web key target now (windows hold its activation) and
        record its gauges."""
        target = self.config.webkey_target(name)
        if self.webkeys is None or target is None or not self._active() \
                or self.stop_event.is_set():
            return None
        result = self.webkeys.run(target, trigger=Trigger.SCHEDULE.value)
        self.metrics.set_next_rotation(name, result.next_rotation_at)
        self.metrics.observe_webkey(self.webkeys.status(target))
        return result

    def _check_expiry(self) -> None:
        if self._active() and self.webhook is not None:
            statuses = [s for t in self.config.targets if (s := self._statuses.get(t.name))]
            self.webhook.check_expiry(
                statuses, self.clock.now(), self.config.notify.expiry_threshold
            )

    def _status(self, target: Target) -> TargetStatus | None:
        try:
            status = self.engine.status(target)
        except RotatorError as exc:
            log.warning("status of %s unavailable: %s", target.name, exc)
            return None
        self.metrics.observe_status(status)
        return status

    # ------------------------------------------------------------ readiness

    def readiness(self, zitadel_probe: Callable[[], None]) -> Readiness:
        checks = (
            run_check("vault", self.app.store.check),
            run_check("zitadel", zitadel_probe),
            run_check("scheduler", lambda: self.running),
        )
        return Readiness(checks=checks, role=self.role.name)


# ---------------------------------------------------------------- entry point


def _inventory_watch(
    app: App, config: Config, metrics: Metrics, webhook: Webhook | None
) -> InventoryWatch | None:
    if config.inventory.interval is None:
        return None
    from rotator.inventory_cli import own_org, read_managed  # noqa: PLC0415
    from rotator.inventory_watch import InventoryWatch  # noqa: PLC0415

    return InventoryWatch(
        cast("InventoryTransport", app.transport),
        app.clock,
        config.inventory,
        registry=metrics.registry,
        managed=lambda: read_managed(app),
        own_org=lambda: own_org(app),
        webhook=webhook,
    )


def _webhook(config: Config) -> Webhook | None:
    notify = config.notify
    if not notify.webhook_url:
        return None
    return Webhook(
        notify.webhook_url, format=notify.format, timeout=notify.timeout.total_seconds()
    )


def run_daemon(
    app: App,
    config: Config,
    *,
    once: bool = False,
    stop_event: threading.Event | None = None,
) -> int:
    """``rotator run`` (until stopped; returns 0) and ``rotator run --once``."""
    if not once:
        return serve(config, app.audit, lambda: app, stop_event=stop_event)
    lease = make_lease(app, config)
    webhook = _webhook(config)
    daemon = Daemon(app, config, lease=lease, webhook=webhook, stop_event=stop_event)
    try:
        return _once(daemon)
    finally:
        if webhook is not None:
            webhook.close()


def _once(daemon: Daemon) -> int:
    if daemon.lease is not None:
        try:
            held = daemon.lease.try_acquire()
        except RotatorError as exc:
            sys.stderr.write(f"rotator: error: cannot take the lease: {exc}\n")
            return EXIT_UNAVAILABLE
        if not held:
            log.info("another replica holds the lease: nothing to do")
            return EXIT_OK
        daemon.role.leader = True
        # keep renewing while the pass runs: it may take longer than the TTL
        daemon.start_lease_thread()
    try:
        results = daemon.reconcile_all()
    finally:
        daemon.stop()
    now = daemon.clock.now()
    daemon.oplog.summary(summarise(results), now)
    for line in exit_reasons(results, now):  # why the exit code is not 0
        sys.stderr.write(line + "\n")
    return exit_code(results)


@dataclass
class _Starting:
    """Readiness while the daemon cannot start yet: why, and since when."""

    reason: str = "starting"

    def readiness(self) -> Readiness:
        return Readiness(checks=(Check("startup", ok=False, detail=self.reason),), role="starting")


def serve(
    config: Config,
    audit: AuditLog,
    build_app: Callable[[], App],
    *,
    stop_event: threading.Event | None = None,
) -> int:
    """The long-running daemon: health endpoints first, then the app.

    A fault at start (ZITADEL or Vault unreachable, Vault sealed, a refused
    login) does not end the process, which under Kubernetes would be a crash
    loop: ``/healthz`` answers 200, ``/readyz`` 503 with the reason, and the
    start is retried with backoff until it works.  Only a configuration
    error (:class:`ConfigError`) ends it (exit 2).
    """
    stop = stop_event or threading.Event()
    metrics = Metrics()
    starting = _Starting()
    readiness: list[Callable[[], Readiness]] = [starting.readiness]
    try:
        health = HealthServer(
            config.daemon.listen_host,
            config.daemon.listen_port,
            readiness=lambda: readiness[0](),  # noqa: PLW0108 - replaced once started
            metrics=metrics,
        )
    except OSError as exc:
        raise ConfigError(
            f"cannot listen on {config.daemon.listen} ({exc.strerror or type(exc).__name__})",
            file=config.source,
            field="daemon.listen",
        ) from None
    previous = _install_signal_handlers(stop)
    health.start()
    log.info("health and metrics on http://%s:%d", config.daemon.listen_host, health.port)
    try:
        app = _start(build_app, audit, starting, stop)
        if app is None:
            return EXIT_OK  # stopped before it could start
        probe = discovery_probe(
            config.zitadel.url,
            verify=tls_setting(config),
            timeout=min(2.0, config.zitadel.timeout.total_seconds()),
        )
        webhook = _webhook(config)
        daemon = Daemon(app, config, lease=make_lease(app, config), metrics=metrics,
                        webhook=webhook, stop_event=stop)
        readiness[0] = lambda: daemon.readiness(probe)
        try:
            return _forever(daemon, config)
        finally:
            if webhook is not None:
                webhook.close()
    finally:
        health.stop()
        _restore_signal_handlers(previous)


#: Waits between start attempts: 1 s, doubling, at most a minute.
_START_RETRY_BASE, _START_RETRY_CAP = 1.0, 60.0


def _start(
    build_app: Callable[[], App], audit: AuditLog, starting: _Starting, stop: threading.Event
) -> App | None:
    delay = _START_RETRY_BASE
    attempt = 0
    while not stop.is_set():
        attempt += 1
        try:
            return build_app()
        except ConfigError:
            raise
        except RotatorError as exc:
            starting.reason = str(exc)
            audit.emit("daemon.start_failed", outcome="failure", error=str(exc),
                       error_type=type(exc).__name__, attempt=attempt,
                       retry_in_s=round(delay, 1))
        stop.wait(delay)
        delay = min(delay * 2, _START_RETRY_CAP)
    return None


def _forever(daemon: Daemon, config: Config) -> int:
    stop = daemon.stop_event
    try:
        daemon.start()
        daemon.app.audit.emit(
            "daemon.started",
            identity=identity(config),
            ha=daemon.lease is not None,
            targets=len(config.targets),
        )
        stop.wait()
        log.info("stopping: finishing the reconcile in flight")
    finally:
        daemon.stop()
        daemon.app.audit.emit("daemon.stopped", identity=identity(config))
    return EXIT_OK


def _install_signal_handlers(stop: threading.Event) -> dict[int, Any]:
    if threading.current_thread() is not threading.main_thread():
        return {}  # only the main thread may set handlers (tests run the daemon in a thread)

    def handler(_signum: int, _frame: FrameType | None) -> None:
        stop.set()  # nothing else here: logging from a signal handler can deadlock

    return {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}


def _restore_signal_handlers(previous: dict[int, Any]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)
