"""`lbhealthd run`: the round loop, signals and reload.

- SIGTERM / SIGINT: stop within a round (bounded by the LB timeout). Servers the daemon drained
  stay drained in the LB and owned in ``state_dir``: the next start resumes them, so a restart
  never pushes load back onto sick servers nor flaps the pool.
- SIGHUP, or ``POST /reload`` on the control socket (``lbhealthd reload``): reload the config
  file at the start of the next round; an invalid file is refused, logged, and the running
  config kept. The outcome stays in the report (status, metrics) until the next reload, so a
  refused reload is seen, not only logged.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import time
from collections.abc import Callable

import structlog

from lbhealthd.config import Config, load_config
from lbhealthd.config.changes import changes
from lbhealthd.daemon.control import ControlServer
from lbhealthd.daemon.http_api import HttpListener
from lbhealthd.daemon.metrics import Metrics
from lbhealthd.daemon.reconciler import Reconciler
from lbhealthd.daemon.sdnotify import Notifier
from lbhealthd.drivers import STATE_BLOB, Driver, make_driver
from lbhealthd.errors import ConfigError
from lbhealthd.probes.http_prober import FastProber
from lbhealthd.probes.scheduler import ProbeScheduler
from lbhealthd.report import ConfigStatus, Reload, RoundReport
from lbhealthd.serving import Limits, listener_cap, raise_soft_limit
from lbhealthd.store import Store
from lbhealthd.writer import LbWriter

log = structlog.get_logger("lbhealthd.daemon.loop")

MIN_ROUND_GAP = 0.02  # seconds between the starts of two rounds, however often woken


class Daemon:
    """Runs rounds until stopped. Build it with a validated config; ``run`` until ``stop``."""

    def __init__(
        self, config: Config, config_path: str | None = None, driver: Driver | None = None
    ) -> None:
        self.config = config
        self.config_path = config_path
        # `run --dry-run` stays dry across reloads, whatever the file says.
        self.force_dry_run = config.daemon.dry_run and config_path is not None
        self.store = Store.open(config.daemon.state_dir)
        self.driver = driver or make_driver(config, state=self.store.blob(STATE_BLOB))
        self.prober = FastProber()
        self.scheduler = ProbeScheduler(self.prober, time.monotonic)
        self.metrics = Metrics()
        if hasattr(self.driver, "on_retry"):
            self.driver.on_retry = self.metrics.retry
        self.reconciler = Reconciler(
            config, self.driver, self.store, self.scheduler, metrics=self.metrics
        )
        self.reconciler.set_config_status(ConfigStatus(config_path, self.wall()))
        self.http: HttpListener | None = None
        self.stopping = asyncio.Event()
        self.wake = asyncio.Event()
        # A sample toward a drain or restore is confirmed soon and decided at once.
        self.scheduler.on_sample = self.reconciler.sample_arrived
        self.reconciler.on_evidence = self.wake.set
        self.max_lag = 0.0
        self._round_cpu = 0.0  # CPU seconds spent in rounds (not starvation: see _measure_lag)
        self.reload_requested = False
        self._reload_waiters: list[asyncio.Future[Reload | None]] = []
        self.control: ControlServer | None = None
        self.notifier = Notifier.from_env()  # systemd's Type=notify; a no-op elsewhere
        self._announce_ready = True  # READY=1 after the next complete round

    @property
    def report(self) -> RoundReport:
        """The report of the last round (what status, metrics and the control API read)."""
        return self.reconciler.report

    @property
    def writer(self) -> LbWriter:
        return self.reconciler.writer

    @property
    def round_interval(self) -> float:
        return self.config.daemon.round_interval

    @property
    def stopping_now(self) -> bool:
        return self.stopping.is_set()

    def mono(self) -> float:
        return self.reconciler.mono()

    def wall(self) -> float:
        return self.reconciler.wall()

    def reload(self) -> Reload | None:
        """Re-read the config file; keep the running config if the new one is invalid. The
        outcome is kept in the report (status, metrics) until the next reload; None when the
        daemon was not started from a file."""
        if self.config_path is None:
            return None
        now = self.wall()
        try:
            config = load_config(self.config_path)
        except ConfigError as exc:
            problems = tuple(str(p) for p in exc.problems)
            log.error(
                "config_reload_failed",
                path=self.config_path,
                problems=list(problems),
                note="keeping the running config",
            )
            return self._reloaded(Reload(now, ok=False, problems=problems))
        if self.force_dry_run and not config.daemon.dry_run:
            config = config.model_copy(
                update={"daemon": config.daemon.model_copy(update={"dry_run": True})}
            )
        changed = tuple(changes(self.config, config))
        self.config = config
        self.reconciler.reload(config)
        log.info(
            "config_reloaded",
            path=self.config_path,
            changed=list(changed) or ["nothing: the file is as loaded"],
            pools=[p.name for p in config.pools],
            dry_run=config.daemon.dry_run,
        )
        return self._reloaded(Reload(now, ok=True, changed=changed), loaded_at=now)

    def _reloaded(self, outcome: Reload, loaded_at: float | None = None) -> Reload:
        old = self.reconciler.config_status
        self.reconciler.set_config_status(
            ConfigStatus(self.config_path, loaded_at or old.loaded_at, outcome)
        )
        self.metrics.observe_reload(outcome)
        return outcome

    async def request_reload(self, within: float) -> Reload | None:
        """Reload at the start of the next round (never in the middle of one) and wait for the
        outcome; None if no round started within ``within`` seconds."""
        waiter: asyncio.Future[Reload | None] = asyncio.get_running_loop().create_future()
        self._reload_waiters.append(waiter)
        self.reload_requested = True
        self.wake.set()
        try:
            return await asyncio.wait_for(asyncio.shield(waiter), within)
        except TimeoutError:
            return None
        finally:
            if waiter in self._reload_waiters:
                self._reload_waiters.remove(waiter)

    def install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop, sig)
        loop.add_signal_handler(signal.SIGHUP, self._on_hup)

    def _on_stop(self, sig: signal.Signals) -> None:
        log.info("stopping", signal=sig.name)
        self.notifier.stopping()
        self.stopping.set()

    def _on_hup(self) -> None:
        self.reload_requested = True

    async def run(self) -> int:
        """The round loop. Returns the process exit code."""
        cfg = self.config
        frozen = False
        lag_task = asyncio.create_task(self._measure_lag(), name="loop lag")
        try:
            limits = listener_limits(cfg)
            if cfg.daemon.control_socket:
                self.control = ControlServer(self, cfg.daemon.control_socket, limits)
                self.metrics.listeners.watch(self.control.guard)
                await self.control.start()
            self.http = HttpListener(self, cfg.daemon.http, self.metrics, limits)
            self.metrics.listeners.watch(self.http.guard)
            await self.http.start()
            # Everything allocated so far (modules, the config, and whatever the embedding
            # process holds) is exempted from the garbage collector's full passes, which
            # otherwise walk it all every few rounds: at a million objects a pass held the
            # loop for seconds. The daemon's own churn is collected as usual.
            gc.freeze()
            frozen = True
            log.info(  # only once its sockets are bound: a clash above ends the start
                "started",
                pools=[p.name for p in cfg.pools],
                lb=cfg.load_balancer.type,
                dry_run=cfg.daemon.dry_run,
                state_dir=cfg.daemon.state_dir,
                owned=len(self.writer.owned),
                overrides=len(self.reconciler.overrides),
            )
            while not self.stopping.is_set():
                started = time.monotonic()
                if self.reload_requested:
                    self.reload_requested = False
                    if not self._announce_ready:  # READY=1 was sent: a reload is under way
                        self.notifier.reloading()
                    outcome = self.reload()
                    waiters, self._reload_waiters = self._reload_waiters, []
                    for waiter in waiters:
                        if not waiter.done():
                            waiter.set_result(outcome)
                    self.notifier.status(
                        "config reloaded"
                        if outcome is not None and outcome.ok
                        else "config reload refused; running config kept (see the journal)"
                    )
                    self._announce_ready = True
                self.wake.clear()
                lag, self.max_lag = self.max_lag, 0.0
                ticked = time.monotonic()
                cpu = time.process_time()
                try:
                    await self.reconciler.tick(starved=lag)
                    self.metrics.observe_round(self.report, time.monotonic() - ticked)
                finally:
                    self._round_cpu += time.process_time() - cpu
                if self._announce_ready:
                    self._announce_ready = False
                    self.notifier.ready()
                self.notifier.watchdog()
                pause = self.config.daemon.round_interval - (time.monotonic() - started)
                await self._pause(max(0.0, pause))
                # Woken early (new evidence, an operator): rounds still start at most this
                # often, so a burst of samples costs a few rounds, not one per sample.
                since = time.monotonic() - started
                if since < MIN_ROUND_GAP and not self.stopping.is_set():
                    await asyncio.sleep(MIN_ROUND_GAP - since)
        finally:
            if frozen:
                gc.unfreeze()
            lag_task.cancel()
            await asyncio.gather(lag_task, return_exceptions=True)
            await self.close()
        log.info(
            "stopped",
            owned=sorted(str(s) for s in self.writer.owned),
            note="servers lbhealthd drained stay drained until it runs again",
        )
        return 0

    async def _measure_lag(self, step: float = 0.05) -> None:
        """Keep the worst event-loop lag since the last round (how late a short sleep wakes).

        The CPU time the daemon's own rounds spent meanwhile (parsing the LB's tables,
        deciding for a large pool) is taken off: that holds the loop on purpose and is not
        starvation. What remains is time the process could not run: CPU contention, swap, a
        stop signal, or code blocking the loop."""
        while True:
            started, busy = time.monotonic(), self._round_cpu
            await asyncio.sleep(step)
            late = time.monotonic() - started - step - (self._round_cpu - busy)
            self.max_lag = max(self.max_lag, late)

    async def _pause(self, seconds: float) -> None:
        """Sleep until the next round, cut short by a stop or a wake-up (an operator's action,
        or a sample toward a drain or restore)."""
        waits = [
            asyncio.ensure_future(self.stopping.wait()),
            asyncio.ensure_future(self.wake.wait()),
        ]
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
            await asyncio.gather(*waits, return_exceptions=True)

    async def next_round(self, within: float = 5.0) -> bool:
        """Start a round now and wait for it to finish (an operator is waiting for the result)."""
        target = self.reconciler.rounds + 2  # the round under way may have read the LB already
        self.wake.set()
        if not await wait_rounds(lambda: self.reconciler.rounds, target - 1, within):
            return False
        self.wake.set()
        return await wait_rounds(lambda: self.reconciler.rounds, target, within)

    async def close(self) -> None:
        if self.http is not None:
            await self.http.close()
            self.http = None
        if self.control is not None:
            await self.control.close()
        await self.reconciler.close()
        await self.scheduler.close()
        await self.prober.close()
        await self.driver.close()
        self.notifier.close()


def listener_limits(config: Config) -> Limits:
    """The connection limits of each of the daemon's two listeners, with the soft descriptor
    limit raised first; a limit lowered to fit the descriptors is logged."""
    soft, hard = raise_soft_limit()
    wanted = config.daemon.max_connections
    cap = listener_cap(soft, 2, wanted)
    if cap < wanted:
        log.warning(
            "fd_limit_low",
            soft=soft,
            hard=hard,
            max_connections=wanted,
            per_listener=cap,
            note="connections per listener lowered to keep half the descriptors for the LB "
            "and state_dir; raise LimitNOFILE=",
        )
    return Limits(cap, config.daemon.idle_timeout)


async def wait_rounds(rounds: Callable[[], int], target: int, within: float) -> bool:
    """Wait until ``rounds()`` reaches ``target``; False after ``within`` seconds."""
    deadline = time.monotonic() + within
    while rounds() < target:
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True
