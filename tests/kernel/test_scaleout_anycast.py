"""Issue 8: anycast / ECMP scale-out — two directors behind a BIRD router (docs/scale-out.md).

Rig (every box a network namespace in one UML kernel):

    client --- router (BIRD, ECMP: merge paths, fib_multipath_hash_policy=1)
                 |  eBGP AS 64512 <-> AS 64513    |
              director 1                       director 2        (each: ipvsync daemon + BIRD,
               |       |                        |       |          `protocol direct` on ipvsync0)
             s1a     s1b                      s2a     s2b        (NAT: each director's own servers,
                                                                   their default gateway is it)

Each director runs its own `ipvsync run` (own config, --state-dir, --runtime-dir) with one service
on VIP 192.0.2.10:80: mh + mh-port, tcp health checks, `quorum: 1`, `withdraw_vip: true`. While the
service meets quorum the VIP is bound on ipvsync0, BIRD's direct protocol sees it and BGP announces
it; the router installs one kernel route with a nexthop per director.

Proof: both directors announced (2 nexthops) and client connections land behind both; all of
director 1's servers killed -> health fails -> quorum lost -> VIP unbound -> BGP withdraw -> router
down to 1 nexthop within the health-check window (measured) and no client connection fails after
that; servers back -> announced again; clean stop of director 1 withdraws, a crash does not.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from uml.host import REPO_ROOT
from uml.netns import Host, Netns

pytestmark = [pytest.mark.kernel, pytest.mark.slow]

VIP = "192.0.2.10"
ROUTER_AS = 64512
DIRECTOR_AS = 64513
# health window: a dead server is down after fall x interval (+ timeout for a probe in flight)
INTERVAL, TIMEOUT, FALL, RISE = 0.5, 0.5, 2, 2
HEALTH_WINDOW = FALL * INTERVAL + TIMEOUT


# -- shared helpers (also imported by test_scaleout_sync_external.py) ----------------------------


def wait_for(cond: Callable[[], object], timeout: float, what: str, step: float = 0.1) -> object:
    """Poll `cond` until truthy; its value. AssertionError naming `what` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(step)


def veth(a: Netns, dev_a: str, b: Netns, dev_b: str, addr_a: str, addr_b: str) -> None:
    """A veth pair between two namespaces, addressed (CIDR) and up."""
    subprocess.run(["ip", "link", "add", dev_a, "netns", a.name, "type", "veth", "peer", "name", dev_b,
                    "netns", b.name], check=True, capture_output=True)
    a.run(f"ip addr add {addr_a} dev {dev_a} && ip link set {dev_a} up")
    b.run(f"ip addr add {addr_b} dev {dev_b} && ip link set {dev_b} up")


class Daemon:
    """`ipvsync run` in a namespace with its own config, state dir and runtime dir; log in a file."""

    def __init__(self, ns: Netns, base: Path, name: str, config: str) -> None:
        self.ns = ns
        self.dir = base / f"ipvsync-{name}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config = self.dir / "ipvsync.yaml"
        self.config.write_text(textwrap.dedent(config).lstrip("\n"))
        self.logfile = self.dir / "daemon.log"
        self.proc: subprocess.Popen[str] | None = None

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "ipvsync", "--state-dir", str(self.dir / "state"),
                "--runtime-dir", str(self.dir / "run"), *args]

    @staticmethod
    def env() -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH")
                                                                 else []))
        return env

    def start(self) -> None:
        with open(self.logfile, "a") as log:
            self.proc = self.ns.popen(self.argv("run", "-c", str(self.config)), stdout=log,
                                      stderr=subprocess.STDOUT, env=self.env())

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.ns.run(self.argv(*args), check=False, env=self.env(), timeout=180)

    def log(self) -> str:
        return self.logfile.read_text(errors="replace") if self.logfile.exists() else ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> int | None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            return None

    def weights(self, vip: str = VIP, port: int = 80) -> dict[str, int]:
        """Real server -> weight of the TCP service vip:port (`ipvsadm -Ln`)."""
        out = self.ns.run(["ipvsadm", "-Ln", "-t", f"{vip}:{port}"], check=False).stdout
        found = {}
        for line in out.splitlines():
            parts = line.split()
            if parts and parts[0] == "->" and parts[1][0].isdigit():
                found[parts[1].rsplit(":", 1)[0]] = int(parts[3])
        return found

    def vip_bound(self, vip: str = VIP, dev: str = "ipvsync0") -> bool:
        out = self.ns.run(["ip", "-o", "addr", "show", "dev", dev], check=False).stdout
        return f" {vip}/" in out


