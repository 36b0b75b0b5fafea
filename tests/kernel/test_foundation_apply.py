"""Issue 2, behaviours 1-6 in the real IPVS kernel (UML), `ipvsadm` and `ip` as the oracles.

Each test gets its own netns (own IPVS table). ipvsync runs through `Director` (helpers_foundation):
the real CLI code in a persistent in-netns worker, plus a few real `python -m ipvsync` processes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers_foundation import REPO, Director

pytestmark = pytest.mark.kernel

EXAMPLE = REPO / "ipvsync.yaml.example"

EXAMPLE_SAVE = """\
-A -f 10 -s wlc
-A -t 192.0.2.10:80 -s wrr -p 300 -M 255.255.255.0
-A -t 192.0.2.20:80 -s sh -b sh-port
-A -t 192.0.2.30:443 -s wlc
-A -u 192.0.2.53:53 -s wlc -o
-a -f 10 -r 198.51.100.51:0 -m -w 1
-a -f 10 -r 198.51.100.52:0 -m -w 1
-a -t 192.0.2.10:80 -r 198.51.100.11:8080 -m -w 1
-a -t 192.0.2.10:80 -r 198.51.100.12:8080 -m -w 3
-a -t 192.0.2.20:80 -r 198.51.100.31:80 -g -w 1
-a -t 192.0.2.20:80 -r 198.51.100.32:80 -g -w 1
-a -t 192.0.2.30:443 -r 203.0.113.41:443 -i -w 1 --tun-type ipip
-a -u 192.0.2.53:53 -r 198.51.100.21:53 -m -w 1
-a -u 192.0.2.53:53 -r 198.51.100.22:53 -m -w 1
"""
EXAMPLE_VIPS = ["192.0.2.10/32", "192.0.2.20/32", "192.0.2.30/32", "192.0.2.40/32", "192.0.2.53/32"]


@pytest.fixture
def director(netns: Any, tmp_path: Path) -> Iterator[Director]:
    d = Director(netns, tmp_path)
    try:
        yield d
    finally:
        d.close()


def thresholds(d: Director) -> dict[str, tuple[int, int]]:
    out = d.netns.run(["ipvsadm", "-Ln", "--thresholds"]).stdout
    return {p[1]: (int(p[2]), int(p[3])) for p in (ln.split() for ln in out.splitlines()) if len(p) >= 4
            and p[0] == "->" and p[2].isdigit()}


def kinds(ops: list[dict[str, Any]]) -> list[str]:
    return [op["op"] for op in ops]


def test_example_applies_exactly_and_reapply_is_a_noop(director: Director) -> None:
    d = director
    # the real entry point, once: exit 0 and a summary
    res = d.cli_process("apply", config=EXAMPLE)
    assert res.rc == 0, res.text
    assert "Applied 20 operation(s)" in res.out, res.out
    assert d.save() == EXAMPLE_SAVE
    # ipvsadm -S does not save thresholds: -Ln --thresholds shows them
    assert thresholds(d)["198.51.100.12:8080"] == (1000, 800)
    detail = d.addr_detail("ipvsync0")
    assert sorted(a for a in detail if not a.startswith("fe80:")) == EXAMPLE_VIPS
    for vip in EXAMPLE_VIPS:
        assert "noprefixroute" in detail[vip], detail[vip]
    assert "dummy" in d.netns.run(["ip", "-d", "link", "show", "ipvsync0"]).stdout
    # no prefix routes for the VIPs (only the local-table host routes)
    assert d.netns.run(["ip", "-4", "route", "show", "dev", "ipvsync0"]).stdout.strip() == ""
    assert d.owned()["links"] == ["ipvsync0"]
    assert len(d.owned()["services"]) == 5 and len(d.owned()["vips"]) == 5

    # unchanged config: zero operations, plan --exit-code 0, apply "No changes."
    res = d.cli_process("plan", "--configured", "--exit-code", config=EXAMPLE)
    assert (res.rc, res.out.strip().splitlines()[-1]) == (0, "No changes."), res.text
    assert d.plan_ops(EXAMPLE) == []
    res = d.apply(EXAMPLE)
    assert res.rc == 0 and res.out.startswith("No changes"), res.text
    assert d.save() == EXAMPLE_SAVE


def test_ipv6_vip_is_128_nodad_noprefixroute(director: Director) -> None:
    d = director
    d.write("""
        version: 1
        services:
          web6:
            vip: 2001:db8:f::10
            port: 443
            scheduler: rr
            persistence: {timeout: 1m, netmask: /64}
            real_servers: ["[2001:db8:1::11]:8443", {address: 2001:db8:1::12, port: 8443, weight: 0}]
          dns6:
            vip: 2001:db8:f::53
            port: 53
            protocol: udp
            real_servers: ["2001:db8:1::21"]
    """)
    res = d.apply()
    assert res.rc == 0, res.text
    assert d.save() == (
        "-A -t [2001:db8:f::10]:443 -s rr -p 60 -M 64\n"
        "-A -u [2001:db8:f::53]:53 -s wlc\n"
        "-a -t [2001:db8:f::10]:443 -r [2001:db8:1::11]:8443 -m -w 1\n"
        "-a -t [2001:db8:f::10]:443 -r [2001:db8:1::12]:8443 -m -w 0\n"
        "-a -u [2001:db8:f::53]:53 -r [2001:db8:1::21]:53 -m -w 1\n"
    )
    detail = d.addr_detail("ipvsync0")
    for vip in ("2001:db8:f::10/128", "2001:db8:f::53/128"):
        assert "nodad" in detail[vip] and "noprefixroute" in detail[vip], detail[vip]
        assert "tentative" not in detail[vip]
    routes = d.netns.run(["ip", "-6", "route", "show", "dev", "ipvsync0"]).stdout
    assert "2001:db8:f::" not in routes, routes
    assert d.plan("--exit-code").rc == 0


EDIT_BASE = """
    version: 1
    services:
      web:
        vip: 192.0.2.10
        port: 80
        scheduler: wlc
        real_servers:
          - {address: 198.51.100.2, port: 80, weight: 1}
      dns:
        vip: 192.0.2.53
        port: 53
        protocol: udp
        scheduler: sh
        real_servers: [198.51.100.2]
