#!/usr/bin/env python3
"""Issue 4: the daemon with a 1000-service x 10-real-server config, inside one UML boot.

Phases, one process alive at a time, each in its own network namespace:
  1. `ipvsync run` on one 1000-service file: wait until loaded; --edits one-weight edits (file
     rewritten by rename, as editors do); each timed from just before the write until the kernel
     shows the new weight (generic-netlink dump of that one service every --poll-ms); then RSS and
     CPU (utime+stime from /proc/PID/stat) over --idle seconds.
  2. `ipvsync run` on the conf.d split (main file `include: [conf.d/*.yaml]`, 100 files x 10
     services): the same edits, each in its 10-service file.
  3. keepalived -C (no checkers) on the equivalent keepalived.conf: the same edits, each written
     then SIGHUP to keepalived's parent; same kernel poll; RSS (parent + checker child) and idle CPU.

Run it inside UML:  python3 benchmarks/uml_boot.py -- python3 benchmarks/bench_daemon.py
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import time
from pathlib import Path

from common import (
    TMP,
    atomic_write,
    children,
    count_table,
    cpu_seconds,
    del_netns,
    ipvs_socket,
    ipvsync_argv,
    ipvsync_split,
    ipvsync_yaml,
    keepalived_argv,
    keepalived_conf,
    log,
    median,
    netns,
    rs,
    rss_mb,
    save,
    service_key,
    split_file,
    write_split_file,
)


def wait_full(ns: str, n: int, per: int, proc: subprocess.Popen, what: str, timeout: float = 900.0) -> float:
    t0 = time.perf_counter()
    while count_table(ns) != (n, n * per):
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited {proc.returncode}")
        if time.perf_counter() - t0 > timeout:
            raise RuntimeError(f"{what}: table not full after {timeout} s: {count_table(ns)}")
        time.sleep(0.1)
    return time.perf_counter() - t0


def wait_log(path: Path, text: str, proc: subprocess.Popen, timeout: float = 900.0) -> None:
    t0 = time.perf_counter()
    while text not in path.read_text(errors="replace"):
        if proc.poll() is not None:
            raise RuntimeError(f"exited {proc.returncode}: {path.read_text()[-3000:]}")
        if time.perf_counter() - t0 > timeout:
            raise RuntimeError(f"no {text!r} in {path} after {timeout} s")
        time.sleep(0.1)


def poll_weight(sock, i: int, j: int, per: int, weight: int, poll: float, timeout: float = 120.0
                ) -> tuple[float, int]:
    """Seconds (from the caller's t0, passed back by the caller) are measured outside; here: wait
    until rs (i, j) has `weight`; returns (time of observation, polls)."""
    key = service_key(i)
    addr = rs(i, j, per)
    polls = 0
    deadline = time.perf_counter() + timeout
    while True:
        polls += 1
        for dk, d in sock.dests(key).items():
            if dk.address == addr and d.attrs.weight == weight:
                return time.perf_counter(), polls
        if time.perf_counter() > deadline:
            raise RuntimeError(f"weight {weight} of {addr} in service {i} not seen in {timeout} s")
        time.sleep(poll)


def idle_cpu(pids: list[int], seconds: float) -> float:
    before = sum(cpu_seconds(p) for p in pids)
    time.sleep(seconds)
    return sum(cpu_seconds(p) for p in pids) - before


def edit_targets(n: int, per: int, edits: int) -> list[tuple[int, int]]:
    return [((k * 397 + 13) % n, k % per) for k in range(edits)]


def run_ipvsync(label: str, n: int, per: int, edits: int, poll: float, idle: float, split: bool,
                settle: float) -> dict:
    work = TMP / f"bench-daemon-{label}"
    work.mkdir(parents=True, exist_ok=True)
    weights: dict[tuple[int, int], int] = {}
    if split:
        main = ipvsync_split(work, n, 10, per)
    else:
        main = work / "ipvsync.yaml"
        main.write_text(ipvsync_yaml(n, per))
    ns = netns("d")
    sock = ipvs_socket(ns)
    logpath = work / "daemon.log"
    logf = open(logpath, "w")
    t0 = time.perf_counter()
    proc = subprocess.Popen(ipvsync_argv(ns, work, "run", "-c", str(main)), stdout=logf, stderr=logf)
    out: dict = {}
    try:
        wait_log(logpath, "ipvsync running", proc)
        out["start_to_ready_s"] = time.perf_counter() - t0
        assert count_table(ns) == (n, n * per), count_table(ns)
        out["rss_mb_after_start"] = rss_mb(proc.pid)
        time.sleep(settle)
        lat, polls = [], []
        for i, j in edit_targets(n, per, edits):
            weights[(i, j)] = 7 if weights.get((i, j)) != 7 else 3
            if split:
                f = i // 10
                text = None
            else:
                text = ipvsync_yaml(n, per, weights)
            t = time.perf_counter()
            if split:
                write_split_file(main.parent / "conf.d", f, 10, per, weights)
            else:
                atomic_write(main, text)
            seen, np_ = poll_weight(sock, i, j, per, weights[(i, j)], poll)
            lat.append(seen - t)
            polls.append(np_)
            log(f"{label}: edit of svc-{i} rs {j} seen after {lat[-1]:.3f} s ({np_} polls)")
            time.sleep(settle)
        out["edit_latency_s"] = lat
        out["edit_latency_median_s"] = median(lat)
        out["polls"] = polls
        out["rss_mb_after_edits"] = rss_mb(proc.pid)
        if idle:
            out["idle_cpu_s"] = idle_cpu([proc.pid], idle)
            out["idle_seconds"] = idle
            out["rss_mb_after_idle"] = rss_mb(proc.pid)
        out["threads"] = len(os.listdir(f"/proc/{proc.pid}/task"))
        out["total_cpu_s"] = cpu_seconds(proc.pid)
        out["split_file"] = str(split_file(main.parent / "conf.d", 0)) if split else None
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        logf.close()
        sock.close()
        out["log_tail"] = logpath.read_text(errors="replace")[-4000:]
        del_netns(ns)
    return out


def run_keepalived(n: int, per: int, edits: int, poll: float, idle: float, settle: float) -> dict:
    work = TMP / "bench-daemon-keepalived"
    work.mkdir(parents=True, exist_ok=True)
    conf = work / "keepalived.conf"
    weights: dict[tuple[int, int], int] = {}
    conf.write_text(keepalived_conf(n, per))
    ns = netns("k")
    sock = ipvs_socket(ns)
    logf = open(work / "keepalived.log", "w")
    t0 = time.perf_counter()
    proc = subprocess.Popen(keepalived_argv(ns, conf, work / "pids"), stdout=logf, stderr=logf)
    out: dict = {}
    try:
        wait_full(ns, n, per, proc, "keepalived")
        out["start_to_full_s"] = time.perf_counter() - t0
        time.sleep(settle)
        lat, polls = [], []
        for i, j in edit_targets(n, per, edits):
            weights[(i, j)] = 7 if weights.get((i, j)) != 7 else 3
            text = keepalived_conf(n, per, weights)
            t = time.perf_counter()
            atomic_write(conf, text)
            os.kill(proc.pid, signal.SIGHUP)
            seen, np_ = poll_weight(sock, i, j, per, weights[(i, j)], poll)
            lat.append(seen - t)
            polls.append(np_)
            log(f"keepalived: edit of svc-{i} rs {j} seen after {lat[-1]:.3f} s ({np_} polls)")
            time.sleep(settle)
        out["edit_latency_s"] = lat
        out["edit_latency_median_s"] = median(lat)
        out["polls"] = polls
        pids = [proc.pid, *children(proc.pid)]
        out["pids"] = len(pids)
        out["rss_mb_parent"] = rss_mb(proc.pid)
        out["rss_mb_total"] = sum(rss_mb(p) for p in pids)
        if idle:
            out["idle_cpu_s"] = idle_cpu(pids, idle)
            out["idle_seconds"] = idle
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
        logf.close()
        sock.close()
        del_netns(ns)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--services", type=int, default=1000)
    ap.add_argument("--per", type=int, default=10)
    ap.add_argument("--edits", type=int, default=5)
    ap.add_argument("--poll-ms", type=float, default=5.0)
    ap.add_argument("--idle", type=float, default=60.0)
    ap.add_argument("--settle", type=float, default=3.0, help="pause before/between edits")
    args = ap.parse_args()
    n, per, poll = args.services, args.per, args.poll_ms / 1000
    res: dict = {"services": n, "real_servers_per_service": per, "edits": args.edits, "poll_ms": args.poll_ms}
    log("ipvsync run, one file")
    res["ipvsync_one_file"] = run_ipvsync("one", n, per, args.edits, poll, args.idle, False, args.settle)
    log("ipvsync run, conf.d split")
    res["ipvsync_split"] = run_ipvsync("split", n, per, args.edits, poll, 0, True, args.settle)
    log("keepalived")
    res["keepalived"] = run_keepalived(n, per, args.edits, poll, args.idle, args.settle)
    ka = res["keepalived"]["edit_latency_median_s"]
    res["ratios"] = {
        "one_file_over_keepalived": res["ipvsync_one_file"]["edit_latency_median_s"] / ka,
        "split_over_keepalived": res["ipvsync_split"]["edit_latency_median_s"] / ka,
    }
    save("daemon", res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
