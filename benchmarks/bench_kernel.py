#!/usr/bin/env python3
"""Issues 2 and 4, kernel side only, several code trees compared inside one UML boot.

For each tree (--trees A B ...; default: this tree), a child interpreter with PYTHONPATH=tree in a
fresh network namespace:
  apply      from_config, observe (empty), plan, Applier.converge of the 1000 x 10 config
             (vip_mode external: IPVS only), the state file in tmpfs
  reconcile  --loops times: Kernel.observe() of the full table, from_config + plan (no changes);
             wall and CPU (process_time) per phase, medians
The config is loaded once per child and not timed (ipvsync/config/ is measured elsewhere).
With --daemon-idle S: instead, `ipvsync run` of each tree (vip_mode managed, 1000 VIPs) with
reconcile_interval --reconcile (s); once running and settled, its CPU (utime+stime) over S seconds.
Trees are run in turn, then again in reverse order (--rounds), to cancel drift in host load.

    git archive HEAD | tar -x -C /tmp/base     # a "before" tree
    python3 benchmarks/uml_boot.py --worktree --out /tmp/k/x -- \
        python3 benchmarks/bench_kernel.py --trees /tmp/base /work/main
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time

from common import PYTHON, TMP, cpu_seconds, del_netns, ipvsync_yaml, log, median, netns, nsexec, rss_mb, save

CHILD = r"""
import cProfile, io, json, os, pstats, sys, time
from ipvsync.config.build import load_config
from ipvsync.desired import from_config
from ipvsync.plan import plan
from ipvsync.apply import Applier
from ipvsync.kernel.system import Kernel
from ipvsync.state import StateStore
cfg_path, state_dir, loops, profile = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
cfg = load_config(cfg_path)
out = {}
def clock():
    return time.perf_counter(), time.process_time()
def since(t):
    w, c = clock()
    return round(w - t[0], 4), round(c - t[1], 4)
k = Kernel()
store = StateStore(state_dir); state = store.load()
t = clock(); d = from_config(cfg); out["from_config"] = since(t)
t = clock(); obs = k.observe(cfg.vip_interface); out["observe_empty"] = since(t)
t = clock(); p = plan(d, obs, state.owned, sync_daemons=cfg.sync_daemons, timeouts=cfg.ipvs_timeouts)
out["plan_full"] = since(t)
prof = cProfile.Profile() if profile else None
t = clock()
if prof: prof.enable()
r = Applier(k, store, None).converge(d, obs, state, sync_daemons=cfg.sync_daemons,
                                     timeouts=cfg.ipvs_timeouts, first_plan=p)
if prof: prof.disable()
out["converge"] = since(t)
assert r.ok and len(r.applied) == len(p.ops), r.summary()
obs_t, plan_t = [], []
rprof = cProfile.Profile() if profile else None
for i in range(loops):
    t = clock(); obs = k.observe(cfg.vip_interface); obs_t.append(since(t))
    if rprof and i == loops - 1: rprof.enable()
    t = clock(); d = from_config(cfg)
    p = plan(d, obs, state.owned, sync_daemons=cfg.sync_daemons, timeouts=cfg.ipvs_timeouts)
    plan_t.append(since(t))
    if rprof and i == loops - 1: rprof.disable()
    assert not p.ops and len(obs.services) == len(d.services), p.text()[:500]
