"""The health monitor: schedules shared probes and keeps rise/fall state per service and real server.

Rules of residence: the only stateful, clock-reading part of health/. One asyncio task runs a heap of
due probe jobs; each launched probe is one short task (TCP checks: a callback on one shared epoll,
no task), at most `max_concurrency` in flight (no thread per check, no executor). A job is keyed
by (ProbeSpec, interval): identical probes from any number of services run once and their result is
fed to every subscriber's own machine. State is keyed by
(service name, DestKey) and kept across `update` only while the ProbeSpec is unchanged (O(n) carry).
Verdict changes are reported through a coalesced `on_change()` callback; the daemon then re-plans with
`effective.adjust`. Transitions are logged on the "ipvsync.health" logger with SERVICE, REAL_SERVER,
CHECK and REASON fields.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

from ipvsync.config.spec import Config, Service
from ipvsync.health import effective
from ipvsync.health.machine import FLAP_MAX, FLAP_WINDOW, UP, RsHealth, Transition, initial, step
from ipvsync.health.probes import (
    ProbeResult,
    ProbeSpec,
    ProbeTemplate,
    TcpConnector,
    probe_template,
    run_probe,
    use_pidfd_child_watcher,
)
from ipvsync.model import PROTOCOL_NAMES, DestKey

log = logging.getLogger("ipvsync.health")

RsId = tuple[str, DestKey]
SNAPSHOT_VERSION = 1


STALL_FACTOR = 1.5  # a timeout observed after more than 1.5x its length (+ slack) is the daemon's stall
STALL_SLACK = 0.2
LAUNCH_CLOCK_EVERY = 16  # within one batch of launches, read the clock again after this many
SCHED_SLACK = 0.05  # seconds a probe may start after its due time so that neighbours share a wake-up


class _Job:
    """One probe schedule shared by every subscriber with the same (spec, interval)."""

    __slots__ = ("spec", "interval", "subs", "dead", "due")

    def __init__(self, spec: ProbeSpec, interval: float) -> None:
        self.spec = spec
        self.interval = interval
        self.subs: list[RsId] = []
        self.dead = False
        self.due = 0.0  # when its current (or next) probe was due


@dataclass(eq=False)
class _Entry:
    service: str
    dest: DestKey
    spec: ProbeSpec | None
    health: RsHealth
    on_failure: str = "inhibit"
    job: _Job | None = None
    latency: float | None = None
    file_weight: int | None = None
    flap_logged: bool = False
    suppressed: int = 0

    @property
    def ident(self) -> str:
        """Stable text identity (service, real server, probe parameters) for the state dir."""
        return _ident(self.service, self.dest, self.spec)


def _ident(service: str, dest: DestKey, spec: ProbeSpec | None) -> str:
    return f"{service}|{dest}|{spec.digest if spec else 'none'}"


def _exec_env(svc: Any, rs: Any) -> dict[str, str]:
    key = svc.key
    env = {
        "IPVSYNC_SERVICE": svc.name,
        "IPVSYNC_VIP": key.address or (svc.vips[0] if svc.vips else ""),
        "IPVSYNC_VPORT": str(key.port),
        "IPVSYNC_RS_ADDR": rs.key.address,
        "IPVSYNC_RS_PORT": str(rs.key.port),
        "IPVSYNC_PROTOCOL": PROTOCOL_NAMES.get(key.protocol, "") if not key.fwmark else "fwmark",
    }
    if key.fwmark:
        env["IPVSYNC_FWMARK"] = str(key.fwmark)
    return env


class _Verdicts(Mapping[RsId, RsHealth]):
    """HealthMonitor.verdicts(): its entries' health, looked up on demand."""

    __slots__ = ("_monitor",)

    def __init__(self, monitor: HealthMonitor) -> None:
        self._monitor = monitor

    def __getitem__(self, key: RsId) -> RsHealth:
        return self._monitor._entries[key].health

    def get(self, key: RsId, default: Any = None) -> Any:
        e = self._monitor._entries.get(key)
        return default if e is None else e.health

    def __contains__(self, key: object) -> bool:
        return key in self._monitor._entries

    def __iter__(self) -> Iterator[RsId]:
        return iter(self._monitor._entries)

    def __len__(self) -> int:
        return len(self._monitor._entries)

    def items(self) -> Any:  # one pass over the entries, not a lookup per key
        return [(k, e.health) for k, e in self._monitor._entries.items()]


