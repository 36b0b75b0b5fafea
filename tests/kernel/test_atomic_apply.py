"""Issue 3: a change lands whole or not at all — proven in the real IPVS kernel (UML).

The before-state is BEFORE applied plus a foreign service; AFTER is a 50-operation change that adds
five services (new3 needs the sh scheduler), edits three, removes two and leaves `keep` alone. After
every failed apply the kernel must equal the before-state: sorted `ipvsadm -Sn` and `ip -br addr` of
the whole namespace, and the state file's ownership records too.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers_foundation import Director

pytestmark = pytest.mark.kernel


def rs_list(prefix: str, n: int) -> str:
    return "[" + ", ".join(f"{prefix}{i}" for i in range(1, n + 1)) + "]"


BEFORE = """
    version: 1
    services:
      keep:
        vip: 192.0.2.10
        port: 80
        scheduler: rr
        real_servers: [{keep0}, {keep1}]
      edit1:
        vip: 192.0.2.11
        port: 80
        real_servers: [198.51.100.101, 198.51.100.102]
      edit2:
        vip: 192.0.2.12
        port: 80
        real_servers: [198.51.100.103]
      edit3:
        vip: 192.0.2.13
        port: 53
        protocol: udp
        real_servers: [198.51.100.104]
      gone1:
        vip: 192.0.2.14
        port: 80
        real_servers: [198.51.100.105, 198.51.100.106]
      gone2:
        vip: 192.0.2.15
        port: 443
        real_servers: [198.51.100.107]
"""
AFTER = f"""
    version: 1
    services:
      keep:
        vip: 192.0.2.10
        port: 80
        scheduler: rr
        real_servers: [{{keep0}}, {{keep1}}]
      edit1:
        vip: 192.0.2.11
        port: 80
        scheduler: wrr
        real_servers: [198.51.100.101, 198.51.100.108]
      edit2:
        vip: 192.0.2.12
        port: 80
        scheduler: lc
        real_servers: [{{{{address: 198.51.100.103, weight: 4}}}}]
      edit3:
        vip: 192.0.2.13
        port: 53
        protocol: udp
        persistence: {{{{timeout: 30}}}}
        real_servers: [198.51.100.104]
      new1:
        vip: 192.0.2.21
        port: 80
        real_servers: {rs_list("198.51.100.1", 6)}
      new2:
        vip: 192.0.2.22
        port: 80
        scheduler: lc
        real_servers: {rs_list("198.51.100.2", 6)}
      new3:
        vip: 192.0.2.23
        port: 80
        scheduler: sh
        real_servers: {rs_list("198.51.100.3", 6)}
      new4:
        vip: 192.0.2.24
        port: 80
        real_servers: {rs_list("198.51.100.4", 6)}
      new5:
        vip: 2001:db8:f::25
        port: 80
        real_servers: {rs_list("2001:db8:1::5", 6)}
