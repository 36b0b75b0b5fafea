"""The rise/fall machine (pure) and the HealthMonitor's bookkeeping, driven by a fake prober."""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections import Counter
from typing import Any

import pytest

from ipvsync.config.spec import Config, Origin, RealServer, Service
from ipvsync.health import machine
from ipvsync.health.machine import DOWN, FALLING, RISING, UP, RsHealth, initial, step
from ipvsync.health.monitor import HealthMonitor
from ipvsync.health.probes import ProbeResult, ProbeSpec
from ipvsync.model import AF_INET, DestAttrs, DestKey, ServiceAttrs, ServiceKey

ORIGIN = Origin("t.yaml", 1, "services")


def svc(name: str, port: int, rss: list[tuple[str, int]], health: dict[str, Any], **kw: Any) -> Service:
    health = dict(health)  # one block object per service, as config/build.py does
    reals = tuple(RealServer(DestKey(a, p), AF_INET, DestAttrs(weight=1), ORIGIN, health) for a, p in rss)
    key = ServiceKey(AF_INET, 6, "192.0.2.1", port)
    return Service(name, key, ServiceAttrs(), reals, ORIGIN, ("192.0.2.1",), **kw)


def cfg(*services: Service) -> Config:
    return Config("t.yaml", tuple(services))


def run_seq(h: RsHealth, seq: str, t0: float = 0.0) -> tuple[RsHealth, list[str]]:
    out = []
    for i, c in enumerate(seq):
        h, tr = step(h, c == "+", "ok" if c == "+" else "timeout", t0 + i)
        if tr:
            out.append(f"{i}:{tr.new}")
    return h, out


# ---------------------------------------------------------------------------------------------- machine

def test_rise_from_down_needs_rise_consecutive_successes():
    h = initial(False, 0.0, rise=3, fall=2)
    h, trs = run_seq(h, "++-++" + "+")
    assert trs == ["5:up"]  # the failure at 2 reset the count
    assert h.state == UP and h.since == 5 and h.ramp_from == 5


def test_fall_from_up_needs_fall_consecutive_failures():
    h = initial(True, 0.0, rise=2, fall=3)
    h1, trs = run_seq(h, "--+--")
    assert trs == [] and h1.state == FALLING and h1.is_up
    h2, trs = run_seq(h1, "-")
    assert trs == ["0:down"] and h2.state == DOWN and not h2.is_up and h2.ramp_from is None


def test_intermediate_states_and_counters():
    h = initial(False, 0.0, rise=2, fall=2)
    h, tr = step(h, True, "ok", 1.0)
    assert (h.state, h.successes, h.failures, tr) == (RISING, 1, 0, None)
    h, tr = step(h, False, "refused", 2.0)
    assert (h.state, h.successes, h.failures, tr, h.last_reason) == (DOWN, 0, 1, None, "refused")
    assert h.probes == 2 and h.checked


def test_rise_and_fall_of_one_are_immediate():
    h = initial(False, 0.0, rise=1, fall=1)
    h, tr = step(h, True, "ok", 1.0)
    assert tr and tr.new == "up" and tr.old == "down"
    h, tr = step(h, False, "status 503", 2.0)
    assert tr and tr.new == "down" and tr.reason == "status 503" and h.transitions == 2


def test_flapping_flag_with_hysteresis():
    h = initial(False, 0.0, rise=1, fall=1)
    flags = []
    for i in range(8):
        h, _ = step(h, i % 2 == 0, "x", float(i), flap_window=60, flap_max=3)
        flags.append(h.flapping)
    assert flags == [False, False, False, True, True, True, True, True]
    h, _ = step(h, True, "x", 100.0, flap_window=60, flap_max=3)  # window emptied
    assert not h.flapping and h.recent == (100.0,)


def test_step_does_not_mutate():
    h = initial(True, 0.0)
    step(h, False, "x", 1.0)
    assert h.failures == 0 and h.probes == 0


# ---------------------------------------------------------------------------------------------- monitor

class FakeProber:
    """Counts invocations per spec; verdict from a mutable table keyed on (address, port)."""

    def __init__(self) -> None:
        self.calls: Counter[ProbeSpec] = Counter()
        self.ok: dict[tuple[str, int], bool] = {}

    async def __call__(self, spec: ProbeSpec) -> ProbeResult:
        self.calls[spec] += 1
        ok = self.ok.get((spec.address, spec.port), True)
        return ProbeResult(ok, "ok" if ok else "refused", 0.001)