# -- the anycast rig ----------------------------------------------------------------------------


ROUTER_BIRD = """\
router id 198.18.0.1;
log stderr all;
protocol device {{ scan time 10; }}
# ECMP: equal BGP routes from both directors become one multipath kernel route
protocol kernel {{
  ipv4 {{ import none; export all; }};
  merge paths yes;
}}
{peers}
"""

ROUTER_PEER = """\
protocol bgp director{i} {{
  local 198.18.{i}.1 as {router_as};
  neighbor 198.18.{i}.2 as {director_as};
  hold time 9; connect retry time 1; error wait time 1, 5;
  ipv4 {{ import where net ~ [ 192.0.2.0/24{{32,32}} ]; export none; }};
}}
"""

DIRECTOR_BIRD = """\
router id 198.18.{i}.2;
log stderr all;
protocol device {{ scan time 10; }}
# the VIPs ipvsync binds (only while their services meet quorum) are connected routes on ipvsync0
protocol direct vips {{
  ipv4;
  interface "ipvsync0";
}}
protocol bgp uplink {{
  local 198.18.{i}.2 as {director_as};
  neighbor 198.18.{i}.1 as {router_as};
  hold time 9; connect retry time 1; error wait time 1, 5;
  ipv4 {{ import none; export where proto = "vips"; }};
}}
"""


def start_bird(ns: Netns, base: Path, name: str, conf: str) -> subprocess.Popen[str]:
    """BIRD in the foreground in `ns`, with its own config, control socket and pid file."""
    d = base / f"bird-{name}"
    d.mkdir(parents=True, exist_ok=True)
    (d / "bird.conf").write_text(conf)
    ns.run(["bird", "-p", "-c", str(d / "bird.conf")])
    log = open(d / "bird.log", "a")  # noqa: SIM115 - lives as long as BIRD
    return ns.popen(["bird", "-f", "-c", str(d / "bird.conf"), "-s", str(d / "bird.ctl"),
                     "-P", str(d / "bird.pid")], stdout=log, stderr=subprocess.STDOUT)


def birdc(ns: Netns, base: Path, name: str, *cmd: str) -> str:
    return ns.run(["birdc", "-s", str(base / f"bird-{name}" / "bird.ctl"), *cmd], check=False).stdout


def nexthops(router: Netns, vip: str = VIP) -> list[str]:
    """Gateways of the router's kernel route to the VIP ([] when there is none)."""
    out = router.run(["ip", "-4", "route", "show", f"{vip}/32"], check=False).stdout
    return [w[i + 1] for ln in out.splitlines() if (w := ln.split()) for i, x in enumerate(w[:-1])
            if x == "via"]


def director_config(servers: list[Host]) -> str:
    rs = ", ".join(f"{s.ip4}:80" for s in servers)
    return f"""
        version: 1
        vip_interface: ipvsync0
        reconcile_interval: 5s
        services:
          web:
            vip: {VIP}
            port: 80
            scheduler: mh
            scheduler_flags: [mh-port]
            forward: nat
            quorum: 1
            withdraw_vip: true
            health: {{type: tcp, interval: {INTERVAL}s, timeout: {TIMEOUT}s, rise: {RISE}, fall: {FALL}}}
            real_servers: [{rs}]
    """