"""
N_OPS = 50
FOREIGN = [["ipvsadm", "-A", "-t", "192.0.2.200:25", "-s", "lc"],
           ["ipvsadm", "-a", "-t", "192.0.2.200:25", "-r", "198.51.100.200:25", "-m"]]


@pytest.fixture
def director(netns: Any, tmp_path: Path) -> Iterator[Director]:
    d = Director(netns, tmp_path)
    try:
        yield d
    finally:
        d.close()


def prepare(d: Director, keep: tuple[str, str] = ("198.51.100.250", "198.51.100.251")) -> tuple[Path, Path]:
    before = d.write(BEFORE.format(keep0=keep[0], keep1=keep[1]), d.base / "before.yaml")
    after = d.write(AFTER.format(keep0=keep[0], keep1=keep[1]), d.base / "after.yaml")
    for cmd in FOREIGN:
        d.netns.run(cmd)
    res = d.apply(before)
    assert res.rc == 0, res.text
    ops = d.plan_ops(after)
    kinds = [op["op"] for op in ops]
    assert len(ops) == N_OPS, json.dumps(ops, indent=1)
    assert kinds.count("add_service") == 5 and kinds.count("edit_service") == 3
    assert kinds.count("del_service") == 2 and kinds.count("bind_vip") == 5 and kinds.count("unbind_vip") == 2
    assert "keep" not in json.dumps(ops)
    return before, after


def test_missing_scheduler_module_rolls_back_everything(director: Director, module_tree_without: Any) -> None:
    d = director
    before, after = prepare(d)
    snap, owned = d.snapshot(), d.owned()
    with module_tree_without("ip_vs_sh"):
        res = d.apply(after)
        assert res.rc == 5, res.text
        assert d.snapshot() == snap
        assert d.owned() == owned
    line = d.line_of("new3:", after)
    assert f"{after}:{line}" in res.err and "services.new3" in res.err, res.err
    assert "'sh'" in res.err and "ip_vs_sh" in res.err, res.err
    assert "nothing was changed" in res.err or "rolled back" in res.err, res.err
    # the module is back: the same change applies whole
    res = d.apply(after)
    assert res.rc == 0, res.text
    assert d.plan("--exit-code", config=after).rc == 0


def test_fault_at_every_operation_restores_the_kernel(director: Director) -> None:
    d = director
    before, after = prepare(d)
    snap, owned = d.snapshot(), d.owned()
    ops = d.plan_ops(after)
    t0, apply_s = time.monotonic(), 0.0
    for n in range(1, N_OPS + 1):
        res = d.apply(after, env={"IPVSYNC_TEST_FAULT": str(n)})
        apply_s += res.seconds
        assert res.rc == 5, f"N={n}: {res.text}"
        assert "apply failed:" in res.err and "[errno 5]" in res.err, f"N={n}: {res.err}"
        assert ops[n - 1]["text"] in res.err, f"N={n}: the failing operation is named: {res.err}"
        assert d.snapshot() == snap, f"N={n}: the kernel differs from the before-state"
        assert d.owned() == owned, f"N={n}: ownership records differ"
    print(f"{N_OPS} failed applies: {time.monotonic() - t0:.1f}s in all, {apply_s:.1f}s inside ipvsync")
    # another errno, reported as such
    res = d.apply(after, env={"IPVSYNC_TEST_FAULT": "17:1"})
    assert res.rc == 5 and "[errno 1]" in res.err, res.text
    assert d.snapshot() == snap
    # past the end of the plan: nothing fails, the change lands whole
    res = d.apply(after, env={"IPVSYNC_TEST_FAULT": str(N_OPS + 1)})
    assert res.rc == 0, res.text
    assert f"Applied {N_OPS} operation(s)" in res.out
    assert d.plan("--exit-code", config=after).rc == 0


def test_fault_from_an_empty_kernel_removes_the_dummy_too(director: Director) -> None:
    d = director
    d.write("""
        version: 1
        services:
          a:
            vip: 192.0.2.10
            port: 80
            real_servers: [198.51.100.11, 198.51.100.12]
          b:
            vip: 2001:db8:f::10
            port: 80
            real_servers: ["2001:db8:1::11", "2001:db8:1::12"]
    """)
    snap = d.snapshot()
    ops = d.plan_ops()
    assert [op["op"] for op in ops][0] == "create_link" and len(ops) == 9
    for n in range(1, len(ops) + 1):
        res = d.apply(env={"IPVSYNC_TEST_FAULT": str(n)})
        assert res.rc == 5, f"N={n}: {res.text}"
        assert d.snapshot() == snap, f"N={n}"
        assert d.owned() in ({}, {"services": [], "vips": [], "links": [], "sync_daemons": []}), f"N={n}"


def test_rollback_failure_exits_6_and_is_recorded(director: Director) -> None:
    d = director
    before, after = prepare(d)
    snap = d.snapshot()
    res = d.apply(after, env={"IPVSYNC_TEST_FAULT": "45", "IPVSYNC_TEST_FAULT_ROLLBACK": "2"})
    assert res.rc == 6, res.text
    assert "ROLLBACK FAILED" in res.err, res.err
    state = d.state()
    assert state["failure"] is not None
    assert "[errno 5]" in state["failure"]["error"], state
    assert len(state["failure"]["rollback_failures"]) == 1, state
    assert d.snapshot() != snap  # honest: a failed rollback leaves a mixed state
    # the next apply converges and clears the failure
    res = d.apply(after)
    assert res.rc == 0, res.text
    assert d.state()["failure"] is None
    assert d.plan("--exit-code", config=after).rc == 0
    assert "-A -t 192.0.2.200:25 -s lc\n" in d.save()  # the foreign service survived all of it


def test_service_created_between_plan_and_apply_is_adopted(director: Director) -> None:
    d = director
    d.write("""
        version: 1
        services:
          web:
            vip: 192.0.2.16
            port: 80
            scheduler: wrr
            real_servers: [198.51.100.11, {address: 198.51.100.12, weight: 2}]
    """)
    expected = ("-A -t 192.0.2.16:80 -s wrr\n"
                "-a -t 192.0.2.16:80 -r 198.51.100.11:80 -m -w 1\n"
                "-a -t 192.0.2.16:80 -r 198.51.100.12:80 -m -w 2\n")
    ops = d.plan_ops()
    assert [op["op"] for op in ops] == ["create_link", "add_service", "add_dest", "add_dest", "bind_vip"], ops
    assert "192.0.2.16:80" in ops[1]["text"]
    # another writer creates the service (other scheduler, a foreign real server) before `apply`
    d.netns.run(["ipvsadm", "-A", "-t", "192.0.2.16:80", "-s", "rr"])
    d.netns.run(["ipvsadm", "-a", "-t", "192.0.2.16:80", "-r", "198.51.100.99:80", "-m"])
    res = d.apply()
    assert res.rc == 0, res.text
    assert d.save() == expected
    assert d.plan("--exit-code").rc == 0


RACE = """
import subprocess
from ipvsync.apply import Applier
from ipvsync.config.build import load_config
from ipvsync.desired import from_config
from ipvsync.kernel.system import Kernel
from ipvsync.state import StateStore

