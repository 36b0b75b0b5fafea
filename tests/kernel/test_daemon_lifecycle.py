"""Issue 4: start, stop and single-instance semantics of `ipvsync run`, under traffic.

One instance per runtime dir (a second `run` exits with a clear message; `apply` refuses while the
daemon runs); SIGTERM leaves IPVS and VIPs in place; a restart on the populated kernel does zero
operations and drops no connection; `--remove-on-exit` removes what ipvsync owns and nothing else.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import Load, daemon_fixture, start_servers, vips

pytestmark = pytest.mark.kernel
make_daemon = daemon_fixture()


def test_stop_restart_single_instance_and_remove_on_exit(netns: Any, topology: Any, tmp_path: Path,
                                                         make_daemon: Any) -> None:
    topo = topology(n_servers=2)
    s0, s1 = topo.servers
    start_servers(topo.servers)
    netns.run(["ipvsadm", "-A", "-t", "192.0.2.99:80", "-s", "rr"])
    netns.run(["ipvsadm", "-a", "-t", "192.0.2.99:80", "-r", f"{s1.ip4}:80", "-m"])
    d = make_daemon()
    d.write(f"""
        version: 1
        services:
          a:
            vip: 192.0.2.10
            port: 80
            scheduler: rr
            real_servers: [{s0.ip4}:80, {s1.ip4}:80]
          b:
            vip: 192.0.2.20
            port: 443
            real_servers: [{s0.ip4}:443]
    """)
    d.start()
    first_start = d.start_seconds
    netns.run(["ip", "addr", "add", "192.0.2.98/32", "dev", "ipvsync0"])  # someone else's address
    load = Load(topo.client, "192.0.2.10", 80, tmp_path)
    try:
        # one instance per runtime dir
        t0 = time.monotonic()
        second = netns.run(d.argv("run", "-c", str(d.config)), check=False, env=d.env(), timeout=120)
        second_s = time.monotonic() - t0
        assert second.returncode == 4, second
        assert f"another ipvsync daemon (pid {d.pid}) already runs with runtime dir {d.runtime_dir}" in \
            second.stdout + second.stderr, second
        apply = d.cli("apply")
        assert apply.returncode == 4, apply
        assert f"the ipvsync daemon is running (pid {d.pid})" in apply.stderr, apply.stderr
        assert d.alive()
        snapshot = (netns.ipvsadm_save(), vips(netns))
        assert snapshot[1] == {"192.0.2.10", "192.0.2.20", "192.0.2.98"}

        # SIGTERM: everything stays
        assert d.stop() == 0
        assert "IPVS and VIPs stay in place" in d.log()
        assert (netns.ipvsadm_save(), vips(netns)) == snapshot
        time.sleep(0.5)  # A serves with no daemon at all

        # restart on the populated kernel: zero operations
        d.start()
        restart = d.start_seconds
        log = d.log()
        assert "config loaded (start): 0 kernel operation(s)" in log, log
        assert not any(ln.startswith(("add ", "edit ", "delete ", "bind ", "unbind ", "create ")) for ln in
                       log.splitlines()), log
        assert (netns.ipvsadm_save(), vips(netns)) == snapshot
        assert d.pending_ops() == []
        time.sleep(0.5)
    finally:
        result = load.stop()
    assert result["fail"] == 0, f"connections dropped across stop/restart: {result}\n{d.log(whole=True)}"

    # --remove-on-exit: owned services and VIPs go; the foreign service and address stay
    assert d.stop() == 0
    d.start("--remove-on-exit")
    assert d.stop() == 0
    save = netns.ipvsadm_save()
    assert save == f"-A -t 192.0.2.99:80 -s rr\n-a -t 192.0.2.99:80 -r {s1.ip4}:80 -m -w 1\n", save
    assert vips(netns) == {"192.0.2.98"}
    assert "on exit: " in d.log()
    print(f"daemon start {first_start:.1f} s, restart {restart:.1f} s, second instance refused in {second_s:.1f} s; "
          f"traffic: {result}")
