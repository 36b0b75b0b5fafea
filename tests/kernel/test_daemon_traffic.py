"""Issue 4, proofs 1 and 2: the daemon is hitless for an unchanged service under reload storms and crashes.

Service A (192.0.2.10:80, NAT, wrr over two real servers in their own netns) gets a continuous loop
of NEW TCP connections from a client netns while
  1. 100 reloads (control socket, SIGHUP, rename-over and in-place file edits, in turn) add, edit
     and remove other services (some share A's VIP, some have their own) and change A's weights;
  2. the daemon is killed with SIGKILL in the middle of applying 300 new services, then restarted.
Every connection to A must succeed; nothing is flushed (a foreign service survives, A's
connection counter keeps counting).
"""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import (
    Load,
    ProcIpvs,
    daemon_fixture,
    ipvs_weights,
    service_conns,
    start_servers,
    vips,
    wait_for,
)

pytestmark = pytest.mark.kernel
make_daemon = daemon_fixture()

VIP_A = "192.0.2.10"
A_KEY = f"t {VIP_A}:80"


def render(servers: list[Any], a_weights: tuple[int, int], others: dict[int, dict[str, Any]],
           extra: str = "") -> str:
    s0, s1 = servers
    lines = [
        "version: 1",
        "vip_interface: ipvsync0",
        "defaults:",
        "  scheduler: wrr",
        extra.rstrip(),
        "services:",
        "  a:",
        f"    vip: {VIP_A}",
        "    port: 80",
        "    real_servers:",
        f"      - {{address: {s0.ip4}, port: 80, weight: {a_weights[0]}}}",
        f"      - {{address: {s1.ip4}, port: 80, weight: {a_weights[1]}}}",
    ]
    for k in sorted(others):
        o = others[k]
        lines += [f"  other-{k}:", f"    vip: {o['vip']}", f"    port: {o['port']}",
                  f"    scheduler: {o['scheduler']}", "    real_servers:"]
        lines += [f"      - {{address: {addr}, port: {port}, weight: {w}}}" for addr, port, w in o["rs"]]
    return "\n".join(ln for ln in lines if ln) + "\n"


def other_service(k: int, servers: list[Any], rng: random.Random) -> dict[str, Any]:
    # every third one shares A's VIP (its removal must never unbind A's address)
    vip, port = (VIP_A, 8000 + k) if k % 3 == 0 else (f"198.18.0.{k + 1}", 80)
    pool = [(s.ip4, p) for s in servers for p in (80, 8080)]
    rs = [(a, p, rng.randint(1, 9)) for a, p in rng.sample(pool, rng.randint(1, 3))]
    return {"vip": vip, "port": port, "scheduler": rng.choice(["rr", "wrr", "wlc"]), "rs": sorted(rs)}


def expected_keys(others: dict[int, dict[str, Any]]) -> set[str]:
    return {A_KEY} | {f"t {o['vip']}:{o['port']}" for o in others.values()}


def test_100_reloads_under_traffic_zero_failed_connections(netns: Any, topology: Any, tmp_path: Path,
                                                           make_daemon: Any) -> None:
    topo = topology(n_servers=2)
    start_servers(topo.servers)
    rng = random.Random(4)
    a_w = (1, 1)
    others: dict[int, dict[str, Any]] = {k: other_service(k, topo.servers, rng) for k in (1, 2, 3)}
    d = make_daemon()
    d.write(render(topo.servers, a_w, others))
    d.start()
    load = Load(topo.client, VIP_A, 80, tmp_path)
    modes = ("control", "sighup", "rename", "inplace")
    latency: dict[str, list[float]] = {m: [] for m in modes}
    t_all = time.monotonic()
    try:
        for i in range(100):
            # one other-service mutation every time, A's weights every other time: always a real change
            n = len(others)
            action = "add" if n < 3 else "remove" if n > 12 else rng.choice(["add", "edit", "remove"])
            if action == "add":
                k = rng.choice([k for k in range(30) if k not in others])
                others[k] = other_service(k, topo.servers, rng)
            elif action == "edit":
                k = rng.choice(sorted(others))
                new = other_service(k, topo.servers, rng)
                while new == others[k]:
                    new = other_service(k, topo.servers, rng)
                others[k] = new
            else:
                del others[rng.choice(sorted(others))]
            if i % 2 == 0:
                new_w = a_w
                while new_w == a_w:
                    new_w = (rng.randint(1, 5), rng.randint(1, 5))
                a_w = new_w
            mode = modes[i % len(modes)]
            t0 = time.monotonic()
            d.write(render(topo.servers, a_w, others), how="inplace" if mode == "inplace" else "rename")
            if mode == "control":
                ans = d.reload()
                assert ans["code"] == 0, ans
            elif mode == "sighup":
                d.send(signal.SIGHUP)
            d.wait_reloads(i + 1)
            latency[mode].append(time.monotonic() - t0)
            if i % 25 == 24:
                assert ipvs_weights(netns)[A_KEY] == {f"{topo.servers[0].ip4}:80": a_w[0],
                                                      f"{topo.servers[1].ip4}:80": a_w[1]}
        reload_seconds = time.monotonic() - t_all
        time.sleep(0.5)  # a little traffic after the last reload
    finally:
        result = load.stop()
    log = d.log()
    assert result["fail"] == 0, f"failed connections to A during reloads: {result}\n{log}"
    assert result["ok"] >= 100, result
    assert set(result["by"]) == {s.name for s in topo.servers}, result
    assert d.reloads() == 100, log
    assert d.rejections() == 0, log
    assert d.alive()
    # converged to the last config exactly
    assert d.pending_ops() == []
    weights = ipvs_weights(netns)
    assert set(weights) == expected_keys(others), weights
    assert weights[A_KEY] == {f"{topo.servers[0].ip4}:80": a_w[0], f"{topo.servers[1].ip4}:80": a_w[1]}
    assert vips(netns) == {VIP_A} | {o["vip"] for o in others.values()}
    summary = {m: (len(v), round(sum(v) / len(v), 3), round(max(v), 3)) for m, v in latency.items()}
    print(f"100 reloads in {reload_seconds:.1f} s; latency per mode (count, mean s, max s): {summary}; "
          f"traffic to A: {result}; daemon start {d.start_seconds:.1f} s")


