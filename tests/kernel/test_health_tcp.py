"""Health checks in the real kernel (issue 5): TCP checks take real servers out of rotation and back.

The daemon runs in the director netns with real servers in their own namespaces. A server is killed,
firewalled (a tc ingress drop filter: this UML kernel has no nftables ip/inet family) and unplugged
(`ip link set eth0 down`): each time it reaches weight 0 (service `web`, on_failure: inhibit) and leaves
IPVS (service `web-rm`, on_failure: remove) no earlier than `fall` failed probes allow, the client then
gets no new connection to it, and it is back after `rise` successes. The two services share their
probes: a server sees one probe per interval, not two. Each transition is one log line with SERVICE,
REAL_SERVER, CHECK and REASON fields.
"""

from __future__ import annotations

import collections
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from health_servers import Lab, drop_tcp, passive_opens
from uml.netns import Netns, Topology

pytestmark = pytest.mark.kernel

INTERVAL, TIMEOUT, RISE, FALL = 0.5, 0.3, 2, 3
HEALTH = f"{{type: tcp, interval: {INTERVAL}s, timeout: {TIMEOUT}s, rise: {RISE}, fall: {FALL}}}"
VIP, VIP_RM = "192.0.2.10", "192.0.2.11"
WEB, WEB_RM = f"TCP {VIP}:80", f"TCP {VIP_RM}:80"
SLACK = 0.1  # scheduling jitter allowed below the theoretical minimum


def config(servers: list[str]) -> str:
    rs = ", ".join(servers)
    return f"""version: 1
vip_interface: ipvsync0
sysctls: {{net.ipv4.ip_forward: 1, net.ipv4.vs.expire_nodest_conn: 1}}
defaults:
  scheduler: rr
  health: {HEALTH}
services:
  web:
    vip: {VIP}
    port: 80
    real_servers: [{rs}]
  web-rm:
    vip: {VIP_RM}
    port: 80
    health: {HEALTH[:-1]}, on_failure: remove}}
    real_servers: [{rs}]
"""


def answers(topo: Topology, vip: str, n: int) -> collections.Counter[str]:
    return collections.Counter(a.strip() for a in topo.client.ask(vip, 80, count=n, timeout=2))


