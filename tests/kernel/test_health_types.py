"""DNS, UDP, exec and file health checks in the real kernel (issue 5), all run by one daemon.

- dns: a small UDP responder in each real server answers SOA and A queries with NOERROR; switched to
  NXDOMAIN or REFUSED the server leaves rotation, switched back it returns.
- udp: payload "ping", reply must match ^pong; a wrong reply or silence takes the server out.
- exec: a script (run as nobody, no shell involved) exits 0, or 2 when a flag file exists; it records
  the IPVSYNC_* environment it was given.
- file: a switch file per real server: absent = configured weight, present = weight 0, "3" = weight 3.
"""

from __future__ import annotations

import pwd
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from health_servers import Lab
from uml.netns import Netns, Topology

pytestmark = pytest.mark.kernel

INTERVAL, TIMEOUT, RISE, FALL = 0.5, 1.0, 2, 2  # timeout > interval: UML on a busy host stalls
COMMON = f"interval: {INTERVAL}s, timeout: {TIMEOUT}s, rise: {RISE}, fall: {FALL}"
DNS, DNS_A, UDP, EXEC, FILE = ("UDP 192.0.2.30:53", "UDP 192.0.2.34:53", "UDP 192.0.2.31:7000",
                               "TCP 192.0.2.32:80", "TCP 192.0.2.33:80")


def config(servers: list[str], shared: Path) -> str:
    rs = ", ".join(servers)
    files = "\n".join(f"      - {{address: {a}, weight: 5, health: {{type: file, path: {shared}/maint.{a}, "
                      f"interval: 0.3s}}}}" for a in servers)
    return f"""version: 1
vip_interface: ipvsync0
sysctls: {{net.ipv4.ip_forward: 1}}
defaults:
  scheduler: rr
services:
  dns:
    vip: 192.0.2.30
    port: 53
    protocol: udp
    health: {{type: dns, query_name: example.test, query_type: SOA, {COMMON}}}
    real_servers: [{rs}]
  dns-a:
    vip: 192.0.2.34
    port: 53
    protocol: udp
    health: {{type: dns, query_name: www.example.test, query_type: A, {COMMON}}}
    real_servers: [{rs}]
  udp:
    vip: 192.0.2.31
    port: 7000
    protocol: udp
    health: {{type: udp, payload: "ping\\\\x0a", expect: "^pong ", {COMMON}}}
    real_servers: [{rs}]
  exec:
    vip: 192.0.2.32
    port: 80
    health: {{type: exec, command: [/bin/sh, {shared}/check.sh, arg1], interval: {INTERVAL}s, timeout: 10s,
              rise: {RISE}, fall: {FALL}}}
    real_servers: [{rs}]
  file:
    vip: 192.0.2.33
    port: 80
    real_servers:
{files}
"""


CHECK_SH = """#!/bin/sh
d=$(dirname "$0")
echo "$IPVSYNC_SERVICE $IPVSYNC_VIP $IPVSYNC_VPORT $IPVSYNC_RS_ADDR $IPVSYNC_RS_PORT $IPVSYNC_PROTOCOL $(id -u) $1" \
  > "$d/w/env.$IPVSYNC_RS_ADDR.tmp" && mv "$d/w/env.$IPVSYNC_RS_ADDR.tmp" "$d/w/env.$IPVSYNC_RS_ADDR"
if [ -e "$d/fail.$IPVSYNC_RS_ADDR" ]; then exit 2; fi
exit 0
"""


def put(path: Path, text: str | None) -> None:
    if text is None:
        path.unlink(missing_ok=True)
    else:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)