"""
EDIT_CHANGED = """
    version: 1
    services:
      web:
        vip: 192.0.2.10
        port: 80
        scheduler: wrr
        persistence: {timeout: 120, netmask: 255.255.255.0}
        real_servers:
          - {address: 198.51.100.2, port: 80, weight: 7, upper_threshold: 50, lower_threshold: 5, forward: dr}
      dns:
        vip: 192.0.2.53
        port: 53
        protocol: udp
        scheduler: sh
        scheduler_flags: [sh-fallback, sh-port]
        one_packet: true
        real_servers: [198.51.100.2]
"""


def test_attribute_changes_are_edits_in_place(director: Director, topology: Any) -> None:
    """Scheduler, flags, persistence, weight, thresholds, forward: SET in place; counters survive."""
    d = director
    topo = topology(n_servers=1)
    srv = topo.servers[0]
    srv.serve_whoami(port=80)
    srv.serve_whoami(port=53, udp=True, tcp=False)
    d.write(EDIT_BASE)
    assert d.apply().rc == 0
    assert topo.client.ask("192.0.2.10", 80, count=3) == [srv.name] * 3
    assert topo.client.ask("192.0.2.53", 53, count=2, udp=True) == [srv.name] * 2
    # the baseline for "counters survive": settled, or a later fold adds the last packets to `after`
    before = d.stats_when(lambda st: st["TCP 192.0.2.10:80"][0] == 3 and st["UDP 192.0.2.53:53"][0] == 2,
                          settled=True)

    d.write(EDIT_CHANGED)
    ops = d.plan_ops()
    assert kinds(ops) == ["edit_service", "edit_service", "edit_dest"], ops
    text = d.plan().out
    assert all(ln.startswith(("~ ", "Plan:", "#")) for ln in text.splitlines()), text
    assert "Plan: 0 to add, 3 to change, 0 to delete." in text
    res = d.apply()
    assert res.rc == 0, res.text
    assert d.save() == (
        "-A -t 192.0.2.10:80 -s wrr -p 120 -M 255.255.255.0\n"
        "-A -u 192.0.2.53:53 -s sh -o -b sh-fallback,sh-port\n"
        "-a -t 192.0.2.10:80 -r 198.51.100.2:80 -g -w 7\n"
        "-a -u 192.0.2.53:53 -r 198.51.100.2:53 -m -w 1\n"
    )
    assert thresholds(d)["198.51.100.2:80"] == (50, 5)
    after = d.stats()
    # a delete+add would have reset the service and real-server counters to zero
    for key in ("TCP 192.0.2.10:80", "UDP 192.0.2.53:53", "TCP 192.0.2.10:80 -> 198.51.100.2:80"):
        assert after[key][:3] == before[key][:3], (key, before, after)
    assert d.plan_ops() == []
    # and back: again edits only
    d.write(EDIT_BASE)
    assert kinds(d.plan_ops()) == ["edit_service", "edit_service", "edit_dest"]
    assert d.apply().rc == 0
    d.stats_when(lambda st: st["TCP 192.0.2.10:80"][0] == 3)
    assert topo.client.ask("192.0.2.10", 80) == [srv.name]


def test_changed_keys_add_new_then_remove_old(director: Director) -> None:
    d = director
    d.write("""
        version: 1
        services:
          web:
            vip: 192.0.2.10
            port: 80
            real_servers: [198.51.100.11:8080, 198.51.100.12:8080]
    """)
    assert d.apply().rc == 0
    # the service key (port) and one real server's port change; the name is only a label
    d.write("""
        version: 1
        services:
          www:
            vip: 192.0.2.10
            port: 8000
            real_servers: [198.51.100.11:8080, 198.51.100.12:9090]
    """)
    ops = d.plan_ops()
    assert kinds(ops) == ["add_service", "add_dest", "add_dest", "del_service"], ops
    assert "192.0.2.10:8000" in ops[0]["text"] and "192.0.2.10:80 " in ops[-1]["text"] + " "
    # the VIP stays bound: shared by the old and the new key, never unbound in between
    assert "bind_vip" not in kinds(ops) and "unbind_vip" not in kinds(ops)
    assert d.apply().rc == 0
    assert d.save() == (
        "-A -t 192.0.2.10:8000 -s wlc\n"
        "-a -t 192.0.2.10:8000 -r 198.51.100.11:8080 -m -w 1\n"
        "-a -t 192.0.2.10:8000 -r 198.51.100.12:9090 -m -w 1\n"
    )
    # a real server's port alone: add the new destination before deleting the old one
    d.write("""
        version: 1
        services:
          www:
            vip: 192.0.2.10
            port: 8000
            real_servers: [198.51.100.11:8081, 198.51.100.12:9090]
    """)
    ops = d.plan_ops()
    assert kinds(ops) == ["add_dest", "del_dest"], ops
    assert "198.51.100.11:8081" in ops[0]["text"] and "198.51.100.11:8080" in ops[1]["text"]
    assert d.apply().rc == 0
    assert "-a -t 192.0.2.10:8000 -r 198.51.100.11:8081 -m -w 1\n" in d.save()
    assert "8080" not in d.save()


TRACE = """
import subprocess
from ipvsync.apply import Applier
from ipvsync.config.build import load_config
from ipvsync.desired import from_config
from ipvsync.kernel.system import Kernel
from ipvsync.state import StateStore

