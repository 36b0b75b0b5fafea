"""Health state across reloads and daemon restarts in the real kernel (issue 5).

- A reload during a failure keeps the failed server down: its health state is carried (same check,
  same identity), not re-probed from zero. The config says `initial: up`, so a state started afresh
  would put the server straight back at weight 1 — the watcher would see it.
- A daemon restart while every real server is healthy changes no weight, with `initial: down`
  (default): first from the health state saved in the state dir, then with that state removed (the
  servers already serving in the kernel stay up). IPVS weights are watched continuously throughout.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from health_servers import Lab
from uml.netns import Netns, Topology

pytestmark = pytest.mark.kernel

INTERVAL = 0.5
VIP = "192.0.2.40"
WEB, OTHER = f"TCP {VIP}:80", f"TCP {VIP}:81"


def config(s0: str, s1: str, w0: int = 1, initial: str = "up", other: bool = False) -> str:
    text = f"""version: 1
vip_interface: ipvsync0
sysctls: {{net.ipv4.ip_forward: 1, net.ipv4.vs.expire_nodest_conn: 1}}
services:
  web:
    vip: {VIP}
    port: 80
    scheduler: wrr
    health: {{type: tcp, interval: {INTERVAL}s, timeout: 0.3s, rise: 2, fall: 2, initial: {initial}}}
    real_servers:
      - {{address: {s0}, weight: {w0}}}
      - {{address: {s1}, weight: 1}}
"""
    if other:
        text += f"""  other:
    vip: {VIP}
    port: 81
    real_servers: ["{s0}:80"]
"""
    return text


def test_reload_keeps_a_down_server_down_and_restart_is_hitless(
        netns: Netns, topology: Callable[..., Topology], tmp_path: Path) -> None:
    topo = topology(n_servers=2)
    s0, s1 = topo.servers
    procs = {h.name: h.serve_whoami(port=80) for h in topo.servers}
    r0, r1 = f"{s0.ip4}:80", f"{s1.ip4}:80"
    lab = Lab(netns, topo, tmp_path)
    with lab.diagnostics():
        lab.write_config(config(s0.ip4, s1.ip4))
        t_start = time.monotonic()
        lab.start_daemon()
        lab.watch.wait_weight(WEB, r0, 1, after=t_start, limit=30)
        lab.watch.wait_weight(WEB, r1, 1, after=t_start, limit=30)

        # --- a reload while s1 is down
        procs[s1.name].kill()
        procs[s1.name].wait()
        lab.watch.wait_weight(WEB, r1, 0, limit=15)
        before = lab.rs_status("web", r1)
        assert before["health"] == "down" and before["last_failure"] == "refused", before
        t_edit = time.monotonic()
        lab.write_config(config(s0.ip4, s1.ip4, w0=2, other=True))  # unrelated edits: s0's weight, a service
        answer = lab.reload()
        assert answer["ok"], answer
        lab.watch.wait_weight(WEB, r0, 2, after=t_edit, limit=15)
        lab.watch.wait_weight(OTHER, r0, 1, after=t_edit, limit=15)
        time.sleep(5 * INTERVAL)  # several probe rounds after the reload
        t_end = time.monotonic()
        seen = {lab.watch.weight_in(tb, WEB, r1) for _t, tb in lab.watch.tables(t_edit, t_end)}
        assert seen == {0}, f"the down server flapped across the reload: weights {seen}"
        after = lab.rs_status("web", r1)
        assert after["health"] == "down" and after["last_failure"] == "refused", after
        assert abs(after["since"] - before["since"]) < 0.05, (before, after)  # same state, not a new one
        lines = lab.transitions("web", r1)
        assert len(lines) == 1 and " up -> down " in lines[0], lines  # nothing happened at the reload

        # --- it recovers normally after the reload
        procs[s1.name] = s1.serve_whoami(port=80)
        lab.watch.wait_weight(WEB, r1, 1, limit=15)

        # --- hitless restarts with initial: down (a state change that does not touch the probes)
        lab.write_config(config(s0.ip4, s1.ip4, w0=2, initial="down", other=True))
        assert lab.reload()["ok"]
        expect = {WEB: {r0: 2, r1: 1}, OTHER: {r0: 1}}
        state_file = lab.state_dir / "state.json"
        restarts = []
        for variant in ("saved health state", "no saved health state"):
            time.sleep(2 * INTERVAL)
            t0 = time.monotonic()
            lab.stop_daemon()
            if variant == "no saved health state":
                doc = json.loads(state_file.read_text())
                assert doc.get("health", {}).get("states"), doc.get("health")
                doc["health"] = {}
                state_file.write_text(json.dumps(doc))
            took = lab.start_daemon()
            time.sleep(6 * INTERVAL)  # the first probe rounds of the new daemon
            t1 = time.monotonic()
            tables = lab.watch.tables(t0, t1)
            bad = [(round(t - t0, 2), tb) for t, tb in tables if tb != expect]
            assert not bad, f"{variant}: weights changed across the restart: {bad}"
            for r in (r0, r1):
                st = lab.rs_status("web", r)
                # serving ("falling" too: one probe lost to a stalled machine is not a transition)
                assert st["health"] in ("up", "falling") and st["kernel_weight"] == expect[WEB][r], (variant, st)
            restarts.append(f"{variant}: daemon answering after {took:.1f} s, {len(tables)} table(s) seen, "
                            f"weights constant over {t1 - t0:.1f} s")
        print("\n".join(restarts))
        # after the restarts the checks still work
        t0 = time.monotonic()
        procs[s0.name].kill()
        procs[s0.name].wait()
        took = lab.watch.wait_weight(WEB, r0, 0, after=t0, limit=15) - t0
        assert took >= INTERVAL - 0.1, took
        lab.transition_time("web", r0, "up -> down", t0)  # the log line may trail the kernel weight
        # nothing but the two failures caused a transition: not the reloads, not the restarts
        assert lab.sequence("web", r1) == ["up -> down", "down -> up"], lab.transitions("web", r1)
        assert lab.sequence("web", r0) == ["up -> down"], lab.transitions("web", r0)