config = load_config(CONFIG)
store = StateStore(STATE)
with Kernel() as k:
    observed = k.observe(config.vip_interface)       # what `apply` read ...
    for cmd in HAND:                                 # ... then another writer acts
        subprocess.run(cmd, check=True, capture_output=True)
    res = Applier(k, store).converge(from_config(config), observed, store.load())
result = {"rc": res.exit_code, "adopted": res.adopted, "error": res.error}
"""


def test_eexist_from_a_concurrent_writer_is_adoption(director: Director) -> None:
    """Objects created after ipvsync observed the kernel: EEXIST -> re-read and converge, exit 0."""
    d = director
    d.write("""
        version: 1
        services:
          web:
            vip: 192.0.2.16
            port: 80
            scheduler: wrr
            real_servers: [198.51.100.11, {address: 198.51.100.12, weight: 2}]
          api:
            vip: 192.0.2.17
            port: 443
            real_servers: [198.51.100.21]
    """)
    hand = [["ipvsadm", "-A", "-t", "192.0.2.16:80", "-s", "rr"],
            ["ipvsadm", "-a", "-t", "192.0.2.16:80", "-r", "198.51.100.12:80", "-m", "-w", "7"],
            ["ipvsadm", "-a", "-t", "192.0.2.16:80", "-r", "198.51.100.99:80", "-m"],
            ["ip", "link", "add", "ipvsync0", "type", "dummy"],
            ["ip", "addr", "add", "192.0.2.17/32", "dev", "ipvsync0"]]
    out = d.py(f"CONFIG = {str(d.config)!r}\nSTATE = {str(d.state_dir)!r}\nHAND = {hand!r}\n" + RACE)
    assert out["rc"] == 0, out
    assert any("192.0.2.16:80" in a for a in out["adopted"]), out
    assert d.save() == ("-A -t 192.0.2.16:80 -s wrr\n"
                        "-A -t 192.0.2.17:443 -s wlc\n"
                        "-a -t 192.0.2.16:80 -r 198.51.100.11:80 -m -w 1\n"
                        "-a -t 192.0.2.16:80 -r 198.51.100.12:80 -m -w 2\n"
                        "-a -t 192.0.2.17:443 -r 198.51.100.21:443 -m -w 1\n")
    assert {"192.0.2.16/32", "192.0.2.17/32"} <= set(d.addr_detail("ipvsync0"))
    assert d.plan("--exit-code").rc == 0


CLIENT = r"""
import select, socket, sys, time
ok = fail = 0
errors = []
print("started", flush=True)
while not select.select([sys.stdin], [], [], 0)[0]:
    try:
        with socket.create_connection((sys.argv[1], 80), timeout=3) as s:
            data = s.recv(100)
        if data:
            ok += 1
        else:
            fail += 1
            errors.append("empty")
    except OSError as exc:
        fail += 1
        errors.append(repr(exc))
    time.sleep(0.005)
print(ok, fail, errors[:5], flush=True)
"""


def test_failed_applies_never_drop_traffic_of_an_unchanged_service(director: Director, topology: Any) -> None:
    d = director
    topo = topology(n_servers=2)
    for srv in topo.servers:
        srv.serve_whoami(port=80)
    before, after = prepare(d, keep=(topo.servers[0].ip4, topo.servers[1].ip4))
    snap = d.snapshot()
    assert sorted(topo.client.ask("192.0.2.10", 80, count=2)) == sorted(s.name for s in topo.servers)
    client = topo.client.ns.popen([sys.executable, "-c", textwrap.dedent(CLIENT), "192.0.2.10"],
                                  stdin=subprocess.PIPE)
    assert client.stdout is not None and client.stdin is not None
    assert client.stdout.readline().strip() == "started"
    t0 = time.monotonic()
    for i in range(20):
        n = 1 + (i * 7) % N_OPS  # spread over the whole plan, late operations included
        res = d.apply(after, env={"IPVSYNC_TEST_FAULT": str(n)})
        assert res.rc == 5, f"N={n}: {res.text}"
    time.sleep(0.5)
    client.stdin.close()
    ok_s, fail_s, errors = client.stdout.readline().split(" ", 2)
    elapsed = time.monotonic() - t0
    assert int(fail_s) == 0, f"{fail_s} failed connections during the applies: {errors}"
    assert int(ok_s) >= 20, f"only {ok_s} connections in {elapsed:.1f}s"
    assert d.snapshot() == snap