class Rig:
    def __init__(self, make_netns: Callable[[], Netns], base: Path) -> None:
        self.base = base
        self.router = make_netns()
        self.client_ns = make_netns()
        self.directors = [make_netns(), make_netns()]
        self.servers: list[list[Host]] = [[], []]
        self.server_procs: dict[str, subprocess.Popen[str]] = {}
        self.daemons: list[Daemon] = []
        self.router.sysctl(**{"net.ipv4.ip_forward": 1, "net.ipv4.fib_multipath_hash_policy": 1})
        veth(self.router, "cl0", self.client_ns, "eth0", "203.0.113.1/28", "203.0.113.2/28")
        self.client_ns.run("ip route add default via 203.0.113.1")
        self.client = Host(self.client_ns, 0, "client", "cl0", "203.0.113.2", "203.0.113.1", "", "")
        for i, d in enumerate(self.directors, 1):
            d.sysctl(**{"net.ipv4.ip_forward": 1})
            veth(self.router, f"d{i}", d, "up0", f"198.18.{i}.1/24", f"198.18.{i}.2/24")
            d.run(f"ip route add default via 198.18.{i}.1")
            for j in range(2):
                k = 2 * (i - 1) + j + 1
                srv_ns = make_netns()
                gw, ip = f"198.51.100.{16 * k + 1}", f"198.51.100.{16 * k + 2}"
                veth(d, f"rs{j}", srv_ns, "eth0", f"{gw}/28", f"{ip}/28")
                srv_ns.run(f"ip route add default via {gw}")
                self.servers[i - 1].append(Host(srv_ns, j, "server", f"rs{j}", ip, gw, "", ""))
        peers = "".join(ROUTER_PEER.format(i=i, router_as=ROUTER_AS, director_as=DIRECTOR_AS) for i in (1, 2))
        start_bird(self.router, base, "router", ROUTER_BIRD.format(peers=peers))
        for i, d in enumerate(self.directors, 1):
            start_bird(d, base, f"director{i}",
                       DIRECTOR_BIRD.format(i=i, router_as=ROUTER_AS, director_as=DIRECTOR_AS))

    def server_name(self, i: int, j: int) -> str:
        return f"d{i + 1}s{j}"

    def start_servers(self, i: int) -> None:
        for j, srv in enumerate(self.servers[i]):
            self.server_procs[self.server_name(i, j)] = srv.serve_whoami(port=80, name=self.server_name(i, j))

    def kill_servers(self, i: int) -> None:
        for j in range(len(self.servers[i])):
            proc = self.server_procs.pop(self.server_name(i, j))
            proc.kill()
            proc.wait()

    def start_daemons(self) -> None:
        for i, d in enumerate(self.directors):
            daemon = Daemon(d, self.base, f"director{i + 1}", director_config(self.servers[i]))
            daemon.start()
            self.daemons.append(daemon)

    def diagnostics(self) -> str:
        parts = [f"router route: {self.router.run(['ip', 'route'], check=False).stdout}",
                 birdc(self.router, self.base, "router", "show", "protocols"),
                 birdc(self.router, self.base, "router", "show", "route", "all")]
        for i, daemon in enumerate(self.daemons):
            parts.append(f"--- director{i + 1} ipvsadm ---\n"
                         + daemon.ns.run(["ipvsadm", "-Ln"], check=False).stdout
                         + daemon.ns.run(["ip", "-o", "addr"], check=False).stdout
                         + f"--- director{i + 1} log ---\n{daemon.log()[-4000:]}")
        return "\n".join(parts)

    def landing(self, count: int) -> list[str]:
        return self.client.ask(VIP, 80, count=count, timeout=2.0)


def director_of(answer: str) -> str:
    return answer[:2] if answer.startswith("d") else answer


