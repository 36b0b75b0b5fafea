"""HTTP health checks in the real kernel (issue 5): status codes, body regex and a slow server.

Each real server runs a tiny HTTP server whose answer (status code, body) a test flips through files.
503 takes it out of rotation and 200 brings it back; a body that no longer matches `body_regex` takes
it out; netem delaying its packets beyond the check timeout takes it out with reason "timeout".
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from health_servers import HERE, PY_FAST, Lab
from uml.netns import Netns, Topology

pytestmark = pytest.mark.kernel

INTERVAL, TIMEOUT, RISE, FALL = 0.5, 0.5, 2, 3
DELAY = "1000ms"  # netem delay, beyond the timeout (0.5 s rather than 0.3 s: the HTTP server is Python in UML)
VIP = "192.0.2.20"
WEB = f"TCP {VIP}:80"
SLACK = 0.1


def config(servers: list[str]) -> str:
    return f"""version: 1
vip_interface: ipvsync0
sysctls: {{net.ipv4.ip_forward: 1, net.ipv4.vs.expire_nodest_conn: 1}}
services:
  web:
    vip: {VIP}
    port: 80
    scheduler: rr
    health:
      type: http
      path: /health
      host: www.example.com
      status: [200-299]
      body_regex: "^OK "
      interval: {INTERVAL}s
      timeout: {TIMEOUT}s
      rise: {RISE}
      fall: {FALL}
    real_servers: [{", ".join(servers)}]
"""


def test_http_check_status_regex_timeout(netns: Netns, topology: Callable[..., Topology], tmp_path: Path) -> None:
    topo = topology(n_servers=2)
    dirs = {h.name: Path() for h in topo.servers}
    lab = Lab(netns, topo, tmp_path)
    with lab.diagnostics():
        for h in topo.servers:
            dirs[h.name] = lab.serve(h, http=80)
        rs = [f"{h.ip4}:80" for h in topo.servers]
        lab.write_config(config([h.ip4 for h in topo.servers]))
        t_start = time.monotonic()
        lab.start_daemon()
        for r in rs:
            lab.watch.wait_weight(WEB, r, 1, after=t_start, limit=30)

        def client(n: int = 4) -> collections.Counter[str]:
            out = topo.client.ns.run([*PY_FAST, str(HERE), "ask-http", VIP, "80", "--count", str(n), "--timeout", "2"],
                                     check=False).stdout
            return collections.Counter(out.split())

        assert client() == {"OK": 4, topo.servers[0].name: 2, topo.servers[1].name: 2}

        def write(h, name: str, text: str | None) -> None:  # type: ignore[no-untyped-def]
            p = dirs[h.name] / name
            if text is None:
                p.unlink(missing_ok=True)
            else:
                p.with_suffix(".tmp").write_text(text)
                p.with_suffix(".tmp").replace(p)

        def netem(h, on: bool) -> None:  # type: ignore[no-untyped-def]
            argv = ["tc", "qdisc", "add", "dev", "eth0", "root", "netem", "delay", DELAY] if on else \
                   ["tc", "qdisc", "del", "dev", "eth0", "root"]
            h.ns.run(argv)

        s0, s1 = topo.servers
        scenarios = [
            ("503", s1, lambda h: write(h, "http_status", "503"), lambda h: write(h, "http_status", "200"),
             "status 503"),
            ("body", s0, lambda h: write(h, "http_body", "MAINTENANCE\n"), lambda h: write(h, "http_body", None),
             "regex mismatch"),
            (f"netem {DELAY}", s1, lambda h: netem(h, True), lambda h: netem(h, False), "timeout"),
        ]
        timings = []
        for label, victim, brk, fix, reason in scenarios:
            v = f"{victim.ip4}:80"
            other = s0 if victim is s1 else s1
            t0 = time.monotonic()
            brk(victim)
            t_down = lab.watch.wait_weight(WEB, v, 0, after=t0, limit=15) - t0
            assert t_down >= (FALL - 1) * INTERVAL - SLACK, (label, t_down)
            c = client()
            assert c == {"OK": 4, other.name: 4}, (label, c)  # every new connection goes to the other one
            st = lab.rs_status("web", v)
            assert st["health"] == "down" and st["last_failure"] == reason, (label, st)
            t1 = time.monotonic()
            fix(victim)
            t_up = lab.watch.wait_weight(WEB, v, 1, after=t1, limit=15) - t1
            assert t_up >= (RISE - 1) * INTERVAL - SLACK, (label, t_up)
            assert lab.rs_status("web", v)["health"] == "up"
            timings.append(f"{label}: weight 0 after {t_down:.2f} s, back after {t_up:.2f} s")
            lab.transition_time("web", v, "down -> up", t1)  # the log line may trail the kernel weight
            lines = lab.transitions("web", v)
            assert f"REASON={reason}]" in lines[-2] and " up -> down " in lines[-2], (label, lines)
            assert "CHECK=http GET " + v + "/health" in lines[-2], lines[-2]
        assert client() == {"OK": 4, s0.name: 2, s1.name: 2}
        # every transition was caused by the test (no false downs), one line each
        assert lab.sequence("web", rs[0]) == ["down -> up", "up -> down", "down -> up"], lab.transitions("web", rs[0])
        assert lab.sequence("web", rs[1]) == ["down -> up"] + ["up -> down", "down -> up"] * 2, \
            lab.transitions("web", rs[1])
        print(f"http interval {INTERVAL} s, timeout {TIMEOUT} s, fall {FALL}, rise {RISE}:\n  " + "\n  ".join(timings))