async def until(cond: Any, limit: float = 5.0) -> None:
    """Poll `cond` every few ms (robust on a loaded machine); fail after `limit` seconds."""
    loop = asyncio.get_running_loop()
    end = loop.time() + limit
    while not cond():
        assert loop.time() < end, "condition not reached"
        await asyncio.sleep(0.005)


async def run_for(mon: HealthMonitor, seconds: float, cond: Any = None) -> None:
    """Run the scheduler for `seconds`, or until `cond()` holds when given."""
    task = asyncio.create_task(mon.run())
    if cond is None:
        await asyncio.sleep(seconds)
    else:
        await until(cond)
    mon.stop()
    await asyncio.wait_for(task, 1)


def monitor(prober: FakeProber, changes: list[int] | None = None, **kw: Any) -> HealthMonitor:
    return HealthMonitor(lambda: changes.append(1) if changes is not None else None, rng=random.Random(1),
                         prober=prober, **kw)


TCP = {"type": "tcp", "interval": 0.01, "timeout": 0.05, "rise": 2, "fall": 2}


def test_start_states_initial_serving_saved():
    rss = [("10.0.0.1", 80), ("10.0.0.2", 80), ("10.0.0.3", 80), ("10.0.0.4", 80)]
    c = cfg(svc("web", 80, rss, TCP))
    p = FakeProber()
    p.ok.update({("10.0.0.2", 80): False, ("10.0.0.3", 80): False, ("10.0.0.4", 80): False})
    mon = monitor(p)
    mon.update(c, serving=set())
    assert mon.snapshot()["states"] == {}  # unprobed initial states are not worth saving
    p.calls.clear()
    a1 = ("web", DestKey("10.0.0.1", 80))
    def learnt() -> bool:
        v = mon.verdicts()
        return v[a1].is_up and all(h.checked for h in v.values())

    asyncio.run(run_for(mon, 0, learnt))
    snap = mon.snapshot()
    assert len(snap["states"]) == 4
    # saved: .1 up, .2 down; .2 and .3 are serving in the kernel; .3 and .4 not saved
    saved = json.loads(json.dumps({"version": 1, "states": {
        k: v for k, v in snap["states"].items() if "10.0.0.1:" in k or "10.0.0.2:" in k}}))
    assert [s["state"] for s in saved["states"].values()] == ["up", "down"]
    mon2 = monitor(FakeProber())
    mon2.update(c, serving={("web", DestKey("10.0.0.2", 80)), ("web", DestKey("10.0.0.3", 80))}, saved=saved)
    v = mon2.verdicts()
    assert v[("web", DestKey("10.0.0.1", 80))].is_up  # saved up
    assert not v[("web", DestKey("10.0.0.2", 80))].is_up  # saved down wins over serving
    assert v[("web", DestKey("10.0.0.3", 80))].is_up  # serving at start stays up
    assert v[("web", DestKey("10.0.0.3", 80))].origin == "serving"
    assert not v[("web", DestKey("10.0.0.4", 80))].is_up
    assert v[("web", DestKey("10.0.0.3", 80))].ramp_from is None  # no slow start after a restart


def test_initial_up_and_type_none():
    c = cfg(svc("a", 80, [("10.0.0.1", 80)], {**TCP, "initial": "up"}),
            svc("b", 81, [("10.0.0.1", 81)], {"type": "none"}))
    mon = monitor(FakeProber())
    mon.update(c, set())
    v = mon.verdicts()
    assert v[("a", DestKey("10.0.0.1", 80))].is_up and v[("b", DestKey("10.0.0.1", 81))].is_up
    assert mon.first_round_done("b") and not mon.first_round_done("a")


def test_serving_server_stays_up_until_fall_failures():
    async def main() -> None:
        p = FakeProber()
        p.ok[("10.0.0.1", 80)] = False
        mon = monitor(p)
        c = cfg(svc("web", 80, [("10.0.0.1", 80)], {**TCP, "fall": 1000}))
        mon.update(c, serving={("web", DestKey("10.0.0.1", 80))})
        await run_for(mon, 0, lambda: mon.verdicts()[("web", DestKey("10.0.0.1", 80))].failures >= 2)
        h = mon.verdicts()[("web", DestKey("10.0.0.1", 80))]
        assert h.is_up and h.state == FALLING and h.failures >= 2

    asyncio.run(main())