def test_tcp_check_kill_drop_unplug(netns: Netns, topology: Callable[..., Topology], tmp_path: Path) -> None:
    topo = topology(n_servers=3)
    procs = {h.name: h.serve_whoami(port=80) for h in topo.servers}
    s0 = topo.servers[0]
    rs = [f"{h.ip4}:80" for h in topo.servers]
    lab = Lab(netns, topo, tmp_path)
    with lab.diagnostics():
        lab.write_config(config([h.ip4 for h in topo.servers]))
        t_start = time.monotonic()
        ready = lab.start_daemon()
        for r in rs:  # initial: down -> in rotation after `rise` passing probes
            lab.watch.wait_weight(WEB, r, 1, after=t_start, limit=30)
            lab.watch.wait_weight(WEB_RM, r, 1, after=t_start, limit=30)
        print(f"daemon answering after {ready:.1f} s; all real servers in after {time.monotonic() - t_start:.1f} s")

        # identical probes (web and web-rm check the same server the same way) run once
        c0, t0 = passive_opens(s0.ns), time.monotonic()
        time.sleep(4.0)
        c1, t1 = passive_opens(s0.ns), time.monotonic()
        per_interval = (t1 - t0) / INTERVAL
        print(f"shared probes: {c1 - c0} connections at {s0.name} in {t1 - t0:.2f} s ({per_interval:.1f} intervals)")
        assert 0.5 * per_interval <= c1 - c0 <= per_interval + 2, (c1 - c0, per_interval)

        c = answers(topo, VIP, 6)
        assert c == {h.name: 2 for h in topo.servers}, c

        def kill(h):  # type: ignore[no-untyped-def]
            procs[h.name].kill()
            procs[h.name].wait()

        def restart(h):  # type: ignore[no-untyped-def]
            procs[h.name] = h.serve_whoami(port=80)

        def drop(h):  # type: ignore[no-untyped-def]
            drop_tcp(h.ns, 80, True)

        def undrop(h):  # type: ignore[no-untyped-def]
            drop_tcp(h.ns, 80, False)

        def unplug(h):  # type: ignore[no-untyped-def]
            h.ns.run(["ip", "link", "set", "eth0", "down"])

        def plug(h):  # type: ignore[no-untyped-def]
            h.ns.run(["ip", "link", "set", "eth0", "up"])
            h.ns.run(["ip", "route", "replace", "default", "via", h.gw4])  # link down flushed it

        scenarios = [("kill", topo.servers[1], kill, restart, {"refused"}),
                     ("tc drop", topo.servers[2], drop, undrop, {"timeout"}),
                     ("link down", topo.servers[0], unplug, plug, {"timeout", "unreachable"})]
        drop_tcp(topo.servers[2].ns, 80, True)  # load the tc modules now, not inside the timed window
        drop_tcp(topo.servers[2].ns, 80, False)
        timings = []
        for label, victim, brk, fix, reasons in scenarios:
            v = f"{victim.ip4}:80"
            others = {h.name for h in topo.servers if h is not victim}
            t0 = time.monotonic()
            brk(victim)
            t0b = time.monotonic()
            down_at = lab.watch.wait_weight(WEB, v, 0, after=t0, limit=15)
            gone_at = lab.watch.wait_weight(WEB_RM, v, None, after=t0, limit=15)
            logged = lab.transition_time("web", v, "up -> down", t0)
            # not before `fall` failed probes: the first can start right away, the last (fall-1) intervals later
            assert down_at - t0 >= (FALL - 1) * INTERVAL - SLACK, (label, down_at - t0)
            assert gone_at - t0 >= (FALL - 1) * INTERVAL - SLACK, (label, gone_at - t0)
            assert lab.watch.weight(WEB, v) == 0, label  # and it stays out while the failure lasts
            for vip in (VIP, VIP_RM):
                c = answers(topo, vip, 6)
                assert set(c) == others and sum(c.values()) == 6, (label, vip, c)  # no error, no victim
            st = lab.rs_status("web", v)
            assert st["health"] == "down" and st["last_failure"] in reasons, (label, st)
            assert st["kernel_weight"] == 0 and lab.rs_status("web-rm", v)["kernel_weight"] is None, label
            t1 = time.monotonic()
            fix(victim)
            t1b = time.monotonic()
            up_at = lab.watch.wait_weight(WEB, v, 1, after=t1, limit=15)
            back_at = lab.watch.wait_weight(WEB_RM, v, 1, after=t1, limit=15)
            assert up_at - t1 >= (RISE - 1) * INTERVAL - SLACK, (label, up_at - t1)
            c = answers(topo, VIP, 6)
            assert c == {h.name: 2 for h in topo.servers}, (label, c)
            timings.append(f"{label} ({(t0b - t0) * 1000:.0f} ms to break): weight 0 {down_at - t0b:.2f} s after, "
                           f"removed {gone_at - t0b:.2f} s (logged {logged - t0b:.2f} s); back in "
                           f"{up_at - t1b:.2f}/{back_at - t1b:.2f} s after the fix ({(t1b - t1) * 1000:.0f} ms)")
        print(f"interval {INTERVAL} s, timeout {TIMEOUT} s, fall {FALL}, rise {RISE}:\n  " + "\n  ".join(timings))

        # one journal-style line per transition and service, with the structured fields
        for label, victim, _brk, _fix, reasons in scenarios:
            v = f"{victim.ip4}:80"
            for service in ("web", "web-rm"):
                lines = lab.transitions(service, v)  # in at start, out, back in; nothing else
                assert lab.sequence(service, v) == ["down -> up", "up -> down", "down -> up"], lines
                assert f"CHECK=tcp {v}" in lines[1]
                assert any(f"REASON={r}]" in lines[1] for r in reasons), (label, lines[1])
        lab.stop_daemon(signal.SIGTERM)
        assert lab.watch.weight(WEB, rs[0]) == 1  # stopping the daemon leaves IPVS as it is