med = lambda xs, i: sorted(x[i] for x in xs)[len(xs) // 2]
out["observe_full"] = (med(obs_t, 0), med(obs_t, 1))
out["from_config_plan_noop"] = (med(plan_t, 0), med(plan_t, 1))
out["observe_full_all"] = obs_t
if prof:
    for name, pr in (("converge", prof), ("reconcile_plan", rprof)):
        buf = io.StringIO()
        pstats.Stats(pr, stream=buf).sort_stats("tottime").print_stats(18)
        out["profile_" + name] = buf.getvalue()
print(json.dumps(out))
"""


def observe_profile_child() -> str:
    return r"""
import cProfile, io, pstats, sys
from ipvsync.kernel.system import Kernel
k = Kernel(); k.observe("ipvsync0")
pr = cProfile.Profile(); pr.enable()
for _ in range(3): k.observe("ipvsync0")
pr.disable(); buf = io.StringIO()
pstats.Stats(pr, stream=buf).sort_stats("tottime").print_stats(15); print(buf.getvalue())
"""


def run_tree(tree: str, cfg, loops: int, profile: bool) -> dict:
    ns = netns("k")
    state = TMP / f"bench-kernel-{ns}"
    state.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": tree}
    try:
        p = subprocess.run(nsexec(ns, [PYTHON, "-c", CHILD, str(cfg), str(state), str(loops), "1" if profile else "0"]),
                           capture_output=True, text=True, env=env, cwd=tree)
        if p.returncode != 0:
            return {"error": p.stdout[-2000:] + p.stderr[-4000:]}
        res = json.loads(p.stdout.strip().splitlines()[-1])
        if profile:
            q = subprocess.run(nsexec(ns, [PYTHON, "-c", observe_profile_child()]), capture_output=True, text=True,
                               env=env, cwd=tree)
            res["profile_observe"] = q.stdout + q.stderr[-2000:]
        return res
    finally:
        del_netns(ns)


def daemon_idle(tree: str, cfg, seconds: float) -> dict:
    ns = netns("d")
    work = TMP / f"bench-kernel-{ns}"
    (work / "state").mkdir(parents=True, exist_ok=True)
    (work / "run").mkdir(parents=True, exist_ok=True)
    logpath = work / "daemon.log"
    env = {**os.environ, "PYTHONPATH": tree}
    argv = nsexec(ns, [PYTHON, "-m", "ipvsync", "--state-dir", str(work / "state"), "--runtime-dir",
                       str(work / "run"), "run", "-c", str(cfg)])
    with open(logpath, "w") as logf:
        proc = subprocess.Popen(argv, stdout=logf, stderr=logf, env=env, cwd=tree)
    try:
        t0 = time.monotonic()
        while "ipvsync running" not in logpath.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() - t0 > 600:
                return {"error": logpath.read_text(errors="replace")[-3000:]}
            time.sleep(0.2)
        time.sleep(5)
        before = last = cpu_seconds(proc.pid)
        per_second = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            time.sleep(1.0)
            now = cpu_seconds(proc.pid)
            per_second.append(round(now - last, 2))
            last = now
        return {"idle_cpu_s": round(last - before, 3), "seconds": seconds, "per_second": per_second,
                "rss_mb": round(rss_mb(proc.pid), 1),
                "log_tail": logpath.read_text(errors="replace")[-1500:]}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        del_netns(ns)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--services", type=int, default=1000)
    ap.add_argument("--per", type=int, default=10)
    ap.add_argument("--trees", nargs="+", default=[os.getcwd()])
    ap.add_argument("--loops", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--daemon-idle", type=float, default=0.0, metavar="S")
    ap.add_argument("--reconcile", type=float, default=10.0)
    args = ap.parse_args()
    if args.daemon_idle:
        cfg = TMP / "bench-kernel-daemon.yaml"
        cfg.write_text(ipvsync_yaml(args.services, args.per, extra=f"reconcile_interval: {args.reconcile:g}s"))
        idle: dict[str, list[float]] = {t: [] for t in args.trees}
        for rnd in range(args.rounds):
            for tree in (args.trees if rnd % 2 == 0 else list(reversed(args.trees))):
                res = daemon_idle(tree, cfg, args.daemon_idle)
                log(f"round {rnd + 1} {tree}: {res.get('idle_cpu_s', res)} s CPU, RSS {res.get('rss_mb')} MB, "
                    f"per second {res.get('per_second')}")
                print(res.get("log_tail", ""))
                if "idle_cpu_s" in res:
                    idle[tree].append(res["idle_cpu_s"])
        save("kernel-daemon", {"services": args.services, "per": args.per, "trees": args.trees, "idle_seconds":
                               args.daemon_idle, "reconcile_interval": args.reconcile, "idle_cpu_s": idle,
                               "median": {t: median(v) for t, v in idle.items()}, "loadavg": os.getloadavg()})
        return 0
    work = TMP / "bench-kernel"
    work.mkdir(parents=True, exist_ok=True)
    cfg = work / "big-external.yaml"
    cfg.write_text(ipvsync_yaml(args.services, args.per, vip_mode="external"))
    runs: dict[str, list[dict]] = {t: [] for t in args.trees}
    for rnd in range(args.rounds):
        order = args.trees if rnd % 2 == 0 else list(reversed(args.trees))
        for tree in order:
            res = run_tree(tree, cfg, args.loops, args.profile and rnd == 0)
            runs[tree].append(res)
            log(f"round {rnd + 1} {tree}: " + json.dumps({k: v for k, v in res.items()
                                                         if not k.startswith("profile") and k != "observe_full_all"}))
            for k, v in res.items():
                if k.startswith("profile"):
                    print(f"--- {tree} {k}\n{v}")
    summary = {}
    for tree, rs in runs.items():
        ok = [r for r in rs if "error" not in r]
        summary[tree] = {k: [median([r[k][0] for r in ok]), median([r[k][1] for r in ok])]
                         for k in ("converge", "plan_full", "observe_full", "from_config_plan_noop")} if ok else {}
    log(json.dumps(summary, indent=1))
    save("kernel", {"services": args.services, "per": args.per, "trees": args.trees, "runs": runs,
                    "summary": summary, "loadavg": os.getloadavg()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
