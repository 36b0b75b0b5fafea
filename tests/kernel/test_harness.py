"""Self-tests of the UML harness against the real kernel (run inside UML)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from uml.netns import VIP4, VIP6, IpvsyncCmd, Netns, Topology, run

pytestmark = pytest.mark.kernel


def test_fresh_netns_has_empty_ipvs_table(netns: Netns) -> None:
    assert netns.ipvsadm_save() == ""
    assert "inet 127.0.0.1/8" in netns.run(["ip", "addr", "show", "lo"]).stdout


def test_ipvs_tables_are_per_netns(netns: Netns, make_netns: Callable[[], Netns]) -> None:
    other = make_netns()
    netns.run(["ipvsadm", "-A", "-t", f"{VIP4}:80", "-s", "rr"])
    netns.run(["ipvsadm", "-a", "-t", f"{VIP4}:80", "-r", "198.51.100.2:80", "-m", "-w", "3"])
    assert netns.ipvsadm_save() == (
        "-A -t 192.0.2.1:80 -s rr\n"
        "-a -t 192.0.2.1:80 -r 198.51.100.2:80 -m -w 3\n"
    )
    assert other.ipvsadm_save() == ""


def test_run_check_reports_output(netns: Netns) -> None:
    with pytest.raises(Exception, match="(?s)status 3.*boom"):
        netns.run("echo boom >&2; exit 3")
    assert netns.run("exit 4", check=False).returncode == 4


def test_veth_topology_tcp_udp_v4_v6(topology: Callable[..., Topology]) -> None:
    topo = topology(n_servers=2)
    for srv in topo.servers:
        srv.serve_whoami(port=8080, udp=True)
    for srv in topo.servers:
        assert topo.client.ask(srv.ip4, 8080) == [srv.name]
        assert topo.client.ask(srv.ip6, 8080, udp=True) == [srv.name]


def test_ipvs_nat_round_robin_spreads_over_servers(netns: Netns, topology: Callable[..., Topology]) -> None:
    topo = topology(n_servers=3)
    netns.run(["ip", "addr", "add", f"{VIP4}/32", "dev", "lo"])
    netns.run(["ip", "addr", "add", f"{VIP6}/128", "dev", "lo"])
    for vip in (f"{VIP4}:80", f"[{VIP6}]:80"):
        netns.run(["ipvsadm", "-A", "-t", vip, "-s", "rr"])
    for srv in topo.servers:
        srv.serve_whoami(port=80, peer=True)
        netns.run(["ipvsadm", "-a", "-t", f"{VIP4}:80", "-r", f"{srv.ip4}:80", "-m"])
        netns.run(["ipvsadm", "-a", "-t", f"[{VIP6}]:80", "-r", f"[{srv.ip6}]:80", "-m"])
    answers = topo.client.ask(VIP4, 80, count=6)
    assert Counter(a.split()[0] for a in answers) == {s.name: 2 for s in topo.servers}
    assert {a.split()[1] for a in answers} == {topo.client.ip4}  # NAT keeps the client address
    answers6 = topo.client.ask(VIP6, 80, count=3)
    assert sorted(a.split()[0] for a in answers6) == sorted(s.name for s in topo.servers)


def test_module_tree_without_scheduler(netns: Netns, module_tree_without: Callable[[str], Any]) -> None:
    with module_tree_without("ip_vs_sh"):
        failed = netns.run(["ipvsadm", "-A", "-t", f"{VIP4}:80", "-s", "sh"], check=False)
        assert failed.returncode != 0
        assert "scheduler" in failed.stderr.lower() or "no such" in failed.stderr.lower(), failed.stderr
        netns.run(["ipvsadm", "-A", "-t", f"{VIP4}:80", "-s", "rr"])
    netns.run(["ipvsadm", "-A", "-t", f"{VIP4}:81", "-s", "sh"])
    assert netns.ipvsadm_save() == "-A -t 192.0.2.1:80 -s rr\n-A -t 192.0.2.1:81 -s sh\n"


def test_processes_are_killed_with_the_netns(make_netns: Callable[[], Netns]) -> None:
    ns = make_netns()
    ns.popen(["sleep", "600"])
    ns.run("sleep 600 </dev/null >/dev/null 2>&1 &")
    assert len(run(["ip", "netns", "pids", ns.name]).stdout.split()) == 2
    ns.delete()
    assert ns.name not in run(["ip", "netns", "list"]).stdout


def test_ipvsync_cmd_runs_the_checkout_in_the_netns(netns: Netns, ipvsync_cmd: IpvsyncCmd) -> None:
    import ipvsync

    proc = ipvsync_cmd(netns, "--version")
    assert proc.returncode == 0, proc.stderr
    assert ipvsync.__version__ in proc.stdout + proc.stderr
    assert ipvsync_cmd.state_dir(netns).is_dir() and ipvsync_cmd.runtime_dir(netns).is_dir()
    assert ipvsync_cmd.argv(netns, "plan")[-1] == "plan"
