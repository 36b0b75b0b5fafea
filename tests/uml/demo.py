"""The README demo, run inside User-Mode Linux by .ci/demo: the daemon balancing real traffic.

A client namespace talks to a VIP; three real servers in their own namespaces answer with their
names; `ipvsync run` programs IPVS, health-checks the servers, follows config edits and survives a
broken edit. Every step prints what a sysadmin would look at.
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from uml.netns import Netns, build_topology  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
VIP = "192.0.2.10"


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def show(proc: subprocess.CompletedProcess[str]) -> None:
    out = (proc.stdout or "") + (proc.stderr or "")
    print("   " + out.strip().replace("\n", "\n   "), flush=True)


def config(path: Path, weights: tuple[int, int, int], servers: list[str], scheduler: str = "rr",
           broken: bool = False) -> None:
    rs = "\n".join(f"      - {{address: {a}, weight: {w}}}" for a, w in zip(servers, weights))
    text = f"""version: 1
vip_interface: ipvsync0
sysctls: {{net.ipv4.ip_forward: 1, net.ipv4.vs.expire_nodest_conn: 1}}
services:
  web:
    vip: {VIP}
    port: 80
    scheduler: {scheduler}
    health: {{type: tcp, interval: 0.5s, timeout: 0.5s, rise: 2, fall: 2}}
    real_servers:
{rs}
"""
    if broken:
        text += "    persistence: {timeout: forever}\n"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)  # save like an editor does: write a temp file, rename over


def main() -> int:
    director = Netns.create("demo")
    topo = build_topology(director, n_servers=3)
    work = Path(tempfile.mkdtemp(prefix="ipvsync-demo-"))
    cfg = work / "ipvsync.yaml"
    servers = [h.ip4 for h in topo.servers]
    procs = {h.name: h.serve_whoami(port=80) for h in topo.servers}
    config(cfg, (1, 1, 1), servers)
    py = [sys.executable, "-m", "ipvsync"]
    dirs = ["--state-dir", str(work / "state"), "--runtime-dir", str(work / "run")]
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def ipvsync(*args: str) -> subprocess.CompletedProcess[str]:
        return director.run([*py, *args, "-c", str(cfg), *dirs], check=False, env=env, timeout=120)

    def traffic(n: int = 12) -> collections.Counter[str]:
        answers = topo.client.ask(VIP, 80, count=n, timeout=2)
        c = collections.Counter(a.strip() for a in answers)
        print(f"   client -> {VIP}:80, {n} new connections: " +
              ", ".join(f"{k}={v}" for k, v in sorted(c.items())), flush=True)
        return c

    def wait_weight(rs: str, weight: int, limit: float = 30.0) -> float:
        t0 = time.monotonic()
        while time.monotonic() - t0 < limit:
            out = director.run(["ipvsadm", "-Ln"]).stdout
            for line in out.splitlines():
                parts = line.split()
                if len(parts) > 3 and parts[1] == f"{rs}:80" and parts[3] == str(weight):
                    return time.monotonic() - t0
            time.sleep(0.2)
        raise SystemExit(f"demo: {rs} did not reach weight {weight} within {limit:g} s")

    say(f"config {cfg}")
    print("   " + cfg.read_text().strip().replace("\n", "\n   "))
    say("ipvsync check")
    show(ipvsync("check"))

    say("start the daemon: ipvsync run (in the director namespace)")
    daemon = director.popen([*py, "run", "-c", str(cfg), *dirs], env=env)
    t0 = time.monotonic()
    while not (work / "run" / "control.sock").exists():
        if daemon.poll() is not None or time.monotonic() - t0 > 90:
            print(daemon.stdout.read() if daemon.stdout else "")
            raise SystemExit("demo: the daemon did not start")
        time.sleep(0.2)
    for rs in servers:
        wait_weight(rs, 1)
    print(f"   ready after {time.monotonic() - t0:.1f} s (all real servers passed rise=2 TCP checks)")
    show(director.run(["ipvsadm", "-Ln"]))
    say("round-robin through the VIP")
    traffic()

    victim = topo.servers[1]
    say(f"kill the server in {victim.name}: health checks take it out of rotation")
    procs[victim.name].kill()
    procs[victim.name].wait()
    took = wait_weight(victim.ip4, 0)
    print(f"   {victim.ip4} at weight 0 after {took:.1f} s (fall=2 x 0.5 s interval)")
    c = traffic()
    assert victim.name not in c, "a connection went to the dead server"
    show(ipvsync("status"))

    say("restart it: back in rotation after rise=2 passing checks")
    procs[victim.name] = victim.serve_whoami(port=80)
    took = wait_weight(victim.ip4, 1)
    print(f"   back at weight 1 after {took:.1f} s")
    traffic()

    say("edit the config (weights 3/1/1, wrr): the daemon sees the file change, no command needed")
    config(cfg, (3, 1, 1), servers, scheduler="wrr")
    took = wait_weight(servers[0], 3)
    print(f"   applied {took:.2f} s after the save")
    show(director.run(["ipvsadm", "-Ln"]))
    traffic(15)

    say("a broken edit: the kernel keeps the last good state, `ipvsync reload` says why (exit 1)")
    before = director.ipvsadm_save()
    config(cfg, (1, 1, 1), servers, broken=True)
    r = ipvsync("reload")
    show(r)
    print(f"   reload exit code {r.returncode}; kernel unchanged: {director.ipvsadm_save() == before}")
    config(cfg, (3, 1, 1), servers, scheduler="wrr")

    say("operator drain for maintenance")
    show(ipvsync("drain", "web", f"{servers[2]}:80"))
    wait_weight(servers[2], 0)
    traffic()
    show(ipvsync("undrain", "web", f"{servers[2]}:80"))

    say("stop the daemon: IPVS and the VIP stay in place (no flush, traffic keeps flowing)")
    daemon.terminate()
    daemon.wait(timeout=30)
    show(director.run(["ip", "-br", "addr", "show", "ipvsync0"]))
    traffic(6)
    say("daemon log (journald fields shown in brackets)")
    out = daemon.stdout.read() if daemon.stdout else ""
    print("   " + "\n   ".join(out.strip().splitlines()[-25:]))
    for h in topo.namespaces:
        h.delete()
    director.delete()
    print("\ndemo finished OK", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