def test_dns_udp_exec_file_checks(netns: Netns, topology: Callable[..., Topology], tmp_path: Path) -> None:
    topo = topology(n_servers=2)
    s0, s1 = topo.servers
    lab = Lab(netns, topo, tmp_path)
    with lab.diagnostics():
        dirs = {h.name: lab.serve(h, http=80, dns=53, udp=7000) for h in topo.servers}
        # the exec check runs as nobody: its script and output dir must be reachable (pytest's tmp is 0700)
        shared = Path(tempfile.mkdtemp(prefix="ipvsync-hc-", dir="/run/ipvsync"))
        shared.chmod(0o755)
        (shared / "w").mkdir(mode=0o777)
        (shared / "w").chmod(0o777)
        (shared / "check.sh").write_text(CHECK_SH)
        (shared / "check.sh").chmod(0o755)
        servers = [h.ip4 for h in topo.servers]
        lab.write_config(config(servers, shared))
        t_start = time.monotonic()
        lab.start_daemon()
        for svc, port, w in ((DNS, 53, 1), (DNS_A, 53, 1), (UDP, 7000, 1), (EXEC, 80, 1), (FILE, 80, 5)):
            for a in servers:
                lab.watch.wait_weight(svc, f"{a}:{port}", w, after=t_start, limit=30)
        print(f"all checks up {time.monotonic() - t_start:.1f} s after the start")

        # exec: the environment the check sees, and it runs as nobody with its argument list
        nobody = pwd.getpwnam("nobody").pw_uid
        for h in topo.servers:
            env = (shared / "w" / f"env.{h.ip4}").read_text().split()
            assert env == ["exec", "192.0.2.32", "80", h.ip4, "80", "tcp", str(nobody), "arg1"], env

        timings = []

        def scenario(label: str, svc: str, rs: str, service: str, brk: Callable[[], None],
                     fix: Callable[[], None], reason: str, down_weight: int = 0, up_weight: int = 1,
                     fall: int = FALL, rise: int = RISE, interval: float = INTERVAL, also: str | None = None) -> None:
            lab.watch.wait_weight(svc, rs, up_weight, limit=15)  # start from a serving state
            if also:
                lab.watch.wait_weight(also, rs, up_weight, limit=15)
            t0 = time.monotonic()
            brk()
            t_down = lab.watch.wait_weight(svc, rs, down_weight, after=t0, limit=15) - t0
            assert t_down >= (fall - 1) * interval - 0.1, (label, t_down)
            if also:  # another service checking the same server
                lab.watch.wait_weight(also, rs, down_weight, after=t0, limit=15)
            st = lab.rs_status(service, rs)
            assert st["last_failure"] == reason, (label, st)
            t1 = time.monotonic()
            fix()
            t_up = lab.watch.wait_weight(svc, rs, up_weight, after=t1, limit=15) - t1
            assert t_up >= (rise - 1) * interval - 0.1, (label, t_up)
            if also:
                lab.watch.wait_weight(also, rs, up_weight, after=t1, limit=15)
            timings.append(f"{label}: weight {down_weight} after {t_down:.2f} s, back after {t_up:.2f} s")
            if down_weight == 0 and service != "file":
                lab.transition_time(service, rs, "down -> up", t1)  # the log line may trail the kernel weight
                lines = lab.transitions(service, rs)
                assert " up -> down " in lines[-2] and f"REASON={reason}]" in lines[-2], (label, lines)

        r0, r1 = f"{s0.ip4}:53", f"{s1.ip4}:53"
        # dns: NXDOMAIN on one server (both dns services see it), REFUSED on the other
        scenario("dns NXDOMAIN", DNS, r1, "dns", lambda: put(dirs[s1.name] / "dns_mode", "nxdomain"),
                 lambda: put(dirs[s1.name] / "dns_mode", "ok"), "NXDOMAIN", also=DNS_A)
        scenario("dns REFUSED", DNS_A, r0, "dns-a", lambda: put(dirs[s0.name] / "dns_mode", "refused"),
                 lambda: put(dirs[s0.name] / "dns_mode", None), "REFUSED", also=DNS)
        scenario("dns NOERROR without answer", DNS, r0, "dns", lambda: put(dirs[s0.name] / "dns_mode", "empty"),
                 lambda: put(dirs[s0.name] / "dns_mode", None), "no answer", also=DNS_A)
        # udp: a reply that does not match, then silence
        u1 = f"{s1.ip4}:7000"
        scenario("udp wrong reply", UDP, u1, "udp", lambda: put(dirs[s1.name] / "udp_reply", "nope"),
                 lambda: put(dirs[s1.name] / "udp_reply", None), "regex mismatch")
        scenario("udp silent", UDP, u1, "udp", lambda: put(dirs[s1.name] / "udp_reply", "silent"),
                 lambda: put(dirs[s1.name] / "udp_reply", None), "timeout")
        # exec: exit 2 while the flag file exists
        e0 = f"{s0.ip4}:80"
        scenario("exec exit 2", EXEC, e0, "exec", lambda: put(shared / f"fail.{s0.ip4}", ""),
                 lambda: put(shared / f"fail.{s0.ip4}", None), "exit 2")
        assert lab.watch.weight(EXEC, f"{s1.ip4}:80") == 1
        # file: present = down, an integer = that weight, absent = the configured weight (rise/fall 1)
        f1 = f"{s1.ip4}:80"
        scenario("file present", FILE, f1, "file", lambda: put(shared / f"maint.{s1.ip4}", ""),
                 lambda: put(shared / f"maint.{s1.ip4}", None), "file present", up_weight=5, fall=1, rise=1,
                 interval=0.3)
        scenario("file weight 3", FILE, f1, "file", lambda: put(shared / f"maint.{s1.ip4}", "3\n"),
                 lambda: put(shared / f"maint.{s1.ip4}", None), "file weight 3", down_weight=3, up_weight=5,
                 fall=1, rise=1, interval=0.3)
        assert lab.watch.weight(FILE, f"{s0.ip4}:80") == 5
        # one line per transition, and only the transitions the test caused (no false downs)
        cycle = ["up -> down", "down -> up"]
        expected = {("dns", r1): 1, ("dns-a", r1): 1, ("dns", r0): 2, ("dns-a", r0): 2, ("udp", u1): 2,
                    ("udp", f"{s0.ip4}:7000"): 0, ("exec", e0): 1, ("exec", f"{s1.ip4}:80"): 0, ("file", f1): 1,
                    ("file", f"{s0.ip4}:80"): 0}
        for (service, rs), n in expected.items():
            assert lab.sequence(service, rs) == ["down -> up"] + cycle * n, lab.transitions(service, rs)
        print("\n  ".join(["health checks (interval 0.5 s, fall 2, rise 2; file 0.3 s, 1/1):", *timings]))
        shutil.rmtree(shared, ignore_errors=True)
