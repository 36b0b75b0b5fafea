"""IpvsSocket against a real IPVS (inside UML), with `ipvsadm -Sn` as the independent oracle.

The socket works on the namespace of the calling process, so each test runs its socket code in a
Python subprocess inside the test's netns and gets JSON back.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.kernel

REPO = Path(__file__).resolve().parents[2]

PRELUDE = f"""
import json, sys, time
sys.path.insert(0, {str(REPO)!r})
from ipvsync.kernel import ipvs_codec as c
from ipvsync.kernel.ipvs import IpvsSocket
from ipvsync.model import *
def dest_json(d):
    a = d.attrs
    return [d.key.address, d.key.port, d.family, a.forward, a.weight, a.u_threshold, a.l_threshold,
            a.tun_type, a.tun_port, a.tun_flags]
def svc_json(s):
    a = s.attrs
    return {{"key": str(s.key), "attrs": [a.scheduler, a.flags, a.timeout, a.netmask, a.pe_name],
            "dests": sorted(dest_json(d) for d in s.dests.values())}}
result = None
"""


def run_py(netns: Any, body: str, timeout: float = 600.0) -> Any:
    """Run `body` (which sets `result`) in the netns; return `result` decoded from JSON."""
    script = PRELUDE + textwrap.dedent(body) + "\nprint(json.dumps(result))\n"
    proc = netns.run([sys.executable, "-c", script], timeout=timeout)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def ipvsadm_save(netns: Any) -> list[str]:
    out = netns.run(["ipvsadm", "-Sn"]).stdout
    return sorted(line for line in out.splitlines() if line.strip())


def test_socket_writes_ipvsadm_reads(netns: Any) -> None:
    result = run_py(
        netns,
        """
        t = ServiceKey(AF_INET, 6, "192.0.2.1", 80)
        u6 = ServiceKey(AF_INET6, 17, "2001:db8::1", 53)
        f6 = ServiceKey(AF_INET6, fwmark=7)
        ops = [
            c.new_service(t, ServiceAttrs("rr", SVC_F_PERSISTENT, 300, 24)),
            c.new_dest(t, DestKey("198.51.100.1", 8080), None, DestAttrs(FWD_MASQ, 5, 100, 10)),
            c.new_dest(t, DestKey("198.51.100.2", 80), None, DestAttrs(FWD_TUNNEL, 3, 0, 0, 1, 6080, 1)),
            c.new_dest(t, DestKey("198.51.100.3", 80), None, DestAttrs(FWD_TUNNEL, 4, 0, 0, 2, 0, 0)),
            c.new_service(u6, ServiceAttrs("mh", SVC_F_ONEPACKET | SVC_F_SCHED2)),
            c.new_dest(u6, DestKey("2001:db8::10", 53), None, DestAttrs(FWD_DROUTE, 0)),
            c.new_dest(u6, DestKey("198.51.100.9", 53), AF_INET, DestAttrs(FWD_TUNNEL, 2)),
            c.new_service(f6, ServiceAttrs("wlc", SVC_F_PERSISTENT, 60, 64, "sip")),
        ]
        with IpvsSocket() as s:
            result = s.execute(ops)
        """,
    )
    assert result == [0] * 8
    assert ipvsadm_save(netns) == sorted(
        [
            "-A -t 192.0.2.1:80 -s rr -p 300 -M 255.255.255.0",
            "-a -t 192.0.2.1:80 -r 198.51.100.1:8080 -m -w 5",
            "-a -t 192.0.2.1:80 -r 198.51.100.2:80 -i -w 3 --tun-type gue --tun-port 6080 --tun-csum",
            "-a -t 192.0.2.1:80 -r 198.51.100.3:80 -i -w 4 --tun-type gre --tun-nocsum",
            "-A -u [2001:db8::1]:53 -s mh -o -b mh-port",
            "-a -u [2001:db8::1]:53 -r [2001:db8::10]:53 -g -w 0",
            "-a -u [2001:db8::1]:53 -r 198.51.100.9:53 -i -w 2 --tun-type ipip",
            "-A -f 7 -6 -s wlc -p 60 -M 64 --pe sip",
        ]
    )
    thresholds = netns.run(["ipvsadm", "-Ln", "--thresholds"]).stdout.split()
    assert thresholds[thresholds.index("198.51.100.1:8080") + 1 :][:2] == ["100", "10"]


def test_set_clears_flags_pe_and_persistence(netns: Any) -> None:
    result = run_py(
        netns,
        """
        t = ServiceKey(AF_INET, 6, "192.0.2.1", 443)
        d = DestKey("198.51.100.1", 443)
        with IpvsSocket() as s:
            result = s.execute([
                c.new_service(t, ServiceAttrs("sh", SVC_F_PERSISTENT | SVC_F_SCHED1, 300, 24, "sip")),
                c.new_dest(t, d, None, DestAttrs(FWD_TUNNEL, 5, 0, 0, 1, 6080, 2)),
                c.set_service(t, ServiceAttrs("wrr")),
                c.set_dest(t, d, None, DestAttrs(FWD_DROUTE, 9)),
            ])
        """,
    )
    assert result == [0, 0, 0, 0]
    assert ipvsadm_save(netns) == [
        "-A -t 192.0.2.1:443 -s wrr",
        "-a -t 192.0.2.1:443 -r 198.51.100.1:443 -g -w 9",
    ]


def test_ipvsadm_writes_socket_reads(netns: Any) -> None:
    netns.run(
        "ipvsadm -A -t 192.0.2.1:80 -s rr -p 300 -M 255.255.255.0 &&"
        " ipvsadm -a -t 192.0.2.1:80 -r 198.51.100.1:8080 -m -w 5 -x 100 -y 10 &&"
        " ipvsadm -a -t 192.0.2.1:80 -r 198.51.100.2:80 -i -w 3 --tun-type gue --tun-port 6080 --tun-csum &&"
        " ipvsadm -A -u [2001:db8::1]:53 -s mh -o -b mh-port &&"
        " ipvsadm -a -u [2001:db8::1]:53 -r [2001:db8::10]:53 -g -w 0 &&"
        " ipvsadm -a -u [2001:db8::1]:53 -r 198.51.100.9:53 -i -w 2 &&"
        " ipvsadm -A -f 7 -6 -s wlc -p 60 -M 64 --pe sip &&"
        " ipvsadm -A -f 8 -s sh -b sh-fallback,sh-port"
    )
    result = run_py(
        netns,
        """
        with IpvsSocket() as s:
            result = sorted((svc_json(v) for v in s.dump().values()), key=lambda x: x["key"])
        """,
    )
    assert result == sorted(
        [
            {
                "key": "tcp 192.0.2.1:80",
                "attrs": ["rr", 1, 300, 24, ""],
                "dests": [
                    ["198.51.100.1", 8080, 2, 0, 5, 100, 10, 0, 0, 0],
                    ["198.51.100.2", 80, 2, 2, 3, 0, 0, 1, 6080, 1],
                ],
            },
            {
                "key": "udp [2001:db8::1]:53",
                "attrs": ["mh", 0x14, 0, 128, ""],
                "dests": [
                    ["198.51.100.9", 53, 2, 2, 2, 0, 0, 0, 0, 0],
                    ["2001:db8::10", 53, 10, 3, 0, 0, 0, 0, 0, 0],
                ],
            },
            {"key": "fwmark 7 inet6", "attrs": ["wlc", 1, 60, 64, "sip"], "dests": []},
            {"key": "fwmark 8 inet", "attrs": ["sh", 0x18, 0, 32, ""], "dests": []},
        ],
        key=lambda x: x["key"],
    )


def test_batch_of_2000_with_error_in_the_middle(netns: Any) -> None:
    result = run_py(
        netns,
        """
        t = ServiceKey(AF_INET, 6, "192.0.2.1", 80)
        dests = [DestKey(f"198.18.{i // 250}.{i % 250 + 1}", 80) for i in range(1999)]
        ops = [c.new_service(t, ServiceAttrs("wrr"))]
        ops += [c.new_dest(t, d, None, DestAttrs(FWD_DROUTE, 1 + i % 7)) for i, d in enumerate(dests)]
        ops[1000] = c.new_dest(t, dests[5], None, DestAttrs(FWD_DROUTE, 50))  # duplicate: EEXIST
        ops[1500] = c.new_dest(t, DestKey("198.18.200.1", 80), None, DestAttrs(FWD_MASQ, 1, 5, 10))  # l > u
        with IpvsSocket() as s:
            t0 = time.perf_counter()
            codes = s.execute(ops)
            t1 = time.perf_counter()
            dumped = s.dump()
            t2 = time.perf_counter()
        got = dumped[t].dests
        result = {"codes": codes, "n": len(got), "weight5": got[dests[5]].attrs.weight,
                  "missing": [str(d) for d in (dests[999], dests[1499]) if d in got],
                  "exec_s": t1 - t0, "dump_s": t2 - t1}
        """,
    )
    codes = result["codes"]
    assert len(codes) == 2000
    assert {i: e for i, e in enumerate(codes) if e} == {1000: 17, 1500: 34}  # EEXIST, ERANGE
    assert result["n"] == 1997 and result["weight5"] == 6 and result["missing"] == []
    lines = ipvsadm_save(netns)
    assert len([ln for ln in lines if ln.startswith("-a ")]) == 1997
    print(f"2000 ops: execute {result['exec_s']:.3f}s, dump {result['dump_s']:.3f}s")


def test_stop_on_error_skips_later_batches(netns: Any) -> None:
    result = run_py(
        netns,
        """
        t = ServiceKey(AF_INET, 17, "192.0.2.2", 53)
        ops = [c.new_service(t, ServiceAttrs("rr"))]
        ops += [c.new_dest(t, DestKey(f"198.18.0.{i + 1}", 53), None, DestAttrs()) for i in range(200)]
        ops[120] = c.del_dest(t, DestKey("203.0.113.1", 53))  # not there: ENOENT
        with IpvsSocket() as s:
            s.max_batch = 50
            codes = s.execute(ops, stop_on_error=True)
            result = {"codes": codes, "n": len(s.dests(t))}
        """,
    )
    codes = result["codes"]
    assert codes[:150] == [0] * 120 + [2] + [0] * 29  # the failing batch (100..149) ran to its end
    assert codes[150:] == [None] * 51
    assert result["n"] == 148  # ops 1..149 minus the failed one
    assert len(ipvsadm_save(netns)) == 149


def test_dump_1000_services_of_10_dests(netns: Any) -> None:
    result = run_py(
        netns,
        """
        keys = [ServiceKey(AF_INET if i % 2 else AF_INET6, 6,
                           f"192.0.2.{i % 250 + 1}" if i % 2 else f"2001:db8::{i:x}", 1000 + i)
                for i in range(1000)]
        ops = []
        for i, k in enumerate(keys):
            ops.append(c.new_service(k, ServiceAttrs("wlc")))
            for j in range(10):
                addr = f"198.18.{j}.{i % 250 + 1}" if k.family == AF_INET else f"2001:db8:1::{i:x}:{j}"
                ops.append(c.new_dest(k, DestKey(addr, 8000 + i), None, DestAttrs(FWD_MASQ, j)))
        with IpvsSocket() as s:
            t0 = time.perf_counter()
            codes = s.execute(ops)
            t1 = time.perf_counter()
            dumped = s.dump()
            t2 = time.perf_counter()
            again = s.dump()
        result = {"errors": sum(1 for e in codes if e), "services": len(dumped),
                  "dests": sum(len(v.dests) for v in dumped.values()), "same": dumped == again,
                  "weights": sorted({d.attrs.weight for v in dumped.values() for d in v.dests.values()}),
                  "exec_s": t1 - t0, "dump_s": t2 - t1}
        """,
    )
    assert result["errors"] == 0
    assert (result["services"], result["dests"], result["same"]) == (1000, 10000, True)
    assert result["weights"] == list(range(10))
    assert len(ipvsadm_save(netns)) == 11000
    print(f"11000 ops: execute {result['exec_s']:.3f}s; dump of 1000x10: {result['dump_s']:.3f}s")


def test_config_info_and_daemons(netns: Any) -> None:
    netns.run("ip link add sync0 type dummy && ip link set sync0 up")
    result = run_py(
        netns,
        """
        with IpvsSocket() as s:
            codes = s.execute([c.set_config(901, 121, 301), c.new_daemon(SyncDaemon("master", "sync0", 7))])
            result = {"codes": codes, "config": s.config(), "info": s.info(),
                      "daemons": [[d.role, d.interface, d.syncid] for d in s.daemons()]}
            result["del"] = s.execute([c.del_daemon(SyncDaemon("master", "sync0")), c.del_daemon(
                SyncDaemon("backup", "sync0"))])
            result["after"] = len(s.daemons())
        """,
    )
    assert result["codes"] == [0, 0]
    assert result["config"] == [901, 121, 301]
    assert result["info"][0] == 0x010201 and result["info"][1] > 0
    assert result["daemons"] == [["master", "sync0", 7]]
    # master: 0, or EINTR when the kernel stopped the thread before it ever ran (then it sends no
    # ack at all); no backup daemon: ESRCH
    assert result["del"] in ([0, 3], [4, 3])
    assert result["after"] == 0
    assert "901" in netns.run(["ipvsadm", "-L", "--timeout"]).stdout


def test_request_without_ack_does_not_hang(netns: Any) -> None:
    """DEL_DAEMON in the same send as NEW_DAEMON stops a thread that never ran: the kernel
    handler returns -EINTR, which netlink answers with no ack; the batch barrier catches it."""
    netns.run("ip link add sync1 type dummy && ip link set sync1 up")
    result = run_py(
        netns,
        """
        d = SyncDaemon("backup", "sync1", 3)
        with IpvsSocket(timeout=20) as s:
            result = {"codes": s.execute([c.new_daemon(d), c.del_daemon(d), c.get_info()]),
                      "after": len(s.daemons()), "info": s.info()[0]}
        """,
    )
    assert result["codes"][0] == 0 and result["codes"][1] in (0, 4)
    assert result["codes"][2] == 0  # a doit GET in execute: its reply is skipped, its ack counted
    assert result["after"] == 0 and result["info"] == 0x010201


def test_single_service_get_equals_dump_and_missing_is_none(netns: Any) -> None:
    """Kernel.observe(only=few) reads services one GET each: the same values as the dump."""
    result = run_py(
        netns,
        """
        sys.path.insert(0, {repo!r})
        from ipvsync.kernel.system import Kernel
        keys = [ServiceKey(AF_INET, 6, "192.0.2.1", 80), ServiceKey(AF_INET6, 17, "2001:db8::1", 53),
                ServiceKey(AF_INET, fwmark=9)]
        with IpvsSocket() as s:
            s.execute([c.new_service(keys[0], ServiceAttrs("wrr", SVC_F_PERSISTENT, 120, 24)),
                       c.new_service(keys[1], ServiceAttrs("sh", 0x8, 0, 128)),
                       c.new_service(keys[2], ServiceAttrs("rr")),
                       c.new_dest(keys[0], DestKey("198.51.100.1", 8080), None, DestAttrs(FWD_MASQ, 3))])
            dump = {str(x.key): svc_json(x) for x in s.services()}
            one = {str(k): svc_json(s.service(k)) for k in keys}
            missing = s.service(ServiceKey(AF_INET, 6, "192.0.2.99", 80))
        with Kernel() as k:
            few = k.observe("ipvsync0", only={keys[0], ServiceKey(AF_INET, 6, "192.0.2.99", 80)})
            many = k.observe("ipvsync0")
        result = {"dump": dump, "one": one, "missing": missing is None,
                  "few": {str(x): svc_json(v) for x, v in few.services.items()},
                  "full0": svc_json(many.services[keys[0]])}
        """.replace("{repo!r}", repr(str(REPO))),
    )
    assert result["one"] == result["dump"]
    assert result["missing"] is True
    assert len(result["few"]) == 1  # the missing one is simply absent
    assert list(result["few"].values())[0] == result["full0"]
    assert result["full0"]["dests"], "the scoped read includes the real servers"


def test_proc_table_blocks_match_service_identities(netns: Any) -> None:
    """The reconcile's change detector reads /proc/net/ip_vs: its identities must be ident_of()'s
    for every kind of service, counters must not count, a weight change must."""
    result = run_py(
        netns,
        """
        sys.path.insert(0, {repo!r})
        from ipvsync.kernel.procfs import ident_of, read_table, service_blocks
        keys = [ServiceKey(AF_INET, 6, "192.0.2.10", 80), ServiceKey(AF_INET6, 17, "2001:db8::35", 53),
                ServiceKey(AF_INET, fwmark=10), ServiceKey(AF_INET, 132, "192.0.2.11", 9)]
        with IpvsSocket() as s:
            s.execute([c.new_service(keys[0], ServiceAttrs("wrr", SVC_F_PERSISTENT, 300, 24)),
                       c.new_service(keys[1], ServiceAttrs("rr", SVC_F_ONEPACKET, 0, 128)),
                       c.new_service(keys[2], ServiceAttrs("sh")),
                       c.new_service(keys[3], ServiceAttrs("rr")),
                       c.new_dest(keys[0], DestKey("198.51.100.1", 8080), None, DestAttrs(FWD_MASQ, 3)),
                       c.new_dest(keys[1], DestKey("2001:db8::1", 53), None, DestAttrs(FWD_DROUTE, 1)),
                       c.new_dest(keys[2], DestKey("198.51.100.51", 0), None, DestAttrs(FWD_TUNNEL, 1))])
            before = service_blocks(read_table())
            s.execute([c.set_dest(keys[0], DestKey("198.51.100.1", 8080), None, DestAttrs(FWD_MASQ, 5))])
            after = service_blocks(read_table())
        result = {"idents": sorted(x.decode() for x in before), "want": sorted(ident_of(k).decode() for k in keys),
                  "changed": sorted(k.decode() for k in before if before[k] != after.get(k)),
                  "weight_key": ident_of(keys[0]).decode()}
        """.replace("{repo!r}", repr(str(REPO))),
    )
    assert result["idents"] == result["want"]
    assert result["changed"] == [result["weight_key"]]
