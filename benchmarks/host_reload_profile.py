#!/usr/bin/env python3
"""Profile of the daemon's reload path for a one-weight edit of a 1000 x 10 config: file read,
incremental parse, validation, model, scope, plan, apply bookkeeping.

On the host (no IPVS) an in-memory kernel stands in for netlink: ipvsync's own Python work.
With --real-kernel (inside UML: benchmarks/uml_boot.py -- python3 benchmarks/host_reload_profile.py
--real-kernel) the daemon's real Kernel is used and the edit's kernel write is included.

    python3 benchmarks/host_reload_profile.py [--services 1000] [--edits 5] [--profile] [--real-kernel]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import atomic_write, ipvsync_split, ipvsync_yaml, write_split_file  # noqa: E402

from ipvsync import plan as P  # noqa: E402
from ipvsync.apply import Applier, FaultSeam  # noqa: E402
from ipvsync.daemon import Daemon  # noqa: E402
from ipvsync.model import ObservedDest, ObservedService, Vip  # noqa: E402


class MemoryKernel:
    """Just enough of ipvsync.kernel.system.Kernel, in memory."""

    def __init__(self) -> None:
        self.services: dict = {}
        self.addresses: set[Vip] = set()
        self.link = False
        self.ipvs = self

    def observe(self, vip_interface: str, *, daemons: bool = False, timeouts: bool = False, only=None,
                addresses: bool = True):
        svcs = self.services if only is None else {k: self.services[k] for k in only if k in self.services}
        return P.Observed(services=dict(svcs), addresses=frozenset(self.addresses) if addresses else frozenset(),
                          link_exists=self.link, link_up=self.link)

    def run_ipvs(self, ops):
        for op in ops:
            if isinstance(op, P.AddService):
                self.services[op.key] = ObservedService(op.key, op.attrs, {})
            elif isinstance(op, P.EditService):
                self.services[op.key] = replace(self.services[op.key], attrs=op.new)
            elif isinstance(op, P.DelService):
                del self.services[op.key]
            elif isinstance(op, (P.AddDest, P.EditDest)):
                s = self.services[op.service]
                attrs = op.attrs if isinstance(op, P.AddDest) else op.new
                dest = ObservedDest(op.key, op.family, attrs)
                self.services[op.service] = replace(s, dests={**s.dests, op.key: dest})
            elif isinstance(op, P.DelDest):
                s = self.services[op.service]
                self.services[op.service] = replace(s, dests={k: v for k, v in s.dests.items() if k != op.key})
        return [0] * len(ops)

    def run_other(self, op):
        if isinstance(op, P.CreateLink):
            self.link = True
        elif isinstance(op, P.BindVip):
            self.addresses.add(op.vip)
        elif isinstance(op, P.UnbindVip):
            self.addresses.discard(op.vip)
        return 0

    def close(self) -> None:
        pass


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--services", type=int, default=1000)
    ap.add_argument("--edits", type=int, default=5)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--sort", default="cumulative", help="pstats order with --profile (tottime, ...)")
    ap.add_argument("--reconciles", type=int, default=0, help="then time this many no-drift full reconciles")
    ap.add_argument("--split", action="store_true", help="conf.d split: 100 files x 10 services, edit one file")
    ap.add_argument("--real-kernel", action="store_true", help="netlink (UML), not the in-memory kernel")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ipvsync-prof-"))
    if args.split:
        cfg = ipvsync_split(work, args.services, 10, 10)
    else:
        cfg = work / "ipvsync.yaml"
        cfg.write_text(ipvsync_yaml(args.services, 10))
    d = Daemon(str(cfg), str(work / "state"), str(work / "run"))
    if args.real_kernel:
        from ipvsync.kernel.system import Kernel

        k = Kernel()
    else:
        k = MemoryKernel()
        k.ipvs = type("I", (), {"services": lambda _self: list(k.services.values())})()
    d.kernel = k
    d.applier = Applier(k, d.store, FaultSeam())
    from ipvsync.health.monitor import HealthMonitor

    d.health = HealthMonitor(lambda: None)

    async def go() -> None:
        t = time.perf_counter()
        await d.reload("start")
        print(f"start: {time.perf_counter() - t:.3f} s, {len(d.config.services)} services")
        prof = cProfile.Profile() if args.profile else None
        lat = []
        for e in range(args.edits):
            i = (e * 397 + 13) % args.services
            if args.split:
                write_split_file(cfg.parent / "conf.d", i // 10, 10, 10, {(i, e % 10): 7})
            else:
                atomic_write(cfg, ipvsync_yaml(args.services, 10, {(i, e % 10): 7}))
            t = time.perf_counter()
            if prof:
                prof.enable()
            d.pending.add("file")
            await d.tick()
            if prof:
                prof.disable()
            lat.append(time.perf_counter() - t)
        what = "edit -> kernel:" if args.real_kernel else "edit -> kernel (in-memory kernel):"
        print(what, " ".join(f"{x * 1000:.1f} ms" for x in lat))
        if prof:
            pstats.Stats(prof).sort_stats(args.sort).print_stats(30)
        rec = []
        prof = cProfile.Profile() if args.profile and args.reconciles else None
        for _ in range(args.reconciles):
            t = time.perf_counter()
            if prof:
                prof.enable()
            result = d.converge_with(d.config, "reconcile")
            if prof:
                prof.disable()
            rec.append(time.perf_counter() - t)
            assert not result.applied, "a no-drift reconcile changed something"
        if rec:
            rss = int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
            print("reconcile:", " ".join(f"{x * 1000:.0f} ms" for x in rec), f"(RSS now {rss:.1f} MB)")
        if prof:
            pstats.Stats(prof).sort_stats(args.sort).print_stats(30)

    asyncio.run(go())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
