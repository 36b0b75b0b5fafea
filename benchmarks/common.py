"""Shared pieces of the benchmark scripts: config generators (ipvsync YAML, keepalived.conf,
`ipvsadm -R` input) and inside-UML helpers (namespaces, a cheap IPVS poller, CPU/RSS readers).

Addresses (benchmark-only ranges): service i (0..N-1) has VIP 198.18.(i//250).(i%250+1) port 80;
its real server j is 198.19.(k//250).(k%250+1):8080 with k = i*10 + j.
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

KEEPALIVED = "/usr/sbin/keepalived"
PYTHON = os.environ.get("BENCH_PYTHON", sys.executable)
OUT = Path(os.environ.get("BENCH_OUT", "."))
TMP = Path(os.environ.get("TMPDIR", "/tmp"))
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


# ------------------------------------------------------------------------------------ addresses

def vip(i: int) -> str:
    return f"198.18.{i // 250}.{i % 250 + 1}"


def rs(i: int, j: int, per: int = 10) -> str:
    k = i * per + j
    return f"198.19.{k // 250}.{k % 250 + 1}"


def edited_weight(i: int, j: int) -> int:
    """The weight the edit benchmarks give one real server (default weight 1)."""
    return 7


# ------------------------------------------------------------------------------------ generators

def _health_yaml(health: dict | None, indent: str) -> list[str]:
    if not health:
        return []
    return [f"{indent}health: {{{', '.join(f'{k}: {v}' for k, v in health.items())}}}"]


def service_yaml(i: int, per: int, weights: dict[tuple[int, int], int]) -> list[str]:
    lines = [f"  svc-{i}:", f"    vip: {vip(i)}", "    port: 80", "    real_servers:"]
    for j in range(per):
        w = weights.get((i, j))
        lines.append(f"      - {{address: {rs(i, j, per)}, port: 8080, weight: {w}}}" if w is not None
                     else f"      - {rs(i, j, per)}:8080")
    return lines


def ipvsync_yaml(n: int, per: int = 10, weights: dict[tuple[int, int], int] | None = None,
                 health: dict | None = None, vip_mode: str = "managed", extra: str = "") -> str:
    weights = weights or {}
    lines = ["version: 1", "vip_interface: ipvsync0", f"vip_mode: {vip_mode}", "defaults:",
             "  scheduler: wlc", "  forward: nat"]
    lines += _health_yaml(health, "  ")
    lines += [extra] if extra else []
    lines.append("services:")
    for i in range(n):
        lines += service_yaml(i, per, weights)
    return "\n".join(lines) + "\n"


def ipvsync_split(directory: Path, n: int, per_file: int, per: int = 10,
                  weights: dict[tuple[int, int], int] | None = None, vip_mode: str = "managed") -> Path:
    """Main file with `include: [conf.d/*.yaml]` and n/per_file files of per_file services each."""
    weights = weights or {}
    confd = directory / "conf.d"
    confd.mkdir(parents=True, exist_ok=True)
    main = directory / "ipvsync.yaml"
    main.write_text("version: 1\nvip_interface: ipvsync0\n"
                    f"vip_mode: {vip_mode}\ninclude: [conf.d/*.yaml]\n"
                    "defaults:\n  scheduler: wlc\n  forward: nat\nservices: {}\n")
    for f in range(n // per_file):
        write_split_file(confd, f, per_file, per, weights)
    return main


def split_file(confd: Path, f: int) -> Path:
    return confd / f"part-{f:03d}.yaml"


def write_split_file(confd: Path, f: int, per_file: int, per: int, weights: dict[tuple[int, int], int]) -> Path:
    lines = ["services:"]
    for i in range(f * per_file, (f + 1) * per_file):
        lines += service_yaml(i, per, weights)
    path = split_file(confd, f)
    atomic_write(path, "\n".join(lines) + "\n")
    return path


def keepalived_conf(n: int, per: int = 10, weights: dict[tuple[int, int], int] | None = None,
                    check: dict | None = None) -> str:
    """virtual_server blocks; real servers without checkers (always alive) unless `check` is given:
    {"delay_loop": 10, "connect_timeout": 3, "retry": 2, "inhibit": True}."""
    weights = weights or {}
    out = ["global_defs {", "  router_id ipvsync-bench", "}", ""]
    for i in range(n):
        out += [f"virtual_server {vip(i)} 80 {{", "  lb_algo wlc", "  lb_kind NAT", "  protocol TCP"]
        if check:
            out.append(f"  delay_loop {check['delay_loop']}")
        for j in range(per):
            out.append(f"  real_server {rs(i, j, per)} 8080 {{")
            out.append(f"    weight {weights.get((i, j), 1)}")
            if check:
                if check.get("inhibit"):
                    out.append("    inhibit_on_failure")
                out += ["    TCP_CHECK {", f"      connect_timeout {check['connect_timeout']}",
                        f"      retry {check.get('retry', 1)}", "    }"]
            out.append("  }")
        out += ["}", ""]
    return "\n".join(out)


def ipvsadm_restore(n: int, per: int = 10) -> str:
    out = []
    for i in range(n):
        out.append(f"-A -t {vip(i)}:80 -s wlc")
        out += [f"-a -t {vip(i)}:80 -r {rs(i, j, per)}:8080 -m -w 1" for j in range(per)]
    return "\n".join(out) + "\n"


def atomic_write(path: Path, text: str) -> None:
    """Write like an editor does: temp file in the same dir, then rename over."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------ namespaces

