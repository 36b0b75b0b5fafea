#!/usr/bin/env python3
"""Issue 2: loading a 1000-service x 10-real-server table from empty, inside one UML boot.

Side by side, each in a fresh network namespace (hence an empty IPVS table), repeated --reps times:
  ipvsync apply       (vip_mode managed: also binds 1000 VIPs on a dummy; and vip_mode external:
                       IPVS only, like keepalived's virtual_server)
  keepalived -C       (checker process only, real servers without checkers) from exec until the
                       table is full (polled over generic netlink, 5 ms)
  ipvsadm -R          the equivalent rules file
  ipvsync plan        no-op plan on the full table
  fixed cost          `ipvsync plan` of a one-service config (interpreter + imports + one-service work)
Every command runs through `ip netns exec`, so that overhead is in every number alike.

Run it inside UML:  python3 benchmarks/uml_boot.py -- python3 benchmarks/bench_apply.py
"""

from __future__ import annotations

import argparse
import io
import pstats
import signal
import subprocess
import time

from common import (
    PYTHON,
    TMP,
    count_table,
    del_netns,
    ipvs_socket,
    ipvsadm_restore,
    ipvsync_argv,
    ipvsync_yaml,
    keepalived_argv,
    keepalived_conf,
    log,
    median,
    netns,
    nsexec,
    save,
    service_key,
    sh,
    timed,
)


