"""HealthMonitor.update on a reload that touches few services (the incremental path) must leave
the same tables as the long way (every service re-derived, state carried over by identity)."""

from __future__ import annotations

import random
from typing import Any

from test_health_machine import cfg, svc

from ipvsync.config.spec import Config
from ipvsync.health.monitor import HealthMonitor

TCP = {"type": "tcp", "interval": 5, "timeout": 1}
TCP2 = {"type": "tcp", "interval": 7, "timeout": 1}


def tables(mon: HealthMonitor) -> dict[str, Any]:
    live_jobs = {jk: sorted(map(str, job.subs)) for jk, job in mon._jobs.items()}
    return {
        "entries": {str(k): (e.spec, e.on_failure) for k, e in mon._entries.items()},
        "jobs": live_jobs,
        "entry_jobs": {str(k): (e.job.spec, e.job.interval) if e.job else None for k, e in mon._entries.items()},
        "by_service": {n: sorted(map(str, ks)) for n, ks in mon._by_service.items()},
        "pending": dict(mon._pending),
        "no_dead_job_in_use": all(not e.job.dead for e in mon._entries.values() if e.job),
    }


def base(n: int = 12) -> list:
    # services 0 and 1 share real servers and checks: their probes are deduplicated into shared jobs
    out = [svc("s0", 80, [("198.51.100.1", 80), ("198.51.100.2", 80)], TCP),
           svc("s1", 81, [("198.51.100.1", 80), ("198.51.100.2", 80)], TCP)]
    out += [svc(f"s{i}", 80 + i, [(f"198.51.100.{i + 10}", 80)], TCP if i % 3 else {"type": "none"})
            for i in range(2, n)]
    return out


def compare(old: Config, new: Config) -> None:
    inc = HealthMonitor(lambda: None, rng=random.Random(1))
    inc.update(old)
    before = dict(inc._entries)
    inc.update(new)
    full = HealthMonitor(lambda: None, rng=random.Random(1))
    full.update(old)
    full._config = None  # no previous config to compare with: every service goes the long way
    full.update(new)
    assert tables(inc) == tables(full)
    for k, e in inc._entries.items():  # identities whose check is unchanged keep their state object
        if k in before and before[k].spec == e.spec:
            assert e is before[k]


def test_edit_one_service_sharing_probes() -> None:
    old = base()
    new = list(old)
    new[1] = svc("s1", 81, [("198.51.100.1", 80), ("198.51.100.3", 80)], TCP)
    compare(cfg(*old), cfg(*new))


def test_change_check_of_a_shared_probe() -> None:
    old = base()
    new = list(old)
    new[0] = svc("s0", 80, [("198.51.100.1", 80), ("198.51.100.2", 80)], TCP2)
    compare(cfg(*old), cfg(*new))


def test_remove_and_add_services() -> None:
    old = base()
    new = [s for s in old if s.name != "s4"] + [svc("s99", 99, [("198.51.100.1", 80)], TCP)]
    compare(cfg(*old), cfg(*new))
    new2 = [s for s in old if s.name != "s1"]
    compare(cfg(*old), cfg(*new2))


def test_rename_keeps_nothing_of_the_old_name() -> None:
    old = base()
    new = list(old)
    new[5] = svc("renamed", 85, [("198.51.100.15", 80)], TCP)
    compare(cfg(*old), cfg(*new))


def test_big_change_takes_the_full_path() -> None:
    old = base()
    new = [svc(s.name, s.key.port, [(rs.key.address, rs.key.port) for rs in s.real_servers], TCP2) for s in old]
    compare(cfg(*old), cfg(*new))