def test_rise_fall_through_scheduler_and_on_change_coalesced(caplog):
    async def main() -> None:
        p = FakeProber()
        changes: list[int] = []
        mon = monitor(p, changes)
        c = cfg(svc("web", 80, [("10.0.0.1", 80), ("10.0.0.2", 80)], TCP))
        mon.update(c, set())
        p.ok[("10.0.0.2", 80)] = False
        task = asyncio.create_task(mon.run())
        a1 = ("web", DestKey("10.0.0.1", 80))
        await until(lambda: mon.verdicts()[a1].is_up and mon.first_round_done("web"))
        await asyncio.sleep(0)
        v = mon.verdicts()
        assert v[("web", DestKey("10.0.0.1", 80))].is_up
        assert not v[("web", DestKey("10.0.0.2", 80))].is_up
        assert mon.first_round_done("web")
        assert changes  # first round done + rise of .1
        n = len(changes)
        p.ok[("10.0.0.1", 80)] = False
        await until(lambda: not mon.verdicts()[("web", DestKey("10.0.0.1", 80))].is_up)
        await asyncio.sleep(0)
        assert not mon.verdicts()[("web", DestKey("10.0.0.1", 80))].is_up
        assert len(changes) == n + 1
        mon.stop()
        await asyncio.wait_for(task, 1)

    with caplog.at_level(logging.INFO, logger="ipvsync.health"):
        asyncio.run(main())
    recs = [r for r in caplog.records if r.name == "ipvsync.health" and hasattr(r, "SERVICE")]
    assert [(r.REAL_SERVER, r.REASON, r.levelname) for r in recs] == [
        ("10.0.0.1:80", "ok", "INFO"), ("10.0.0.1:80", "refused", "WARNING")]
    assert recs[0].SERVICE == "web" and recs[0].CHECK == "tcp 10.0.0.1:80"


def test_identical_probes_run_once_state_per_service():
    async def main() -> None:
        p = FakeProber()
        mon = monitor(p)
        # three services share a target and probe parameters; rise/fall differ (not part of the probe)
        c = cfg(svc("a", 80, [("10.0.0.1", 8080)], TCP),
                svc("b", 81, [("10.0.0.1", 8080)], {**TCP, "rise": 5, "fall": 1}),
                svc("c", 82, [("10.0.0.1", 8080)], TCP),
                svc("d", 83, [("10.0.0.1", 8080)], {**TCP, "timeout": 0.06}))  # different probe
        mon.update(c, set())
        await run_for(mon, 0, lambda: all(h.probes >= 2 for h in mon.verdicts().values()))
        assert len(p.calls) == 2
        shared = [s for s in p.calls if s.timeout == 0.05][0]
        v = mon.verdicts()
        # one probe run fed three machines: each saw exactly as many verdicts as there were runs
        assert {v[(n, DestKey("10.0.0.1", 8080))].probes for n in "abc"} == {p.calls[shared]}
        assert v[("a", DestKey("10.0.0.1", 8080))].is_up and v[("c", DestKey("10.0.0.1", 8080))].is_up
        assert v[("b", DestKey("10.0.0.1", 8080))].state == RISING or p.calls[shared] >= 5
        assert mon.status()["probe_jobs"] == 2

    asyncio.run(main())


def test_exec_probes_are_not_shared_across_services():
    c = cfg(svc("a", 80, [("10.0.0.1", 80)], {"type": "exec", "command": ["/bin/true"]}),
            svc("b", 81, [("10.0.0.1", 80)], {"type": "exec", "command": ["/bin/true"]}))
    mon = monitor(FakeProber())
    mon.update(c, set())
    assert mon.status()["probe_jobs"] == 2


