"""Issue 4, proof 5: removal drains.

A real server leaving the config keeps its established connection (weight 0, no new connections)
and is deleted once that connection is gone; a whole service leaving the config keeps its VIP and
its held connection the same way, then goes; UDP real servers go at once. drain_timeout is 60 s, so
the deletions below (within ~15 s of the RST: IPVS keeps a reset connection 10 s in CLOSE) come from
the connection count reaching 0, not from the timeout.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import Holder, Load, daemon_fixture, ipvs_weights, start_servers, vips, wait_for

pytestmark = pytest.mark.kernel
make_daemon = daemon_fixture()


def render(servers: list[Any], a_rs: list[Any], with_b: bool, u_rs: list[Any]) -> str:
    lines = ["version: 1", "defaults:", "  scheduler: rr", "  drain_timeout: 60s", "services:",
             "  a:", "    vip: 192.0.2.10", "    port: 80", "    real_servers:"]
    lines += [f"      - {s.ip4}:80" for s in a_rs]
    if with_b:
        lines += ["  b:", "    vip: 192.0.2.20", "    port: 80", "    real_servers:"]
        lines += [f"      - {s.ip4}:80" for s in servers]
    lines += ["  u:", "    vip: 192.0.2.53", "    port: 53", "    protocol: udp", "    real_servers:"]
    lines += [f"      - {s.ip4}:53" for s in u_rs]
    return "\n".join(lines) + "\n"


def test_removed_real_server_and_service_drain_udp_goes_at_once(netns: Any, topology: Any, tmp_path: Path,
                                                                 make_daemon: Any) -> None:
    topo = topology(n_servers=2)
    servers = topo.servers
    start_servers(servers)
    for s in servers:
        s.serve_whoami(port=53, udp=True, tcp=False)
    by_name = {s.name: s for s in servers}
    d = make_daemon()
    d.write(render(servers, servers, True, servers))
    d.start()

    # the first (and only) connections to A and B, held open
    held_a = Holder(topo.client, "192.0.2.10", 80)
    held_b = Holder(topo.client, "192.0.2.20", 80)
    x = by_name[held_a.server]  # A's real server that will leave the config
    keep = next(s for s in servers if s is not x)
    # a UDP "connection" through each of U's real servers
    assert sorted(topo.client.ask("192.0.2.53", 53, udp=True, count=2)) == sorted(by_name)

    d.write(render(servers, [keep], False, servers[:1]))
    t_removed = time.monotonic()
    ans = d.reload()
    assert ans["code"] == 0, ans
    w = ipvs_weights(netns)
    assert w["t 192.0.2.10:80"] == {f"{x.ip4}:80": 0, f"{keep.ip4}:80": 1}, w  # draining at weight 0
    assert w["t 192.0.2.20:80"] == {f"{s.ip4}:80": 0 for s in servers}, w  # the whole service drains
    assert w["u 192.0.2.53:53"] == {f"{servers[0].ip4}:53": 1}, w  # UDP: gone at once
    assert "192.0.2.20" in vips(netns)  # B's VIP stays while it drains

    # established connections keep working; new ones avoid the draining real server
    assert held_a.ping() == x.name and held_b.ping() == held_b.server
    fresh = Load(topo.client, "192.0.2.10", 80, tmp_path, pause=0, max_count=6)
    res = fresh.stop(finish=True)
    assert res["fail"] == 0 and res["by"] == {keep.name: 6}, res
    time.sleep(3)  # several drain polls later: still there, still working
    w = ipvs_weights(netns)
    assert f"{x.ip4}:80" in w["t 192.0.2.10:80"] and "t 192.0.2.20:80" in w, w
    assert "192.0.2.20" in vips(netns)
    assert held_a.ping() == x.name and held_b.ping() == held_b.server
    held_for = time.monotonic() - t_removed

    # the connections close: the real server, then the service and its VIP, are deleted
    held_a.reset()
    held_b.reset()
    t_closed = time.monotonic()

    def gone() -> bool:
        w = ipvs_weights(netns)
        return w.get("t 192.0.2.10:80") == {f"{keep.ip4}:80": 1} and "t 192.0.2.20:80" not in w

    took = wait_for(gone, 40, 0.25, "the drained real server and service to be deleted")
    wait_for(lambda: vips(netns) == {"192.0.2.10", "192.0.2.53"}, 10, 0.1, "B's VIP to be unbound")
    log = d.log()
    assert f"real server {x.ip4}:80 of tcp 192.0.2.10:80 drained (no connections left)" in log, log
    assert "service tcp 192.0.2.20:80 drained (no connections left)" in log, log
    assert "drain timeout" not in log
    assert d.pending_ops() == []
    print(f"held {held_for:.1f} s through the drain; deleted {took:.1f} s after the RST "
          f"({time.monotonic() - t_closed:.1f} s incl. the VIP); daemon start {d.start_seconds:.1f} s")