def test_anycast_ecmp_withdraw_and_reannounce(make_netns: Callable[[], Netns], tmp_path: Path) -> None:
    rig = Rig(make_netns, tmp_path)
    rig.start_servers(0)
    rig.start_servers(1)
    rig.start_daemons()
    router = rig.router
    try:
        # both directors bound the VIP and BGP put both into one ECMP route
        wait_for(lambda: sorted(nexthops(router)) == ["198.18.1.2", "198.18.2.2"], 120,
                 "the router's route to the VIP to have both directors as nexthops")
        for daemon, servers in zip(rig.daemons, rig.servers):
            assert daemon.vip_bound()
            # quorum 1 binds (and BGP announces) the VIP on the first server up; the first probe
            # round is spread over an interval, so the other server may rise a round later
            wait_for(lambda d=daemon, ss=servers: d.weights() == {s.ip4: 1 for s in ss}, 15,
                     "every real server of the director in rotation")
        route = router.run(["ip", "route", "show", f"{VIP}/32"]).stdout
        assert route.count("nexthop via") == 2, route

        # traffic spreads: L4 hashing on the router sends flows (different source ports) to both
        answers = rig.landing(24)
        assert not [a for a in answers if a.startswith("!")], answers
        assert {director_of(a) for a in answers} == {"d1", "d2"}, answers
        assert len(set(answers)) >= 3, f"mh should spread each director's share: {answers}"

        # every real server of director 1 down -> quorum lost -> VIP unbound -> route withdrawn
        t0 = time.monotonic()
        rig.kill_servers(0)
        wait_for(lambda: nexthops(router) == ["198.18.2.2"], 30, "the route to lose director 1")
        withdrawal = time.monotonic() - t0
        print(f"withdrawal time (servers killed -> router has 1 nexthop): {withdrawal:.2f} s "
              f"(health window {HEALTH_WINDOW:g} s)")
        (tmp_path / "withdrawal_seconds").write_text(f"{withdrawal:.3f}\n")
        assert not rig.daemons[0].vip_bound()
        assert rig.daemons[0].weights() == {s.ip4: 0 for s in rig.servers[0]}
        assert "192.0.2.10/32" not in birdc(router, tmp_path, "router", "show", "route", "protocol",
                                           "director1")
        # withdrawn by the health chain, not by a BGP session timeout (hold time 9 s); generous slack
        # over the 1.5 s window for a 1-CPU UML running two daemons and three BIRDs on a busy host
        # (measured: 0.9 s quiet, 2.7 s loaded)
        assert withdrawal < HEALTH_WINDOW + 4.5, rig.diagnostics()

        # after re-convergence: no failed connection, everything lands behind director 2
        answers = rig.landing(20)
        assert not [a for a in answers if a.startswith("!")], answers
        assert {director_of(a) for a in answers} == {"d2"}, answers

        # servers back -> rise -> quorum met -> VIP bound -> announced again
        t0 = time.monotonic()
        rig.start_servers(0)
        wait_for(lambda: sorted(nexthops(router)) == ["198.18.1.2", "198.18.2.2"], 30,
                 "director 1 to be announced again")
        print(f"re-announce time (servers started -> router has 2 nexthops): {time.monotonic() - t0:.2f} s")
        answers = rig.landing(24)
        assert not [a for a in answers if a.startswith("!")], answers
        assert {director_of(a) for a in answers} == {"d1", "d2"}, answers

        # clean stop of director 1: nothing checks health any more -> withdraw_vip VIP unbound
        assert rig.daemons[0].signal(signal.SIGTERM) == 0, rig.daemons[0].log()
        wait_for(lambda: nexthops(router) == ["198.18.2.2"], 15, "the route to lose the stopped director")
        assert not rig.daemons[0].vip_bound()
        assert rig.daemons[0].weights() == {s.ip4: 1 for s in rig.servers[0]}  # IPVS stays in place
        assert not [a for a in rig.landing(10) if a.startswith("!")]

        # the crash window: a killed daemon leaves its VIP bound and announced (systemd restarts it)
        rig.daemons[1].signal(signal.SIGKILL)
        time.sleep(1.0)
        assert rig.daemons[1].vip_bound()
        assert nexthops(router) == ["198.18.2.2"]
        # ... and a restarted daemon (Restart=on-failure) takes over the VIP it left bound
        rig.daemons[1].start()
        rig.daemons[0].start()
        wait_for(lambda: sorted(nexthops(router)) == ["198.18.1.2", "198.18.2.2"], 120,
                 "both directors announced after restarts")
        assert not [a for a in rig.landing(10) if a.startswith("!")]
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{rig.diagnostics()}") from None