def test_kill9_mid_apply_of_300_services_then_restart(netns: Any, topology: Any, tmp_path: Path,
                                                      make_daemon: Any) -> None:
    topo = topology(n_servers=2)
    start_servers(topo.servers)
    s0, s1 = topo.servers
    # a foreign service (not in the config, not ipvsync's) that must survive everything
    netns.run(["ipvsadm", "-A", "-t", "192.0.2.99:80", "-s", "rr"])
    netns.run(["ipvsadm", "-a", "-t", "192.0.2.99:80", "-r", f"{s1.ip4}:80", "-m", "-w", "2"])
    foreign = [ln for ln in netns.ipvsadm_save().splitlines() if "192.0.2.99" in ln]
    anchor = netns.popen(["sleep", "600"])  # a pid in the director netns for /proc/PID/net/ip_vs
    table = ProcIpvs(anchor.pid)
    d = make_daemon()
    d.write(render(topo.servers, (1, 1), {}))
    d.start()
    first_start = d.start_seconds
    load = Load(topo.client, VIP_A, 80, tmp_path)
    try:
        # IPVS publishes counters through its estimator (every 2 s): wait until A's counter shows traffic
        wait_for(lambda: service_conns(netns, f"TCP {VIP_A}:80") > 0, 30, 0.2, "A's counter")
        conns_before = service_conns(netns, f"TCP {VIP_A}:80")
        big = {k: {"vip": f"198.18.{k // 200}.{k % 200 + 1}", "port": 80, "scheduler": "wlc",
                   "rs": [(s0.ip4, 80, 1), (s1.ip4, 80, 1)]} for k in range(300)}
        d.write(render(topo.servers, (1, 1), big))
        d.send(signal.SIGHUP)
        wait_for(lambda: table.services() > 2, 60, step=0.002, what="the apply to start")
        d.kill9()
        at_kill = (table.services(), len(vips(netns)))
        # in the middle: not every service added, or not every VIP bound yet
        assert at_kill[0] < 302 or at_kill[1] < 301, f"the kill came too late: {at_kill}"
        time.sleep(0.5)  # A keeps serving with nobody running
        d.start()
        restart = d.start_seconds
        wait_for(lambda: table.services() == 302, 60, what="302 services")
        assert d.pending_ops() == []
        time.sleep(0.5)
    finally:
        result = load.stop()
    log = d.log()
    assert result["fail"] == 0, f"failed connections to A across kill -9 and restart: {result}\n{log}"
    save = netns.ipvsadm_save().splitlines()
    assert all(ln in save for ln in foreign), save
    weights = ipvs_weights(netns)
    assert set(weights) == {A_KEY, "t 192.0.2.99:80"} | {f"t 198.18.{k // 200}.{k % 200 + 1}:80" for k in range(300)}
    assert len(vips(netns)) == 301
    # never reset: A's counter ends up counting every connection the client made since the first start
    wait_for(lambda: service_conns(netns, f"TCP {VIP_A}:80") >= result["ok"], 30, 0.2, "A's counter to catch up")
    conns_after = service_conns(netns, f"TCP {VIP_A}:80")
    assert conns_before > 0 and conns_after >= result["ok"], (conns_before, conns_after, result["ok"])
    assert "192.0.2.99" not in log  # the foreign service was never touched
    print(f"killed at {at_kill[0]} services / {at_kill[1]} VIPs; first start {first_start:.1f} s, restart "
          f"{restart:.1f} s; A conns {conns_before} -> {conns_after}; traffic to A: {result}\n"
          + "\n".join(ln for ln in log.splitlines() if ln.startswith("config")))