class HealthMonitor:
    """Runs the checks of a Config and exposes verdicts per (service name, DestKey)."""

    def __init__(self, on_change: Callable[[], None], max_concurrency: int = 256,
                 clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | type[random.Random] | None = None, *,
                 prober: Callable[[ProbeSpec], Awaitable[ProbeResult]] = run_probe,
                 on_probe: Callable[[ProbeSpec, ProbeResult], None] | None = None,
                 wall: Callable[[], float] = time.time, flap_window: float = FLAP_WINDOW,
                 flap_max: int = FLAP_MAX) -> None:
        self.on_change = on_change
        self.max_concurrency = max(1, max_concurrency)
        self.clock = clock
        if rng is None or isinstance(rng, type):
            rng = (rng or random.Random)()  # accept the class itself as well as an instance
        self.rng = rng
        self.prober = prober
        self.on_probe = on_probe
        self.wall = wall
        self.flap_window = flap_window
        self.flap_max = flap_max
        self._config: Config | None = None
        self._entries: dict[RsId, _Entry] = {}
        self._by_service: dict[str, list[RsId]] = {}
        self._pending: dict[str, int] = {}  # services before their first round: entries still unchecked
        self._jobs: dict[tuple[ProbeSpec, float], _Job] = {}
        self._heap: list[tuple[float, int, _Job]] = []
        self._seq = 0
        self._inflight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._deadline = float("inf")
        self._stopped = False
        self._paused = False
        self._frozen: tuple[dict[RsId, RsHealth], dict[RsId, int]] | None = None
        self._change_pending = False
        self._pidfd_checked = False
        self._tcp: TcpConnector | None = None

    # ------------------------------------------------------------------------------------------ config

    def update(self, config: Config, serving: Iterable[RsId] = (),
               saved: dict[str, Any] | None = None) -> None:
        """Adopt a (new) config. State carries over where (service, real server, ProbeSpec) is unchanged;
        new identities start from: saved state (state dir) > serving in the kernel (up) > `initial:`."""
        now = self.clock()
        wall_now = self.wall()
        serving = serving if isinstance(serving, set | frozenset) else set(serving)
        saved_states: dict[str, Any] = (saved or {}).get("states", {}) if isinstance(saved, dict) else {}
        templates: dict[int, tuple[dict[str, Any], ProbeTemplate | None]] = {}  # by id(health block)
        before = {s.name: s for s in self._config.services} if self._config is not None else {}
        changed = [s for s in config.services if before.get(s.name) is not s or s.name not in self._by_service]
        touched: list[_Job] | None = None
        todo: Iterable[Service] = config.services
        if self._config is not None and len(changed) * 4 <= len(config.services):
            # a reload that touches a few services: copy the tables (C speed) and redo only those,
            # so that editing one service of 10,000 real servers costs that service
            entries = dict(self._entries)
            jobs = dict(self._jobs)
            by_service = dict(self._by_service)
            pending = dict(self._pending)
            redo = {s.name for s in changed}
            names = {s.name for s in config.services}
            touched = []
            for name in [n for n in by_service if n in redo or n not in names]:
                for key in by_service.pop(name):
                    gone = entries.pop(key, None)
                    if gone is not None and gone.job is not None:
                        if key in gone.job.subs:
                            gone.job.subs.remove(key)
                        touched.append(gone.job)
                pending.pop(name, None)
            todo = changed
        else:
            entries = {}
            jobs = {}
            by_service = {}
            pending = {}
        for svc in todo:
            keys: list[RsId] = []
            unchecked = 0
            if before.get(svc.name) is svc and svc.name in self._by_service:
                # the identical declaration (a reload of another service): its entries and probes
                # carry over as they are; only the shared probe jobs' subscriber lists are rebuilt
                for key in self._by_service[svc.name]:
                    entry = self._entries[key]
                    job = entry.job
                    if job is not None:
                        jk = (job.spec, job.interval)
                        shared = jobs.get(jk)
                        if shared is None:
                            job.subs = []
                            shared = jobs[jk] = job
                        shared.subs.append(key)
                        entry.job = shared
                        if not entry.health.checked:
                            unchecked += 1
                    entries[key] = entry
                    keys.append(key)
                by_service[svc.name] = keys
                if unchecked and svc.name in self._pending:
                    pending[svc.name] = unchecked
                continue
            for rs in svc.real_servers:
                h = rs.health or {"type": "none"}
                cached = templates.get(id(h))
                if cached is None:
                    cached = templates[id(h)] = (h, probe_template(h))  # h kept alive: id stays unique
                tpl = cached[1]
                kind = tpl.type if tpl is not None else "none"
                env = _exec_env(svc, rs) if kind == "exec" else None
                spec = tpl.spec(rs.key.address, rs.key.port, env) if tpl is not None else None
                rise, fall = (1, 1) if kind == "file" else (int(h.get("rise", 2)), int(h.get("fall", 3)))
                key = (svc.name, rs.key)
                old = self._entries.get(key)
                if old is not None and old.spec == spec:
                    entry = old
                    if (old.health.rise, old.health.fall) != (rise, fall):
                        entry.health = replace(old.health, rise=rise, fall=fall)
                else:
                    health = self._start(spec, key, h, rise, fall, serving, saved_states, now, wall_now)
                    entry = _Entry(svc.name, rs.key, spec, health)
                entry.on_failure = h.get("on_failure", "inhibit")
                entry.job = None
                if spec is not None:
                    assert tpl is not None
                    interval = tpl.interval
                    jk = (spec, interval)
                    job = jobs.get(jk)
                    if job is None:
                        job = self._jobs.get(jk)
                        if job is None:
                            job = _Job(spec, interval)
                            first = now if kind == "file" else now + self.rng.uniform(0, interval)
                            self._push(first, job)
                        else:
                            job.subs = []
                        jobs[jk] = job
                    job.subs.append(key)
                    entry.job = job
                    if not entry.health.checked:
                        unchecked += 1
                entries[key] = entry
                keys.append(key)
            by_service[svc.name] = keys
            was_done = svc.name in self._by_service and svc.name not in self._pending
            if unchecked and not was_done:
                pending[svc.name] = unchecked
        if touched is None:
            for jk, job in self._jobs.items():
                if jk not in jobs:
                    job.dead = True
        else:
            for job in touched:
                jk = (job.spec, job.interval)
                if not job.subs and jobs.get(jk) is job:
                    job.dead = True
                    del jobs[jk]
        self._config = config
        self._entries = entries
        self._by_service = by_service
        self._pending = pending
        self._jobs = jobs
        self._wake()

    def _start(self, spec: ProbeSpec | None, key: RsId, h: dict[str, Any], rise: int, fall: int,
               serving: set[RsId] | frozenset[RsId], saved_states: dict[str, Any], now: float,
               wall_now: float) -> RsHealth:
        if spec is None:
            return initial(True, now, rise, fall, reason="no check", origin="none")
        s = saved_states.get(_ident(key[0], key[1], spec)) if saved_states else None
        if isinstance(s, dict) and s.get("state") in ("up", "down"):
            since = now - max(0.0, wall_now - float(s.get("since", wall_now)))
            return initial(s["state"] == "up", since, rise, fall, reason=str(s.get("reason", "saved")),
                           origin="saved")
        if key in serving:
            return initial(True, now, rise, fall, reason="serving at start", origin="serving")
        up = h.get("initial", "down") == "up"
        return initial(up, now, rise, fall, reason=f"initial {'up' if up else 'down'}", origin="initial")

    # ------------------------------------------------------------------------------------------ queries

    def verdicts(self) -> Mapping[RsId, RsHealth]:
        """Health per (service, real server); frozen at the moment of `set_paused(True)` while paused.

        A read-only live view (no copy of 10,000 entries per converge): read it, do not keep it."""
        if self._frozen is not None:
            return dict(self._frozen[0])
        return _Verdicts(self)

    def file_weights(self) -> dict[RsId, int]:
        """Real servers whose file check found the switch file: weight from the file (0 = down)."""
        if self._frozen is not None:
            return dict(self._frozen[1])
        return {k: e.file_weight for k, e in self._entries.items() if e.file_weight is not None}

    def on_failure(self, key: RsId) -> str:
        e = self._entries.get(key)
        return e.on_failure if e else "inhibit"

    def first_round_done(self, service_name: str) -> bool:
        """Every checked real server of the service has had at least one probe verdict."""
        return service_name in self._by_service and service_name not in self._pending

    def next_deadline(self) -> float | None:
        """When slow_start ramps next change a weight (this monitor's clock), or None."""
        if self._config is None:
            return None
        return effective.next_deadline(self._config, self.verdicts(), self.clock())

    @property
    def paused(self) -> bool:
        return self._paused

    def set_paused(self, paused: bool) -> None:
        """ha_suspend: while paused, probes run and state is kept, but verdicts() and file_weights()
        stay as they were when the pause began. Resuming reports a change."""
        if paused == self._paused:
            return
        self._paused = paused
        if paused:
            self._frozen = ({k: e.health for k, e in self._entries.items()},
                            {k: e.file_weight for k, e in self._entries.items() if e.file_weight is not None})
        else:
            self._frozen = None
            self._changed()
        log.info("health verdicts %s", "paused" if paused else "resumed")

    def snapshot(self) -> dict[str, Any]:
        """JSON-serialisable state for the state dir; feed it back as `update(..., saved=)`."""
        wall_off = self.wall() - self.clock()
        states = {}
        for e in self._entries.values():
            if e.spec is None or (e.health.probes == 0 and e.health.origin == "initial"):
                continue  # nothing learnt yet: a later restart should use serving/initial instead
            states[e.ident] = {"state": UP if e.health.is_up else "down", "since": e.health.since + wall_off,
                               "reason": e.health.last_reason}
        return {"version": SNAPSHOT_VERSION, "states": states}

    def status(self) -> dict[str, Any]:
        """For `ipvsync status`: per service and real server (since = wall clock seconds)."""
        wall_off = self.wall() - self.clock()
        services: dict[str, Any] = {}
        for name, keys in self._by_service.items():
            rss = {}
            for key in keys:
                e = self._entries[key]
                h = e.health
                rss[str(key[1])] = {
                    "state": h.state, "up": h.is_up, "since": h.since + wall_off,
                    "last_reason": h.last_reason, "flapping": h.flapping, "latency": e.latency,
                    "check": e.spec.describe() if e.spec else "none",
                    "probes": h.probes, "successes": h.successes, "failures": h.failures,
                    "transitions": h.transitions, "origin": h.origin, "on_failure": e.on_failure,
                    "file_weight": e.file_weight,
                }
            services[name] = {"first_round_done": self.first_round_done(name), "real_servers": rss}
        return {"paused": self._paused, "probes_in_flight": self._inflight, "probe_jobs": len(self._jobs),
                "services": services}

    # ------------------------------------------------------------------------------------------ scheduler

    def _push(self, due: float, job: _Job) -> None:
        job.due = due
        self._seq += 1
        heapq.heappush(self._heap, (due, self._seq, job))
        if due < self._deadline:
            self._wake()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def _sleep(self, delay: float | None) -> None:
        assert self._loop is not None
        fut = self._loop.create_future()
        self._waiter = fut
        handle = None
        if delay is not None:
            self._deadline = self.clock() + delay
            handle = self._loop.call_later(delay, _resolve, fut)
        else:
            self._deadline = float("inf")
        try:
            await fut
        finally:
            self._waiter = None
            self._deadline = float("-inf")  # awake: pushes need not wake us
            if handle is not None:
                handle.cancel()

    async def run(self) -> None:
        """The scheduler loop; returns after `stop()` (in-flight probes are cancelled)."""
        self._loop = asyncio.get_running_loop()
        self._stopped = False
        heap = self._heap
        try:
            while not self._stopped:
                now = self.clock()
                launched = 0
                while heap and self._inflight < self.max_concurrency and heap[0][0] <= now:
                    job = heapq.heappop(heap)[2]
                    if not job.dead:
                        self._launch(job, now)  # `now` is the probe's start (and its timeout's)
                        launched += 1
                        if launched % LAUNCH_CLOCK_EVERY == 0:
                            now = self.clock()  # a long batch must not start late probes "earlier"
                if self._tcp is not None:
                    self._tcp.flush()  # the batch's TCP checks that connected already finish here
                if self._stopped:
                    break
                if launched and heap and self._inflight < self.max_concurrency and heap[0][0] <= now:
                    continue  # the flush freed slots for probes already due
                if self._inflight >= self.max_concurrency:
                    await self._sleep(None)  # a finishing probe wakes us
                elif heap:
                    # wake a little late (<= 1 % of the interval, <= SCHED_SLACK) so that the probes
                    # due within that slack start in one wake-up instead of one wake-up each
                    due, _, nxt = heap[0]
                    await self._sleep(max(0.0, due - now) + min(SCHED_SLACK, nxt.interval * 0.01))
                else:
                    await self._sleep(None)
        finally:
            self._deadline = float("inf")
            if self._tcp is not None:
                self._inflight -= self._tcp.close()  # in-flight TCP probes are abandoned, like cancelled tasks
                self._tcp = None
            tasks = list(self._tasks)
            for t in tasks:
                t.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)

    def stop(self) -> None:
        self._stopped = True
        self._wake()

    def _launch(self, job: _Job, now: float | None = None) -> None:
        assert self._loop is not None
        if job.spec.type == "exec" and not self._pidfd_checked:
            self._pidfd_checked = True
            use_pidfd_child_watcher()
        self._inflight += 1
        if job.spec.type == "tcp" and self.prober is run_probe:
            # hot path: no task, future or timeout context per probe (TcpConnector: same results)
            tcp = self._tcp
            if tcp is None or tcp.loop is not self._loop:
                tcp = self._tcp = TcpConnector(self._loop)
            start = self.clock() if now is None else now
            tcp.start(job.spec, functools.partial(self._finish, job, start),
                      start if self.clock is time.monotonic else None, defer=True)  # run() flushes
            return
        task = self._loop.create_task(self._probe(job))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _probe(self, job: _Job) -> None:
        start = self.clock()
        try:
            result = await self.prober(job.spec)
        except asyncio.CancelledError:
            self._inflight -= 1
            raise
        except Exception as exc:  # a fake or broken prober must not kill the scheduler
            result = ProbeResult(False, f"error: {exc}", 0.0)
        self._finish(job, start, result)

    def _finish(self, job: _Job, start: float, result: ProbeResult, now: float | None = None) -> None:
        """A probe of `job` launched at `start` is over: verdicts, then schedule the next one.

        `now` is a fresh reading of the monitor's clock, when the caller has one (saves a clock read)."""
        if self.clock is not time.monotonic:
            now = None  # the connector's reading is time.monotonic(); a custom clock reads itself
        was_full = self._inflight >= self.max_concurrency
        self._inflight -= 1
        if job.dead:
            if was_full:
                self._wake()
            return
        if now is None:
            now = self.clock()
        if (not result.ok and result.reason == "timeout"
                and now - start > job.spec.timeout * STALL_FACTOR + STALL_SLACK):
            # the timeout fired long after its deadline: this process was stalled (a long apply,
            # a busy CPU), not the server slow. Inconclusive: no verdict, probe again right away.
            self._push(now, job)
            if was_full:
                self._wake()
            return
        if self.on_probe is not None:
            try:
                self.on_probe(job.spec, result)
            except Exception:
                log.exception("on_probe callback failed")
        self._apply(job, result, now)
        # the scheduler's own wake-up slack must not stretch the interval (keep the phase), but a probe
        # that started later than that (a busy process) waits a whole interval before the next one
        late = start - job.due
        due = start + job.interval - (late if 0.0 < late <= 2 * min(SCHED_SLACK, job.interval * 0.01) else 0.0)
        self._push(due if due > now else now, job)
        if was_full:
            self._wake()

    # ------------------------------------------------------------------------------------------ verdicts

    def _apply(self, job: _Job, result: ProbeResult, now: float | None = None) -> None:
        if now is None:
            now = self.clock()
        changed = False
        is_file = job.spec.type == "file"
        for key in job.subs:
            e = self._entries.get(key)
            if e is None or e.job is not job:
                continue
            e.latency = result.latency
            if is_file:
                fw = result.weight
                if fw != e.file_weight:
                    e.file_weight = fw
                    changed = True
            first = not e.health.checked
            new, tr = step(e.health, result.ok, result.reason, now, flap_window=self.flap_window,
                           flap_max=self.flap_max)
            e.health = new
            if first and e.service in self._pending:
                left = self._pending[e.service] - 1
                if left <= 0:
                    del self._pending[e.service]
                    changed = True  # quorum can now be evaluated
                else:
                    self._pending[e.service] = left
            if tr is not None:
                changed = True
                self._log(e, tr)
            elif e.flap_logged and not new.flapping:
                self._log_calm(e)
        if changed and not self._paused:
            self._changed()

    def _changed(self) -> None:
        if self._change_pending:
            return
        self._change_pending = True
        if self._loop is None:
            self._fire()
        else:
            self._loop.call_soon(self._fire)

    def _fire(self) -> None:
        self._change_pending = False
        try:
            self.on_change()
        except Exception:
            log.exception("health on_change callback failed")

    def _extra(self, e: _Entry, reason: str) -> dict[str, str]:
        return {"SERVICE": e.service, "REAL_SERVER": str(e.dest),
                "CHECK": e.spec.describe() if e.spec else "none", "REASON": reason}

    def _log(self, e: _Entry, tr: Transition) -> None:
        h = e.health
        level = logging.WARNING if tr.new == "down" else logging.INFO
        if h.flapping:
            if e.flap_logged:
                e.suppressed += 1
                return
            e.flap_logged = True
            log.warning("%s %s: %s -> %s (%s); flapping (%d transitions in %gs), further transitions "
                        "not logged", e.service, e.dest, tr.old, tr.new, tr.reason, len(h.recent),
                        self.flap_window, extra=self._extra(e, tr.reason))
            return
        if e.flap_logged:
            self._log_calm(e)
        log.log(level, "%s %s: %s -> %s (%s)", e.service, e.dest, tr.old, tr.new, tr.reason,
                extra=self._extra(e, tr.reason))

    def _log_calm(self, e: _Entry) -> None:
        log.info("%s %s: stopped flapping (%d transitions not logged), now %s", e.service, e.dest,
                 e.suppressed, "up" if e.health.is_up else "down", extra=self._extra(e, "flapping stopped"))
        e.flap_logged = False
        e.suppressed = 0


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