def keepalived_load(conf, work, n: int, per: int) -> tuple[float, str]:
    ns = netns("ka")
    sock = ipvs_socket(ns)
    last = service_key(n - 1)
    logf = open(work / "keepalived.log", "w")
    t0 = time.perf_counter()
    proc = subprocess.Popen(keepalived_argv(ns, conf, work / f"ka-{ns}"), stdout=logf, stderr=logf)
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"keepalived exited {proc.returncode}; see {work}/keepalived.log")
            if len(sock.dests(last)) == per:
                elapsed = time.perf_counter() - t0  # keepalived adds in file order: the last is last
                if count_table(ns) == (n, n * per):
                    break
            if time.perf_counter() - t0 > 600:
                raise RuntimeError("keepalived did not fill the table in 600 s")
            time.sleep(0.005)
    finally:
        for pid in sh(["ip", "netns", "pids", ns], check=False).stdout.split():
            sh(["kill", "-KILL", pid], check=False)
        proc.wait()
        logf.close()
        sock.close()
    return elapsed, ns


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--services", type=int, default=1000)
    ap.add_argument("--per", type=int, default=10)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--profile", action="store_true", help="also cProfile one apply (not timed)")
    ap.add_argument("--split", action="store_true", help="also time the phases of one apply in one interpreter")
    args = ap.parse_args()
    n, per = args.services, args.per
    work = TMP / "bench-apply"
    work.mkdir(parents=True, exist_ok=True)
    big = work / "big.yaml"
    big.write_text(ipvsync_yaml(n, per))
    big_ext = work / "big-external.yaml"
    big_ext.write_text(ipvsync_yaml(n, per, vip_mode="external"))
    one = work / "one.yaml"
    one.write_text(ipvsync_yaml(1, per))
    one_ext = work / "one-external.yaml"
    one_ext.write_text(ipvsync_yaml(1, per, vip_mode="external"))
    conf = work / "keepalived.conf"
    conf.write_text(keepalived_conf(n, per))
    rules = work / "ipvsadm.rules"
    rules.write_text(ipvsadm_restore(n, per))
    full = (n, n * per)
    namespaces: list[str] = []

    res: dict[str, list[float]] = {k: [] for k in (
        "python_startup", "ipvsync_one_plan", "ipvsync_one_plan_external", "ipvsync_one_apply", "ipvsadm_restore",
        "keepalived_load",
        "ipvsync_apply_managed", "ipvsync_apply_external", "ipvsync_noop_plan")}

    def fresh() -> str:
        ns = netns("ip")
        namespaces.append(ns)
        return ns

    def retire() -> None:
        """Empty and delete this rep's namespaces. Every full table left behind keeps the kernel's
        IPVS rate estimators busy (11,000 entries each, every 2 s, on UML's one CPU), which slowed
        each later rep; the flush is synchronous, a netns deletion is not."""
        for ns in namespaces:
            sh(nsexec(ns, ["ipvsadm", "-C"]), check=False)
            del_netns(ns)
        namespaces.clear()
        time.sleep(1)

    def fixed_costs() -> None:
        ns = fresh()
        t, _ = timed(nsexec(ns, [PYTHON, "-c", "pass"]))
        res["python_startup"].append(t)
        t, p = timed(ipvsync_argv(ns, work / ns, "apply", "-c", str(one)))
        assert p.returncode == 0, p.stderr
        res["ipvsync_one_apply"].append(t)
        t, p = timed(ipvsync_argv(ns, work / ns, "plan", "--configured", "--exit-code", "-c", str(one)))
        assert p.returncode == 0, p.stdout + p.stderr
        res["ipvsync_one_plan"].append(t)
        t, p = timed(ipvsync_argv(ns, work / ns, "plan", "--configured", "--exit-code", "-c", str(one_ext)))
        assert p.returncode in (0, 3), p.stdout + p.stderr
        res["ipvsync_one_plan_external"].append(t)

    def restore() -> None:
        ns = fresh()
        t, p = timed(nsexec(ns, ["ipvsadm", "-R"]), stdin=open(rules))
        assert p.returncode == 0 and count_table(ns) == full, (p.returncode, p.stderr, count_table(ns))
        res["ipvsadm_restore"].append(t)

    def keepalived() -> None:
        t, ns = keepalived_load(conf, work, n, per)
        namespaces.append(ns)
        res["keepalived_load"].append(t)

    def managed() -> None:
        ns = fresh()
        t, p = timed(ipvsync_argv(ns, work / ns, "apply", "-c", str(big)))
        assert p.returncode == 0 and count_table(ns) == full, p.stdout + p.stderr
        log(f"apply managed: {t:.2f} s: {p.stdout.strip()}")
        res["ipvsync_apply_managed"].append(t)
        t, p = timed(ipvsync_argv(ns, work / ns, "plan", "--configured", "--exit-code", "-c", str(big)))
        assert p.returncode == 0, p.stdout + p.stderr
        res["ipvsync_noop_plan"].append(t)

    def external() -> None:
        ns = fresh()
        t, p = timed(ipvsync_argv(ns, work / ns, "apply", "-c", str(big_ext)))
        assert p.returncode == 0 and count_table(ns) == full, p.stdout + p.stderr
        res["ipvsync_apply_external"].append(t)

    for rep in range(args.reps):
        log(f"rep {rep + 1}/{args.reps}")
        # every measurement in an otherwise empty kernel; ipvsync and keepalived take turns going first
        steps = [fixed_costs, external, keepalived, managed, restore]
        if rep % 2:
            steps = [keepalived, fixed_costs, external, restore, managed]
        for step in steps:
            step()
            retire()
        log({k: round(v[-1], 3) for k, v in res.items()})

    med = {k: median(v) for k, v in res.items()}
    fixed = med["ipvsync_one_plan"]
    ka = med["keepalived_load"]
    ratios = {
        "apply_managed_minus_fixed_over_keepalived": (med["ipvsync_apply_managed"] - fixed) / ka,
        "apply_external_minus_fixed_over_keepalived": (med["ipvsync_apply_external"] - fixed) / ka,
        "apply_managed_over_keepalived": med["ipvsync_apply_managed"] / ka,
        "noop_plan_minus_fixed_over_keepalived": (med["ipvsync_noop_plan"] - fixed) / ka,
        # the stricter fixed cost for the IPVS-only apply: a one-service plan of an IPVS-only config
        "apply_external_minus_fixed_external_over_keepalived":
            (med["ipvsync_apply_external"] - med["ipvsync_one_plan_external"]) / ka,
        "ipvsadm_restore_over_keepalived": med["ipvsadm_restore"] / ka,
    }
    profile = ""
    if args.profile:
        ns = fresh()
        prof = work / "apply.prof"
        argv = ipvsync_argv(ns, work / ns, "apply", "-c", str(big))
        i = argv.index("-m")
        argv[i:i] = ["-m", "cProfile", "-o", str(prof)]
        p = subprocess.run(argv, capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        buf = io.StringIO()
        pstats.Stats(str(prof), stream=buf).sort_stats("cumulative").print_stats(35)
        buf.write("\n--- by internal time ---\n")
        pstats.Stats(str(prof), stream=buf).sort_stats("tottime").print_stats(25)
        profile = buf.getvalue()
        (work / "apply-profile.txt").write_text(profile)
    profile_split = {}
    if args.profile or args.split:
        # the daemon-free in-process split: config load / observe / plan / apply, managed and external
        profile_split = {"managed": in_process_split(fresh(), big, work)}
        retire()
        profile_split["external"] = in_process_split(fresh(), big_ext, work)
        retire()
        log(f"in-process split: {profile_split}")
    for ns in namespaces:
        del_netns(ns)
    # the same ratios within each rep (one time window each: robust to the host slowing down between reps)
    per_rep = [{"managed": (res["ipvsync_apply_managed"][r] - res["ipvsync_one_plan"][r]) / res["keepalived_load"][r],
                "external": (res["ipvsync_apply_external"][r] - res["ipvsync_one_plan_external"][r])
                / res["keepalived_load"][r]} for r in range(args.reps)]
    ratios["per_rep"] = per_rep
    ratios["median_of_per_rep_external"] = median([r["external"] for r in per_rep])
    ratios["median_of_per_rep_managed"] = median([r["managed"] for r in per_rep])
    log(f"ratios: {ratios}")
    save("apply", {"services": n, "real_servers_per_service": per, "reps": args.reps, "runs": res,
                   "median": med, "ratios": ratios, "profile_split": profile_split, "profile": profile})
    return 0


def in_process_split(ns: str, big, work) -> dict[str, float]:
    """Time the phases of one apply inside one interpreter (runs in `ns` via a child python)."""
    code = r"""
import json, sys, time
t0 = time.perf_counter()
from ipvsync.config.build import load_config
from ipvsync.desired import from_config
from ipvsync.plan import plan
from ipvsync.apply import Applier, FaultSeam
from ipvsync.kernel.system import Kernel
from ipvsync.state import StateStore
t1 = time.perf_counter()
cfg = load_config(sys.argv[1])
t2 = time.perf_counter()
k = Kernel()
obs = k.observe(cfg.vip_interface)
t3 = time.perf_counter()
store = StateStore(sys.argv[2]); state = store.load()
d = from_config(cfg)
p = plan(d, obs, state.owned, sync_daemons=cfg.sync_daemons, timeouts=cfg.ipvs_timeouts)
t4 = time.perf_counter()
r = Applier(k, store, FaultSeam.from_env()).converge(d, obs, state, sync_daemons=cfg.sync_daemons,
                                                     timeouts=cfg.ipvs_timeouts, first_plan=p)
t5 = time.perf_counter()
obs2 = k.observe(cfg.vip_interface)
t6 = time.perf_counter()
print(json.dumps({"imports": t1 - t0, "load_config": t2 - t1, "observe_empty": t3 - t2, "plan": t4 - t3,
                  "apply": t5 - t4, "observe_full": t6 - t5, "ops": len(r.applied), "ok": r.ok}))
"""
    state = work / ns / "state"
    state.mkdir(parents=True, exist_ok=True)
    p = sh(nsexec(ns, [PYTHON, "-c", code, str(big), str(state)]), check=False)
    import json

    try:
        return json.loads(p.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": p.stdout + p.stderr}


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    raise SystemExit(main())