def oracle():
    ipvs = subprocess.run(["ipvsadm", "-Sn"], capture_output=True, text=True, check=True).stdout
    addrs = subprocess.run(["ip", "-br", "addr", "show", "dev", "ipvsync0"], capture_output=True, text=True).stdout
    return {"ipvs": ipvs, "addrs": addrs}

class Traced(Kernel):
    def run_ipvs(self, ops):
        for op in ops:
            trace.append([op.kind, op.text(), oracle()])
        return super().run_ipvs(ops)
    def run_other(self, op):
        trace.append([op.kind, op.text(), oracle()])
        return super().run_other(op)

trace = []
config = load_config(CONFIG)
store = StateStore(STATE)
with Traced() as k:
    observed = k.observe(config.vip_interface)
    res = Applier(k, store).converge(from_config(config), observed, store.load())
result = {"rc": res.exit_code, "trace": trace}
"""


def traced_apply(d: Director) -> list[tuple[str, str, dict[str, str]]]:
    out = d.py(f"CONFIG = {str(d.config)!r}\nSTATE = {str(d.state_dir)!r}\n" + TRACE)
    assert out["rc"] == 0
    return [tuple(t) for t in out["trace"]]


def test_make_before_break_order(director: Director) -> None:
    """Services and real servers exist before their VIP is bound; VIPs go before their service."""
    d = director
    d.write("""
        version: 1
        services:
          old:
            vip: 192.0.2.20
            port: 80
            real_servers: [198.51.100.21]
          shared-a:
            vip: 192.0.2.30
            port: 80
            real_servers: [198.51.100.31]
          shared-b:
            vip: 192.0.2.30
            port: 443
            real_servers: [198.51.100.31]
    """)
    assert d.apply().rc == 0
    d.write("""
        version: 1
        services:
          new:
            vip: 192.0.2.10
            port: 80
            real_servers: [198.51.100.11, 198.51.100.12]
          shared-b:
            vip: 192.0.2.30
            port: 443
            real_servers: [198.51.100.31]
    """)
    ops = d.plan_ops()
    k = kinds(ops)
    assert k == ["add_service", "add_dest", "add_dest", "bind_vip", "unbind_vip", "del_service", "del_service"], ops
    assert "192.0.2.10" in ops[3]["text"] and "192.0.2.20" in ops[4]["text"]  # .30 stays: shared-b needs it
    assert ops[0]["line"] == d.line_of("new:") and ops[1]["line"] == d.line_of("real_servers: [198.51.100.11")

    trace = traced_apply(d)
    by_kind = {}
    for kind, text, seen in trace:
        by_kind.setdefault(kind, []).append((text, seen))
    # at the moment the new VIP is bound, the kernel already has the service and both real servers
    (_, at_bind), = by_kind["bind_vip"]
    assert "-A -t 192.0.2.10:80 -s wlc" in at_bind["ipvs"]
    assert "-a -t 192.0.2.10:80 -r 198.51.100.11:80" in at_bind["ipvs"]
    assert "-a -t 192.0.2.10:80 -r 198.51.100.12:80" in at_bind["ipvs"]
    assert "192.0.2.10/32" not in at_bind["addrs"]
    # when the old service is deleted, its VIP is already gone; the shared VIP is still bound
    at_delete = dict(by_kind["del_service"])
    seen = at_delete["delete service tcp 192.0.2.20:80 and its 1 real servers"]
    assert "192.0.2.20/32" not in seen["addrs"] and "192.0.2.30/32" in seen["addrs"]
    assert "192.0.2.30/32" in d.addrs()
    assert d.plan_ops() == []


def test_foreign_adopted_owned(director: Director) -> None:
    d = director
    run = d.netns.run
    # before ipvsync: a dummy with two addresses (one of them a VIP the config will declare),
    # a foreign service and a hand-made service with a declared key
    run(["ip", "link", "add", "ipvsync0", "type", "dummy"])
    run(["ip", "link", "set", "ipvsync0", "up"])
    run(["ip", "addr", "add", "192.0.2.99/32", "dev", "ipvsync0"])
    run(["ip", "addr", "add", "192.0.2.10/32", "dev", "ipvsync0"])
    run(["ipvsadm", "-A", "-t", "192.0.2.200:25", "-s", "lc"])
    run(["ipvsadm", "-a", "-t", "192.0.2.200:25", "-r", "198.51.100.200:25", "-m"])
    run(["ipvsadm", "-A", "-t", "192.0.2.20:80", "-s", "rr", "-p", "30"])
    run(["ipvsadm", "-a", "-t", "192.0.2.20:80", "-r", "198.51.100.99:80", "-m", "-w", "9"])
    foreign = "-A -t 192.0.2.200:25 -s lc\n-a -t 192.0.2.200:25 -r 198.51.100.200:25 -m -w 1\n"
    d.write("""
        version: 1
        services:
          web:
            vip: 192.0.2.10
            port: 80
            real_servers: [198.51.100.11]
          handmade:
            vip: 192.0.2.20
            port: 80
            scheduler: wrr
            real_servers: [198.51.100.21]
          ours:
            vip: 192.0.2.30
            port: 80
            real_servers: [198.51.100.31]
    """)
    ops = d.plan_ops()
    texts = " | ".join(op["text"] for op in ops)
    assert "192.0.2.200" not in texts and "192.0.2.99" not in texts
    assert "edit service tcp 192.0.2.20:80" in texts and "delete real server 198.51.100.99:80" in texts
    assert "create dummy" not in texts and "bind 192.0.2.10/32" not in texts
    assert d.apply().rc == 0
    save = d.save()
    assert set(foreign.splitlines()) <= set(save.splitlines())
    assert "-A -t 192.0.2.20:80 -s wrr\n" in save and "198.51.100.99" not in save
    assert "-a -t 192.0.2.20:80 -r 198.51.100.21:80 -m -w 1\n" in save
    owned = d.owned()
    assert owned["links"] == []  # the dummy existed before
    assert [v["address"] for v in owned["vips"]] == ["192.0.2.20", "192.0.2.30"]
    assert sorted(s["address"] for s in owned["services"]) == ["192.0.2.10", "192.0.2.30"]

    # everything leaves the config: only what ipvsync created goes
    d.write("version: 1\nallow_empty: true\nservices: {}\n")
    res = d.apply()
    assert res.rc == 0, res.text
    handmade = "-A -t 192.0.2.20:80 -s wrr\n-a -t 192.0.2.20:80 -r 198.51.100.21:80 -m -w 1\n"
    assert d.save().splitlines() == sorted((foreign + handmade).splitlines()), d.save()
    addrs = d.addr_detail("ipvsync0")
    assert "192.0.2.99/32" in addrs and "192.0.2.10/32" in addrs  # existed before ipvsync: kept
    assert "192.0.2.30/32" not in addrs and "192.0.2.20/32" not in addrs  # bound by ipvsync: removed
    assert d.owned() == {"services": [], "vips": [], "links": [], "sync_daemons": []}


def test_drift_shows_in_plan_and_apply_repairs_it(director: Director) -> None:
    d = director
    d.write("""
        version: 1
        services:
          web:
            vip: 192.0.2.10
            port: 80
            scheduler: wrr
            real_servers: [198.51.100.11, {address: 198.51.100.12, weight: 5}]
          api:
            vip: 192.0.2.11
            port: 443
            real_servers: [198.51.100.21]
    """)
    assert d.apply().rc == 0
    good = d.snapshot()
    run = d.netns.run
    run(["ipvsadm", "-d", "-t", "192.0.2.10:80", "-r", "198.51.100.11:80"])
    run(["ipvsadm", "-e", "-t", "192.0.2.10:80", "-r", "198.51.100.12:80", "-m", "-w", "1"])
    run(["ipvsadm", "-E", "-t", "192.0.2.10:80", "-s", "rr"])
    run(["ipvsadm", "-a", "-t", "192.0.2.10:80", "-r", "198.51.100.13:80", "-m"])
    run(["ipvsadm", "-D", "-t", "192.0.2.11:443"])
    run(["ip", "addr", "del", "192.0.2.11/32", "dev", "ipvsync0"])
    res = d.plan("--exit-code")
    assert res.rc == 3, res.text
    for fragment in ("~ edit service tcp 192.0.2.10:80: scheduler rr->wrr",
                     "+ add real server 198.51.100.11:80 to tcp 192.0.2.10:80",
                     "~ edit real server 198.51.100.12:80 of tcp 192.0.2.10:80: weight 1->5",
                     "- delete real server 198.51.100.13:80 from tcp 192.0.2.10:80",
                     "+ add service tcp 192.0.2.11:443",
                     "+ add real server 198.51.100.21:443 to tcp 192.0.2.11:443",
                     "+ bind 192.0.2.11/32 dev ipvsync0"):
        assert fragment in res.out, (fragment, res.out)
    res = d.apply()
    assert res.rc == 0, res.text
    assert d.snapshot() == good
    assert d.plan("--exit-code").rc == 0


def test_export_round_trip(director: Director, tmp_path: Path) -> None:
    """`export` of the applied example is valid YAML that plans to zero IPVS operations."""
    d = director
    assert d.apply(EXAMPLE).rc == 0
    res = d.cli("export")
    assert res.rc == 0, res.text
    exported = tmp_path / "exported.yaml"
    exported.write_text(res.out)
    assert "tcp-192.0.2.10-80:" in res.out and "fwmark-10-inet:" in res.out
    check = d.cli("check", config=exported)
    assert check.rc == 0, check.text + res.out
    # plan the export with a fresh state dir (nothing owned): nothing to do in IPVS
    other = Director(d.netns, tmp_path, "export")
    try:
        ops = other.plan_ops(exported)
    finally:
        other.close()
    assert ops == [], json.dumps(ops, indent=1)
