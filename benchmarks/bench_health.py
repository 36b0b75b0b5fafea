#!/usr/bin/env python3
"""Issue 5: TCP health checks of 1000 services x 10 real servers, ipvsync vs keepalived, one UML boot.

Backends: one namespace with `ip route add local 198.19.0.0/16 dev lo` (AnyIP) and one listener on
0.0.0.0:8080 (benchmarks/anyip_listener.py); every real server 198.19.x.y:8080 answers. Each
director is its own namespace, linked to the backend namespace by a veth pair, routing
198.19.0.0/16 via the backend's address. The two run one after the other (UML has one CPU):

  ipvsync run     defaults.health {type: tcp, interval, timeout, rise: 2, fall: 3}, vip_mode external
                  (IPVS only, as keepalived's virtual_server); `initial: up` by default (--initial), as
                  keepalived without `alpha` starts real servers up (the fair comparison); with
                  `--initial up,down` the default `initial: down` is measured too (key ipvsync_initial_down),
                  where we wait until every real server has collected `rise` passing checks
  keepalived -C   TCP_CHECK {connect_timeout, retry 2}, delay_loop = interval, inhibit_on_failure

After a warm-up (all real servers up and at least 1.5 intervals since start) CPU seconds
(utime+stime, all threads/processes) are taken over --window s, and the real servers marked down
are counted at the end of the window (weight 0, or missing from the table). `checks_per_s`: TCP
connects the director namespace started over the window (ActiveOpens, read outside the CPU window):
at 1 s both tools may fall short of 10 000/s.

Run it inside UML:  python3 benchmarks/uml_boot.py -- python3 benchmarks/bench_health.py
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time
from pathlib import Path

from common import (
    PYTHON,
    REPO,
    TMP,
    children,
    cpu_seconds,
    del_netns,
    dump,
    in_netns,
    ipvsync_argv,
    ipvsync_yaml,
    keepalived_argv,
    keepalived_conf,
    log,
    netns,
    rss_mb,
    save,
    sh,
)

LISTENER = Path(__file__).resolve().parent / "anyip_listener.py"
_link = iter(range(100))


def director(backend: str) -> str:
    """A director namespace linked to `backend`, routing 198.19.0.0/16 through it."""
    ns = netns("dir")
    k = next(_link)
    a, b = f"192.0.2.{4 * k + 1}", f"192.0.2.{4 * k + 2}"
    dev_d, dev_b = f"vd{k}", f"vb{k}"
    sh(["ip", "link", "add", dev_d, "netns", ns, "type", "veth", "peer", "name", dev_b, "netns", backend])
    sh(["ip", "-n", ns, "addr", "add", f"{a}/30", "dev", dev_d])
    sh(["ip", "-n", backend, "addr", "add", f"{b}/30", "dev", dev_b])
    sh(["ip", "-n", ns, "link", "set", dev_d, "up"])
    sh(["ip", "-n", backend, "link", "set", dev_b, "up"])
    sh(["ip", "-n", ns, "route", "add", "198.19.0.0/16", "via", b])
    sh(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65535"])
    return ns


def active_opens(ns: str) -> int:
    """TCP connects started in `ns` so far (Tcp ActiveOpens of /proc/net/snmp): the checks made."""
    with in_netns(ns), open("/proc/self/net/snmp") as fh:
        rows = [ln.split() for ln in fh if ln.startswith("Tcp:")]
    return int(rows[1][rows[0].index("ActiveOpens")])


def state(ns: str, total: int) -> tuple[int, int]:
    """(real servers up, real servers down) where down = weight 0 or missing."""
    weights = [d.attrs.weight for s in dump(ns).values() for d in s.dests.values()]
    up = sum(1 for w in weights if w > 0)
    return up, total - up


def measure(label: str, ns: str, argv: list[str], logpath: Path, total: int, interval: float, window: float,
            warm_timeout: float, pids_of) -> dict:
    logf = open(logpath, "w")
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=logf, stderr=logf)
    out: dict = {}
    try:
        while True:
            time.sleep(2)
            if proc.poll() is not None:
                raise RuntimeError(f"{label} exited {proc.returncode}: {logpath.read_text()[-3000:]}")
            up, down = state(ns, total)
            el = time.perf_counter() - t0
            if up == total and el >= 1.5 * interval:
                break
            if el > warm_timeout:
                log(f"{label}: not all up after {el:.0f} s ({up} up); measuring anyway")
                break
        out["warmup_s"] = time.perf_counter() - t0
        log(f"{label}: warm after {out['warmup_s']:.1f} s; measuring {window:.0f} s")
        _, down0 = state(ns, total)  # table dumps stay outside the CPU window
        pids = pids_of(proc.pid)
        o0 = active_opens(ns)  # reporting only: connects over the window (outside the CPU readings)
        c0 = sum(cpu_seconds(p) for p in pids)
        w0 = time.perf_counter()
        time.sleep(window)
        c1 = sum(cpu_seconds(p) for p in pids if os.path.exists(f"/proc/{p}"))
        actual = time.perf_counter() - w0  # the guest may oversleep when the host is loaded
        out["checks_per_s"] = (active_opens(ns) - o0) / actual
        up, down = state(ns, total)
        out.update({"cpu_s": c1 - c0, "window_s": actual, "cpu_share": (c1 - c0) / actual,
                    "down_at_start": down0, "down_at_end": down, "up_at_end": up, "processes": len(pids),
                    "rss_mb": sum(rss_mb(p) for p in pids if os.path.exists(f"/proc/{p}"))})
        log(f"{label}: {out}")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        logf.close()
        out["log_tail"] = logpath.read_text(errors="replace")[-3000:]
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--services", type=int, default=1000)
    ap.add_argument("--per", type=int, default=10)
    ap.add_argument("--intervals", default="10,1", help="comma-separated check intervals, seconds")
    ap.add_argument("--window", type=float, default=30.0)
    ap.add_argument("--warm-timeout", type=float, default=600.0)
    ap.add_argument("--initial", default="up,down",
                    help="ipvsync `initial:` states to measure (comma-separated; up is compared with keepalived)")
    args = ap.parse_args()
    n, per = args.services, args.per
    total = n * per
    work = TMP / "bench-health"
    work.mkdir(parents=True, exist_ok=True)
    backend = netns("backend")
    sh(["ip", "-n", backend, "route", "add", "local", "198.19.0.0/16", "dev", "lo"])
    sh(["ip", "netns", "exec", backend, "sysctl", "-qw", "net.core.somaxconn=65535"])
    listener = subprocess.Popen(["ip", "netns", "exec", backend, PYTHON, "-I", "-S", str(LISTENER), "8080"],
                                stdout=subprocess.PIPE, text=True)
    assert listener.stdout is not None and listener.stdout.readline().strip() == "ready"
    res: dict = {"services": n, "real_servers_per_service": per, "window_s": args.window, "runs": {}}
    for interval in [float(x) for x in args.intervals.split(",")]:
        timeout = min(3.0, interval)
        key = f"interval_{interval:g}s"
        res["runs"][key] = {"interval_s": interval, "timeout_s": timeout}
        # ipvsync, once per `initial:` state ("ipvsync" = the first listed, normally up)
        for k, init in enumerate(x.strip() for x in args.initial.split(",")):
            ns = director(backend)
            cfg = work / f"ipvsync-{interval:g}-{init}.yaml"
            health = {"type": "tcp", "interval": f"{interval:g}s", "timeout": f"{timeout:g}s", "rise": 2,
                      "fall": 3, "initial": init}
            cfg.write_text(ipvsync_yaml(n, per, health=health, vip_mode="external"))
            lc0 = cpu_seconds(listener.pid)
            tkey = "ipvsync" if k == 0 else f"ipvsync_initial_{init}"
            res["runs"][key][tkey] = measure(
                f"ipvsync (initial {init})", ns, ipvsync_argv(ns, work / ns, "run", "-c", str(cfg)),
                work / f"{ns}.log", total, interval, args.window, args.warm_timeout, lambda pid: [pid])
            res["runs"][key][tkey]["initial"] = init
            res["runs"][key][tkey]["listener_cpu_s_whole_run"] = cpu_seconds(listener.pid) - lc0
            del_netns(ns)
        # keepalived
        ns = director(backend)
        conf = work / f"keepalived-{interval:g}.conf"
        conf.write_text(keepalived_conf(n, per, check={"delay_loop": f"{interval:g}", "connect_timeout":
                                                       f"{timeout:g}", "retry": 2, "inhibit": True}))
        lc0 = cpu_seconds(listener.pid)
        res["runs"][key]["keepalived"] = measure(
            "keepalived", ns, keepalived_argv(ns, conf, work / ns), work / f"{ns}.log", total, interval,
            args.window, args.warm_timeout, lambda pid: [pid, *children(pid)])
        res["runs"][key]["keepalived"]["listener_cpu_s_whole_run"] = cpu_seconds(listener.pid) - lc0
        del_netns(ns)
        r = res["runs"][key]
        r["cpu_ratio_ipvsync_over_keepalived"] = r["ipvsync"].get("cpu_share", r["ipvsync"]["cpu_s"]) / max(
            r["keepalived"].get("cpu_share", r["keepalived"]["cpu_s"]), 1e-9)
    listener.kill()
    del_netns(backend)
    res["repo"] = str(REPO)
    save("health", res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