def sh(cmd: list[str] | str, check: bool = True, **kw) -> subprocess.CompletedProcess[str]:
    argv = ["sh", "-c", cmd] if isinstance(cmd, str) else cmd
    p = subprocess.run(argv, capture_output=True, text=True, **kw)
    if check and p.returncode != 0:
        raise RuntimeError(f"{argv} -> {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


_ns_counter = iter(range(1000))


def netns(prefix: str = "b") -> str:
    name = f"{prefix}{next(_ns_counter)}"
    sh(["ip", "netns", "add", name])
    sh(["ip", "-n", name, "link", "set", "lo", "up"])
    return name


def nsexec(ns: str, argv: list[str]) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


def del_netns(ns: str) -> None:
    sh(["ip", "netns", "pids", ns], check=False)
    for pid in sh(["ip", "netns", "pids", ns], check=False).stdout.split():
        try:
            os.kill(int(pid), 9)
        except ProcessLookupError:
            pass
    time.sleep(0.2)
    sh(["ip", "netns", "del", ns], check=False)


@contextmanager
def in_netns(ns: str) -> Iterator[None]:
    """Switch this thread into `ns` (sockets made inside stay bound to it), then back."""
    me = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns")
        yield
    finally:
        _libc.setns(me, CLONE_NEWNET)
        os.close(me)
        os.close(target)


def ipvs_socket(ns: str):
    """An IPVS generic-netlink socket bound to `ns` (ipvsync's own stdlib codec)."""
    from ipvsync.kernel.ipvs import IpvsSocket

    with in_netns(ns):
        return IpvsSocket()


def service_key(i: int):
    from ipvsync.model import ServiceKey

    fields = ServiceKey.__dataclass_fields__
    kw = {"family": 2, "protocol": 6, "address": vip(i), "port": 80, "fwmark": 0}
    return ServiceKey(**{k: v for k, v in kw.items() if k in fields})


def dump(ns: str) -> dict:
    """Every service with its real servers in `ns` (generic netlink; /proc/net/ip_vs is not used:
    in this kernel its seq_file output lost one service of 1000 in a test read)."""
    sock = ipvs_socket(ns)
    try:
        return sock.dump()
    finally:
        sock.close()


def count_table(ns: str) -> tuple[int, int]:
    """(services, real servers) in `ns`."""
    d = dump(ns)
    return len(d), sum(len(s.dests) for s in d.values())


def weights_in(ns: str) -> list[int]:
    """Weight of every real server in `ns`."""
    return [dd.attrs.weight for s in dump(ns).values() for dd in s.dests.values()]


# ------------------------------------------------------------------------------------ processes

CLK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime+stime of a process (all its threads), seconds."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for ln in fh:
            if ln.startswith("VmRSS:"):
                return int(ln.split()[1]) / 1024
    return 0.0


def children(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as fh:
                    if int(fh.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(d))
            except OSError:
                pass
    return out


def ipvsync_argv(ns: str, work: Path, *args: str) -> list[str]:
    state, run = work / "state", work / "run"
    state.mkdir(parents=True, exist_ok=True)
    run.mkdir(parents=True, exist_ok=True)
    return nsexec(ns, [PYTHON, "-m", "ipvsync", "--state-dir", str(state), "--runtime-dir", str(run), *args])


def keepalived_argv(ns: str, conf: Path, work: Path, extra: tuple[str, ...] = ()) -> list[str]:
    work.mkdir(parents=True, exist_ok=True)
    return nsexec(ns, [KEEPALIVED, "-n", "-l", "-D", "-C", "--no-syslog", "-f", str(conf),
                       "-p", str(work / "keepalived.pid"), "-c", str(work / "checkers.pid"),
                       "-r", str(work / "vrrp.pid"), *extra])


def timed(argv: list[str], **kw) -> tuple[float, subprocess.CompletedProcess[str]]:
    t0 = time.perf_counter()
    p = subprocess.run(argv, capture_output=True, text=True, **kw)
    return time.perf_counter() - t0, p


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


# ------------------------------------------------------------------------------------ results

def environment() -> dict[str, str]:
    def ver(argv: list[str]) -> str:
        try:
            p = subprocess.run(argv, capture_output=True, text=True)
            return (p.stdout + p.stderr).strip().splitlines()[0]
        except (OSError, IndexError):
            return "?"

    from ipvsync import __version__

    marker = REPO / ".bench-rev"
    rev = marker.read_text().strip() if marker.exists() else "working tree " + subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    return {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "kernel": platform.release(),
            "machine": platform.machine(), "python": sys.version.split()[0], "ipvsync": f"{__version__} ({rev})",
            "keepalived": ver([KEEPALIVED, "--version"]), "ipvsadm": ver(["ipvsadm", "--version"])}


def save(name: str, data: dict) -> Path:
    data = {"env": environment(), **data}
    path = OUT / f"{name}.json"
    path.write_text(json.dumps(data, indent=1) + "\n")
    print(json.dumps(data, indent=1))
    return path


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)