def test_reload_carries_state_and_parameter_change_restarts():
    async def main() -> None:
        p = FakeProber()
        mon = monitor(p)
        c1 = cfg(svc("web", 80, [("10.0.0.1", 80), ("10.0.0.2", 80)], TCP))
        mon.update(c1, set())
        await run_for(mon, 0, lambda: all(h.is_up for h in mon.verdicts().values()))
        v = mon.verdicts()
        # .1 keeps its check (rise/fall change only), .2 gets a new path -> fresh state (initial down)
        s1 = svc("web", 80, [("10.0.0.1", 80)], {**TCP, "rise": 7})
        s2 = svc("web", 80, [("10.0.0.2", 80)], {**TCP, "connect_port": 8080})
        c2 = cfg(Service("web", s1.key, s1.attrs, s1.real_servers + s2.real_servers, ORIGIN, s1.vips))
        mon.update(c2, set())
        v2 = mon.verdicts()
        h1 = v2[("web", DestKey("10.0.0.1", 80))]
        assert h1.is_up and h1.rise == 7 and h1.probes == v[("web", DestKey("10.0.0.1", 80))].probes
        h2 = v2[("web", DestKey("10.0.0.2", 80))]
        assert not h2.is_up and h2.probes == 0
        assert mon.first_round_done("web")  # a service's first round does not regress on reload
        # removed service disappears
        mon.update(cfg(), set())
        assert mon.verdicts() == {} and mon.status()["probe_jobs"] == 0

    asyncio.run(main())


def test_update_is_linear_ish():
    import time

    def big(n: int) -> Config:
        return cfg(*[svc(f"s{i}", 1000 + i, [(f"10.0.{i // 250}.{i % 250}", 80 + j) for j in range(10)], TCP)
                     for i in range(n)])

    def best(c: Config) -> float:
        times = []
        for _ in range(3):
            mon = monitor(FakeProber())
            t0 = time.perf_counter()
            mon.update(c, set())
            mon.update(c, set())  # carry over
            times.append(time.perf_counter() - t0)
        assert len(mon.verdicts()) == sum(len(s.real_servers) for s in c.services)
        return min(times)

    t_small, t_large = best(big(40)), best(big(400))
    assert t_large < t_small * 30  # 10x the input; quadratic would be ~100x


def test_pause_freezes_verdicts():
    async def main() -> None:
        p = FakeProber()
        changes: list[int] = []
        mon = monitor(p, changes)
        c = cfg(svc("web", 80, [("10.0.0.1", 80)], {**TCP, "initial": "up", "fall": 1}))
        mon.update(c, set())
        mon.set_paused(True)
        p.ok[("10.0.0.1", 80)] = False
        live = lambda: mon.status()["services"]["web"]["real_servers"]["10.0.0.1:80"]  # noqa: E731
        await run_for(mon, 0, lambda: live()["probes"])
        assert mon.verdicts()[("web", DestKey("10.0.0.1", 80))].is_up  # frozen
        assert mon.status()["services"]["web"]["real_servers"]["10.0.0.1:80"]["up"] is False  # live
        assert changes == []
        mon.set_paused(False)
        await asyncio.sleep(0)
        assert not mon.verdicts()[("web", DestKey("10.0.0.1", 80))].is_up
        assert changes == [1]

    asyncio.run(main())


def test_flapping_is_rate_limited_in_log(caplog):
    class Flapper(FakeProber):
        async def __call__(self, spec: ProbeSpec) -> ProbeResult:
            self.calls[spec] += 1
            return ProbeResult(self.calls[spec] % 2 == 0, "x", 0.0)

    async def main() -> None:
        mon = monitor(Flapper(), flap_max=3, flap_window=60)
        mon.update(cfg(svc("web", 80, [("10.0.0.1", 80)], {**TCP, "rise": 1, "fall": 1})), set())
        rs = ("web", DestKey("10.0.0.1", 80))
        await run_for(mon, 0, lambda: mon.verdicts()[rs].transitions > 6)
        assert mon.verdicts()[rs].flapping
        st = mon.status()["services"]["web"]["real_servers"]["10.0.0.1:80"]
        assert st["flapping"] and st["transitions"] > 6

    with caplog.at_level(logging.INFO, logger="ipvsync.health"):
        asyncio.run(main())
    recs = [r for r in caplog.records if getattr(r, "SERVICE", None) == "web"]
    assert len(recs) == 4 and "flapping" in recs[-1].getMessage()


def test_concurrency_is_bounded():
    class Slow(FakeProber):
        def __init__(self) -> None:
            super().__init__()
            self.now = self.peak = 0

        async def __call__(self, spec: ProbeSpec) -> ProbeResult:
            self.now += 1
            self.peak = max(self.peak, self.now)
            await asyncio.sleep(0.01)
            self.now -= 1
            return ProbeResult(True, "ok", 0.01)

    async def main() -> None:
        p = Slow()
        mon = HealthMonitor(lambda: None, max_concurrency=5, rng=random.Random(2), prober=p)
        mon.update(cfg(*[svc(f"s{i}", 1000 + i, [("10.0.1.1", 2000 + i)], {**TCP, "interval": 0.001})
                         for i in range(50)]), set())
        await run_for(mon, 0.1)
        assert p.peak == 5

    asyncio.run(main())


