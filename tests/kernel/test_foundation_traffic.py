"""Issue 2, behaviour 7: real traffic client netns -> VIP -> real servers in their own netns.

NAT (IPv4 and IPv6, TCP and UDP), DR (VIP on the real server's lo, arp_ignore=1/arp_announce=2) and
TUN (ipip: VIP on the real server's tunl0, rp_filter off). Every service uses rr, so the answers
alternate between the two servers; --peer answers show the client address the server saw.

The topology routes the real servers' replies back through the director (it is their default
gateway). For DR and TUN those replies carry the VIP as source, which the director owns, so it needs
accept_local=1 to forward them (in production the replies go straight to the client's router).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers_foundation import Director

pytestmark = pytest.mark.kernel


@pytest.fixture
def director(netns: Any, tmp_path: Path) -> Iterator[Director]:
    d = Director(netns, tmp_path)
    try:
        yield d
    finally:
        d.close()


def assert_round_robin(answers: list[str], servers: list[Any], client_ip: str) -> None:
    assert not [a for a in answers if a.startswith("!")], answers
    names = [a.split()[0] for a in answers]
    assert sorted(set(names)) == sorted(s.name for s in servers), answers
    assert all(a != b for a, b in zip(names, names[1:])), f"rr must alternate: {names}"
    assert {ipaddress.ip_address(a.split()[1]) for a in answers} == {ipaddress.ip_address(client_ip)}, answers


def test_nat_ipv4_ipv6_tcp_udp(director: Director, topology: Any) -> None:
    d = director
    topo = topology(n_servers=2)
    for srv in topo.servers:
        srv.serve_whoami(port=8080, udp=True, peer=True)
    s0, s1 = topo.servers
    d.write(f"""
        version: 1
        defaults:
          scheduler: rr
        services:
          web4:
            vip: 192.0.2.10
            port: 80
            real_servers: [{s0.ip4}:8080, {s1.ip4}:8080]
          dns4:
            vip: 192.0.2.53
            port: 53
            protocol: udp
            real_servers: [{s0.ip4}:8080, {s1.ip4}:8080]
          web6:
            vip: 2001:db8:f::10
            port: 80
            real_servers: ["[{s0.ip6}]:8080", "[{s1.ip6}]:8080"]
          dns6:
            vip: 2001:db8:f::53
            port: 53
            protocol: udp
            real_servers: ["[{s0.ip6}]:8080", "[{s1.ip6}]:8080"]
    """)
    res = d.apply()
    assert res.rc == 0, res.text
    c = topo.client
    assert_round_robin(c.ask("192.0.2.10", 80, count=4), topo.servers, c.ip4)
    assert_round_robin(c.ask("192.0.2.53", 53, count=4, udp=True), topo.servers, c.ip4)
    assert_round_robin(c.ask("2001:db8:f::10", 80, count=4), topo.servers, c.ip6)
    assert_round_robin(c.ask("2001:db8:f::53", 53, count=4, udp=True), topo.servers, c.ip6)
    d.stats_when(lambda st: st["TCP 192.0.2.10:80"][0] == 4 and st["UDP [2001:db8:f::53]:53"][0] == 4)

    # weight 0 on one server: every new connection goes to the other (an in-place edit)
    text = d.config.read_text()
    web4 = f"real_servers: [{s0.ip4}:8080, {s1.ip4}:8080]\n  dns4:"
    assert web4 in text
    d.write(text.replace(web4, f"real_servers: [{s0.ip4}:8080, {{address: {s1.ip4}, port: 8080, weight: 0}}]\n"
                               "  dns4:"))
    assert [op["op"] for op in d.plan_ops()] == ["edit_dest"]
    assert d.apply().rc == 0
    assert [a.split()[0] for a in c.ask("192.0.2.10", 80, count=3)] == [s0.name] * 3


def _server_side_vip(srv: Any, vip: str, dev: str) -> None:
    cmds = []
    if dev != "lo":
        cmds.append(f"ip link set {dev} up")
    cmds.append(f"ip addr add {vip}/32 dev {dev}")
    srv.ns.run(" && ".join(cmds))
    srv.ns.sysctl(**{"net.ipv4.conf.all.arp_ignore": 1, "net.ipv4.conf.all.arp_announce": 2,
                     "net.ipv4.conf.eth0.arp_ignore": 1, "net.ipv4.conf.eth0.arp_announce": 2,
                     "net.ipv4.conf.all.rp_filter": 0, f"net.ipv4.conf.{dev}.rp_filter": 0})


@pytest.mark.parametrize("forward", ["dr", "tun"])
def test_dr_and_tun(director: Director, topology: Any, forward: str) -> None:
    d = director
    topo = topology(n_servers=2)
    vip = "192.0.2.20" if forward == "dr" else "192.0.2.30"
    d.netns.sysctl(**{"net.ipv4.conf.all.accept_local": 1, "net.ipv4.conf.all.rp_filter": 0})
    for srv in topo.servers:
        _server_side_vip(srv, vip, "lo" if forward == "dr" else "tunl0")
        srv.serve_whoami(port=80, peer=True)
    s0, s1 = topo.servers
    tunnel = "\n            tunnel: {type: ipip}" if forward == "tun" else ""
    d.write(f"""
        version: 1
        services:
          web:
            vip: {vip}
            port: 80
            scheduler: rr
            forward: {forward}{tunnel}
            real_servers: [{s0.ip4}, {s1.ip4}]
    """)
    res = d.apply()
    assert res.rc == 0, res.text
    flag = "-g" if forward == "dr" else "-i"
    assert f"-a -t {vip}:80 -r {s0.ip4}:80 {flag} -w 1" in d.save()
    # the real servers do not answer ARP for the VIP they hold (arp_ignore/arp_announce)
    arp = topo.client.ns.run(["ip", "neigh"]).stdout
    assert vip not in arp
    assert_round_robin(topo.client.ask(vip, 80, count=4), topo.servers, topo.client.ip4)
    d.stats_when(lambda st: st[f"TCP {vip}:80"][0] == 4)
