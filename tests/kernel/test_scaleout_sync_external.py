"""Issue 8: IPVS connection sync between two directors, and externally-owned VIPs (vip_mode: external).

Sync: director 1 (the test's netns, with real servers and a client) runs `sync_daemon: master` on a
veth `sync0` to director 2, which runs `sync_daemon: backup` on its end; a connection made through
director 1 shows up in director 2's connection table (`ipvsadm -Lnc`). Both are `ipvsync run`
daemons, so the sync daemons are converged (and repaired) like everything else.

External: keepalived (VRRP only) owns the VIP — simulated by binding it on a dummy `vrrp0` — and
writes MASTER/BACKUP/FAULT into `external_state_file`. ipvsync programs IPVS but never binds or
unbinds the VIP (not even with withdraw_vip and quorum lost, nor on stop); while the file says BACKUP
a failing server does not change weights (ha_suspend); MASTER resumes the health side effects.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from test_scaleout_anycast import FALL, INTERVAL, TIMEOUT, VIP, Daemon, veth, wait_for
from uml.netns import IpvsyncCmd, Netns, Topology

pytestmark = [pytest.mark.kernel, pytest.mark.slow]


def service_block(servers: list, extra: str = "") -> str:
    rs = ", ".join(f"{s.ip4}:80" for s in servers)
    return f"""
          web:
            vip: {VIP}
            port: 80
            scheduler: rr
            forward: nat{extra}
            health: {{type: tcp, interval: {INTERVAL}s, timeout: {TIMEOUT}s, rise: 2, fall: {FALL}}}
            real_servers: [{rs}]
    """


def sync_daemons(ns: Netns) -> list[str]:
    """`ipvsadm -L --daemon`, cut to 'ROLE sync daemon (mcast=IF, syncid=N' (newer ipvsadm adds fields)."""
    out = ns.run(["ipvsadm", "-Ln", "--daemon"], check=False).stdout
    return sorted(ln.strip().split(", maxlen")[0].rstrip(")") for ln in out.splitlines() if "sync daemon" in ln)


def connections(ns: Netns) -> list[str]:
    out = ns.run(["ipvsadm", "-Lnc"], check=False).stdout
    return [ln for ln in out.splitlines() if f" {VIP}:80 " in f" {ln} "]


def test_sync_daemon_master_to_backup(netns: Netns, topology: Callable[..., Topology],
                                      make_netns: Callable[[], Netns], tmp_path: Path) -> None:
    topo = topology(n_servers=2)
    for srv in topo.servers:
        srv.serve_whoami(port=80, peer=True)
    d2 = make_netns()
    veth(netns, "sync0", d2, "sync0", "198.18.10.1/24", "198.18.10.2/24")
    body = service_block(topo.servers)
    master = Daemon(netns, tmp_path, "d1", f"""
        version: 1
        reconcile_interval: 2s
        sync_daemon:
          - {{role: master, interface: sync0, syncid: 7}}
        services:{body}""")
    backup = Daemon(d2, tmp_path, "d2", f"""
        version: 1
        reconcile_interval: 2s
        sync_daemon:
          - {{role: backup, interface: sync0, syncid: 7}}
        services:{body}""")
    master.start()
    backup.start()
    try:
        wait_for(lambda: master.vip_bound() and master.weights() == {s.ip4: 1 for s in topo.servers}, 120,
                 "director 1 to converge")
        wait_for(lambda: backup.vip_bound(), 120, "director 2 to converge")
        wait_for(lambda: sync_daemons(netns) == ["master sync daemon (mcast=sync0, syncid=7"], 10,
                 "the master sync daemon on director 1")
        wait_for(lambda: sync_daemons(d2) == ["backup sync daemon (mcast=sync0, syncid=7"], 10,
                 "the backup sync daemon on director 2")
        assert connections(d2) == []

        answers = topo.client.ask(VIP, 80, count=4)
        assert not [a for a in answers if a.startswith("!")], answers
        assert len(connections(netns)) == 4, connections(netns)
        # the master flushes its sync buffer at least every 2 s (IPVS_SYNC_FLUSH_TIME)
        synced = wait_for(lambda: connections(d2), 15, "synced connections in director 2's table")
        assert isinstance(synced, list)
        assert any(topo.client.ip4 in ln for ln in synced), synced
        assert {ln.split()[-1].rsplit(":", 1)[0] for ln in synced} <= {s.ip4 for s in topo.servers}, synced

        # drift: someone stops the master sync daemon -> the reconcile pass starts it again
        netns.run(["ipvsadm", "--stop-daemon", "master"])
        # (the reconcile may already have restarted it by the time we look: no check of the gap)
        wait_for(lambda: sync_daemons(netns) == ["master sync daemon (mcast=sync0, syncid=7"], 20,
                 "the reconcile pass to restart the master sync daemon")
        wait_for(lambda: master.log().count("start sync daemon master") >= 2, 20,
                 "the restart of the master sync daemon in the daemon's log")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- d1 ---\n{master.log()[-3000:]}\n--- d2 ---\n{backup.log()[-3000:]}"
                             f"\n--- d2 -Lnc ---\n{d2.run(['ipvsadm', '-Lnc'], check=False).stdout}"
                             f"\n--- daemons ---\n{netns.run(['ipvsadm', '-Ln', '--daemon'], check=False).stdout}"
                             f"{d2.run(['ipvsadm', '-Ln', '--daemon'], check=False).stdout}") from None


def test_vip_mode_external_follows_state_file(netns: Netns, topology: Callable[..., Topology],
                                              tmp_path: Path) -> None:
    topo = topology(n_servers=2)
    procs = {s.ip4: s.serve_whoami(port=80) for s in topo.servers}
    s0, s1 = topo.servers
    # keepalived (VRRP only) owns the VIP
    netns.run(f"ip link add vrrp0 type dummy && ip link set vrrp0 up && ip addr add {VIP}/32 dev vrrp0")
    state_file = tmp_path / "vrrp-state"
    state_file.write_text("MASTER\n")
    body = service_block(topo.servers, "\n            quorum: 1\n            withdraw_vip: true")
    daemon = Daemon(netns, tmp_path, "d", f"""
        version: 1
        vip_mode: external
        external_state_file: {state_file}
        services:{body}""")

    def vrrp_vip() -> bool:
        return daemon.vip_bound(VIP, "vrrp0")

    def no_ipvsync_vip() -> bool:
        """ipvsync created no vip_interface and bound the VIP nowhere else."""
        out = netns.run(["ip", "-o", "addr"], check=False).stdout
        no_link = netns.run(["ip", "link", "show", "ipvsync0"], check=False).returncode != 0
        return no_link and out.count(f" {VIP}/") == 1

    daemon.start()
    try:
        wait_for(lambda: daemon.weights() == {s0.ip4: 1, s1.ip4: 1}, 120, "the service with both servers up")
        assert vrrp_vip() and no_ipvsync_vip()
        assert not [a for a in topo.client.ask(VIP, 80, count=4) if a.startswith("!")]

        # BACKUP: health-check side effects paused — a dead server keeps its weight
        state_file.write_text("BACKUP\n")
        wait_for(lambda: "MASTER -> BACKUP" in daemon.log(), 15, "the daemon to notice BACKUP")
        procs[s0.ip4].kill()
        time.sleep(3 * (FALL * INTERVAL + TIMEOUT))
        assert daemon.weights() == {s0.ip4: 1, s1.ip4: 1}, daemon.log()[-3000:]

        # MASTER: resumed — the dead server goes to weight 0
        state_file.write_text("MASTER\n")
        wait_for(lambda: daemon.weights() == {s0.ip4: 0, s1.ip4: 1}, 15, "s0 at weight 0 after MASTER")
        assert not [a for a in topo.client.ask(VIP, 80, count=4) if a.startswith("!")]

        # every server down: quorum lost, withdraw_vip asked — but the VIP is not ipvsync's to unbind
        procs[s1.ip4].kill()
        wait_for(lambda: daemon.weights() == {s0.ip4: 0, s1.ip4: 0}, 15, "both servers at weight 0")
        time.sleep(1.0)
        assert vrrp_vip() and no_ipvsync_vip()

        # FAULT pauses as well; on stop the VIP stays where its owner put it
        state_file.write_text("FAULT\n")
        wait_for(lambda: "MASTER -> FAULT" in daemon.log(), 15, "the daemon to notice FAULT")
        procs[s0.ip4] = s0.serve_whoami(port=80)
        time.sleep(3 * INTERVAL * 2)
        assert daemon.weights() == {s0.ip4: 0, s1.ip4: 0}
        state_file.write_text("MASTER\n")
        wait_for(lambda: daemon.weights() == {s0.ip4: 1, s1.ip4: 0}, 15, "s0 back after MASTER")
        assert daemon.signal(signal.SIGTERM) == 0
        assert vrrp_vip() and no_ipvsync_vip()
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- daemon log ---\n{daemon.log()[-4000:]}") from None


def test_apply_stops_the_sync_daemon_it_started_when_it_leaves_the_config(
        netns: Netns, ipvsync_cmd: IpvsyncCmd, tmp_path: Path) -> None:
    """`ipvsync apply` converges sync daemons like services: one it started and the config no longer
    lists is stopped; one it did not start (made with ipvsadm) is left alone."""
    netns.run(["ip", "link", "add", "sync0", "type", "dummy"])
    netns.run(["ip", "link", "set", "sync0", "up", "multicast", "on"])
    cfg = tmp_path / "ipvsync.yaml"
    base = "version: 1\nvip_mode: external\nservices: {}\nallow_empty: true\n"
    cfg.write_text(base + "sync_daemon: [{role: master, interface: sync0, syncid: 3}]\n")
    r = ipvsync_cmd(netns, "apply", "-c", cfg)
    assert r.returncode == 0, r.stderr
    assert sync_daemons(netns) == ["master sync daemon (mcast=sync0, syncid=3"]
    cfg.write_text(base)
    r = ipvsync_cmd(netns, "plan", "-c", cfg, "--exit-code")
    assert r.returncode == 3 and "stop sync daemon master" in r.stdout, (r.stdout, r.stderr)
    r = ipvsync_cmd(netns, "apply", "-c", cfg)
    assert r.returncode == 0, r.stderr
    assert sync_daemons(netns) == []
    netns.run(["ipvsadm", "--start-daemon", "backup", "--mcast-interface", "sync0", "--syncid", "4"])
    r = ipvsync_cmd(netns, "apply", "-c", cfg)
    assert r.returncode == 0, r.stderr
    assert sync_daemons(netns) == ["backup sync daemon (mcast=sync0, syncid=4"]