def test_on_probe_callback_and_prober_exceptions():
    seen: list[tuple[ProbeSpec, ProbeResult]] = []

    async def broken(spec: ProbeSpec) -> ProbeResult:
        raise RuntimeError("boom")

    async def main() -> None:
        mon = HealthMonitor(lambda: None, prober=broken, on_probe=lambda s, r: seen.append((s, r)))
        mon.update(cfg(svc("web", 80, [("10.0.0.1", 80)], {**TCP, "initial": "up", "fall": 1})), set())
        await run_for(mon, 0, lambda: not mon.verdicts()[("web", DestKey("10.0.0.1", 80))].is_up)
        h = mon.verdicts()[("web", DestKey("10.0.0.1", 80))]
        assert not h.is_up and h.last_reason == "error: boom"

    asyncio.run(main())
    assert seen and seen[0][1].reason == "error: boom"


def test_first_round_spread_over_one_interval():
    t = [100.0]
    mon = HealthMonitor(lambda: None, clock=lambda: t[0], rng=random.Random(3), prober=FakeProber())
    mon.update(cfg(*[svc(f"s{i}", 1000 + i, [("10.0.2.1", 3000 + i)], {**TCP, "interval": 10})
                     for i in range(200)]), set())
    dues = sorted(d for d, _, _ in mon._heap)
    assert len(dues) == 200 and 100.0 <= dues[0] and dues[-1] <= 110.0
    assert 60 < sum(d < 105.0 for d in dues) < 140  # uniform: about half in the first half
    assert not any(mon.first_round_done(f"s{i}") for i in range(200))


@pytest.mark.parametrize("seq,expect", [("++", True), ("+-+", False), ("---", False)])
def test_machine_param(seq, expect):
    h, _ = run_seq(initial(False, 0.0, rise=2, fall=2), seq)
    assert h.is_up is expect


def test_module_constants():
    assert machine.FLAP_MAX >= 2 and machine.FLAP_WINDOW > 0


def test_file_check_feeds_file_weights_immediately(tmp_path):
    path = tmp_path / "maint"
    c = cfg(svc("web", 80, [("10.0.0.1", 80), ("10.0.0.2", 80)], {"type": "file", "path": str(path),
                                                                    "interval": 0.01}))

    async def main() -> None:
        changes: list[int] = []
        mon = HealthMonitor(lambda: changes.append(1), rng=random.Random(4))  # real probes
        mon.update(c, set())
        assert mon.status()["probe_jobs"] == 1  # one file, one probe for both servers
        task = asyncio.create_task(mon.run())
        await until(lambda: all(h.is_up for h in mon.verdicts().values()))  # rise is 1 for file checks
        assert mon.file_weights() == {}
        path.write_text("3")
        await until(lambda: len(mon.file_weights()) == 2)
        assert set(mon.file_weights().values()) == {3}
        path.write_text("")
        await until(lambda: not any(h.is_up for h in mon.verdicts().values()))
        assert set(mon.file_weights().values()) == {0}
        mon.stop()
        await task

    asyncio.run(main())


def test_next_probe_due_from_due_time_not_late_start():
    """A probe launched late by the wake-up slack keeps its phase; one launched later than that (a busy
    process) is followed a whole interval after its start."""
    t = [100.0]
    mon = HealthMonitor(lambda: None, clock=lambda: t[0], rng=random.Random(3), prober=FakeProber())
    mon.update(cfg(svc("s", 1000, [("10.0.2.1", 3000)], {**TCP, "interval": 10})), set())
    due, _, job = mon._heap[0]
    mon._heap.clear()
    mon._inflight = 1
    mon._finish(job, due + 0.04, ProbeResult(True, "ok", 0.001))  # started 40 ms late
    assert mon._heap[0][0] == pytest.approx(due + 10)
    mon._heap.clear()
    mon._inflight = 1
    due2 = due + 10
    job.due = due2
    mon._finish(job, due2 + 3, ProbeResult(True, "ok", 0.001))  # a stalled start: a whole interval after it
    assert mon._heap[0][0] == pytest.approx(due2 + 13)
