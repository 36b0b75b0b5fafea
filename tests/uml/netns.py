"""Inside-UML helpers: network namespaces, veth topologies, the who-am-I server, module faults."""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .host import REPO_ROOT, UML_DIR

WHOAMI = UML_DIR / "whoami.py"
NETNS_DIR = Path("/run/netns")
PY_FAST = [sys.executable, "-I", "-S"]  # stdlib-only helpers: skip site (python starts slowly in UML)
MNT_DETACH = 2
RUN_DIR = Path("/run/ipvsync")
MODDIR_FILE = RUN_DIR / "moddir"
UML_MODULES = Path("/usr/lib/uml/modules")
DEFAULT_TIMEOUT = 60.0

# Documentation ranges only (RFC 5737 / RFC 3849).
VIP4 = "192.0.2.1"
VIP6 = "2001:db8:f::1"

Cmd = str | Sequence[str | os.PathLike[str]]

_counter = itertools.count()
_libc = ctypes.CDLL(None, use_errno=True)


def in_uml() -> bool:
    """True inside the harness's UML guest (set by tests/uml/init.sh)."""
    return os.environ.get("IPVSYNC_IN_UML") == "1"


class CommandError(subprocess.CalledProcessError):
    """CalledProcessError whose message includes the command's output."""

    def __str__(self) -> str:
        text = super().__str__()
        for label, data in (("stdout", self.stdout), ("stderr", self.stderr)):
            if data:
                text += f"\n--- {label} ---\n{data.rstrip()}"
        return text


def _argv(cmd: Cmd) -> list[str]:
    if isinstance(cmd, str):
        return ["sh", "-c", cmd]
    return [os.fspath(c) for c in cmd]


def run(cmd: Cmd, check: bool = True, input: str | None = None, timeout: float = DEFAULT_TIMEOUT,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command in the current (root) namespace, capturing text output."""
    proc = subprocess.run(_argv(cmd), input=input, capture_output=True, text=True, timeout=timeout,
                          env=env, stdin=None if input is not None else subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise CommandError(proc.returncode, proc.args, proc.stdout, proc.stderr)
    return proc


@dataclass
class Netns:
    """A named network namespace (hence its own IPVS table). Create with `Netns.create()`."""

    name: str
    procs: list[subprocess.Popen[str]] = field(default_factory=list, repr=False)

    @classmethod
    def create(cls, name: str | None = None) -> Netns:
        """Create a fresh namespace with `lo` up."""
        ns = cls(name or f"t{next(_counter)}")
        run(["ip", "netns", "add", ns.name])
        run(["ip", "-n", ns.name, "link", "set", "lo", "up"])
        return ns

    def argv(self, cmd: Cmd) -> list[str]:
        """The argv that runs `cmd` inside this namespace."""
        return ["ip", "netns", "exec", self.name, *_argv(cmd)]

    def run(self, cmd: Cmd, check: bool = True, input: str | None = None,
            timeout: float = DEFAULT_TIMEOUT, env: dict[str, str] | None = None,
            ) -> subprocess.CompletedProcess[str]:
        """Run `cmd` (argv list, or a string for `sh -c`) in this namespace; text output captured."""
        return run(self.argv(cmd), check=check, input=input, timeout=timeout, env=env)

    def popen(self, cmd: Cmd, **kwargs: object) -> subprocess.Popen[str]:
        """Start `cmd` in this namespace; killed at teardown. Defaults: text, stdout=PIPE, stderr->stdout."""
        opts: dict[str, object] = {
            "stdin": subprocess.DEVNULL, "stdout": subprocess.PIPE, "stderr": subprocess.STDOUT,
            "text": True,
        }
        opts.update(kwargs)
        proc: subprocess.Popen[str] = subprocess.Popen(self.argv(cmd), **opts)  # type: ignore[call-overload]
        self.procs.append(proc)
        return proc

    def ipvsadm_save(self) -> str:
        """`ipvsadm -Sn` of this namespace, lines sorted, newline-terminated ('' if empty)."""
        out = self.run(["ipvsadm", "-Sn"]).stdout
        lines = sorted(ln for ln in out.splitlines() if ln.strip())
        return "".join(ln + "\n" for ln in lines)

    def sysctl(self, **values: str | int) -> None:
        """Set sysctls in this namespace: ns.sysctl(**{"net.ipv4.ip_forward": 1})."""
        self.run(["sysctl", "-qw", *(f"{k}={v}" for k, v in values.items())])

    def delete(self) -> None:
        """Kill its processes (started here or found in it) and delete the namespace."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 3
        for proc in self.procs:
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.05))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for _ in range(50):
            pids = self.pids()
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
        path = NETNS_DIR / self.name
        if _libc.umount2(str(path).encode(), MNT_DETACH) == 0 or not path.exists():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        else:
            run(["ip", "netns", "del", self.name], check=False)

    def pids(self) -> list[int]:
        """Processes whose network namespace is this one (like `ip netns pids`, without a fork)."""
        try:
            ref = os.stat(NETNS_DIR / self.name)
        except FileNotFoundError:
            return []
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    st = os.stat(f"/proc/{entry}/ns/net")
                except OSError:
                    continue
                if (st.st_dev, st.st_ino) == (ref.st_dev, ref.st_ino):
                    found.append(int(entry))
        return found


@dataclass
class Host:
    """A server or client namespace linked to the director by one veth pair."""

    ns: Netns
    index: int
    role: str  # "server" | "client"
    dev: str  # director-side interface name
    ip4: str
    gw4: str
    ip6: str
    gw6: str

    @property
    def name(self) -> str:
        return self.ns.name

    def serve_whoami(self, port: int = 80, udp: bool = False, tcp: bool = True,
                     name: str | None = None, peer: bool = False) -> subprocess.Popen[str]:
        """Start the who-am-I server (answers `name`, default the netns name) on [::]:port."""
        argv = [*PY_FAST, str(WHOAMI), "serve", "--name", name or self.name, "--port", str(port)]
        argv += (["--udp"] if udp else []) + (["--no-tcp"] if not tcp else []) + (["--peer"] if peer else [])
        proc = self.ns.popen(argv)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line.strip() != "ready":
            proc.kill()
            rest = proc.stdout.read()
            raise RuntimeError(f"whoami server in {self.name} failed to start: {line}{rest}")
        return proc

    def ask(self, addr: str, port: int = 80, count: int = 1, udp: bool = False, timeout: float = 3.0,
            source: str | None = None) -> list[str]:
        """`count` fresh connections (or datagrams) to addr:port; one answer a line, '!Error' on failure."""
        argv = [*PY_FAST, str(WHOAMI), "ask", "--count", str(count), "--timeout", str(timeout)]
        argv += (["--udp"] if udp else []) + (["--source", source] if source else []) + [addr, str(port)]
        out = self.ns.run(argv, check=False, timeout=count * timeout + DEFAULT_TIMEOUT).stdout
        return out.splitlines()


@dataclass
class Topology:
    """Director (the test's netns) with veth links to client and real-server namespaces.

    Link i of a role uses a /28 (IPv4) and a /64 (IPv6): the director holds .1 / ::1 (the gateway),
    the peer .2 / ::2 and routes everything via the director. Servers: 198.51.100.16*i/28 and
    2001:db8:1:i::/64; clients: 203.0.113.16*i/28 and 2001:db8:c:i::/64. VIPs (192.0.2.0/24,
    2001:db8:f::/64) are not assigned: that is the code under test's job.
    """

    director: Netns
    servers: list[Host]
    clients: list[Host]

    @property
    def client(self) -> Host:
        return self.clients[0]

    @property
    def namespaces(self) -> list[Netns]:
        return [h.ns for h in self.servers + self.clients]


def build_topology(director: Netns, n_servers: int = 2, n_clients: int = 1) -> Topology:
    """Create client/server namespaces and veth links around `director` (see Topology)."""
    if not 0 <= n_servers <= 16 or not 0 <= n_clients <= 16:
        raise ValueError("at most 16 servers and 16 clients")
    hosts: list[Host] = []
    for role, count, net4, net6, short in (
        ("server", n_servers, "198.51.100", "2001:db8:1", "s"),
        ("client", n_clients, "203.0.113", "2001:db8:c", "c"),
    ):
        for i in range(count):
            ns = Netns(f"{director.name}{short}{i}")
            hosts.append(Host(ns, i, role, f"{'rs' if short == 's' else 'cl'}{i}",
                              f"{net4}.{16 * i + 2}", f"{net4}.{16 * i + 1}",
                              f"{net6}:{i:x}::2", f"{net6}:{i:x}::1"))
    batch = [f"netns add {h.name}" for h in hosts]
    batch += [f"link add {h.dev} netns {director.name} type veth peer name eth0 netns {h.name}"
              for h in hosts]
    try:
        run(["ip", "-b", "-"], input="\n".join(batch[: len(hosts)]) + "\n")
        director.sysctl(**{"net.ipv4.ip_forward": 1, "net.ipv6.conf.all.forwarding": 1})
        run(["ip", "-b", "-"], input="\n".join(batch[len(hosts):]) + "\n")
        dir_batch = []
        for h in hosts:
            dir_batch += [f"addr add {h.gw4}/28 dev {h.dev}", f"addr add {h.gw6}/64 dev {h.dev} nodad",
                          f"link set {h.dev} up"]
            peer = ["link set lo up", f"addr add {h.ip4}/28 dev eth0", f"addr add {h.ip6}/64 dev eth0 nodad",
                    "link set eth0 up", f"route add default via {h.gw4}", f"route add ::/0 via {h.gw6}"]
            run(["ip", "-n", h.name, "-b", "-"], input="\n".join(peer) + "\n")
        if dir_batch:
            run(["ip", "-n", director.name, "-b", "-"], input="\n".join(dir_batch) + "\n")
    except Exception:
        for h in hosts:
            h.ns.delete()
        raise
    return Topology(director, [h for h in hosts if h.role == "server"],
                    [h for h in hosts if h.role == "client"])


# -- module fault injection ---------------------------------------------------------------------


def _loaded_modules() -> set[str]:
    return {line.split()[0] for line in Path("/proc/modules").read_text().splitlines()}


def _rmmod(module: str, wait: float = 20.0) -> None:
    """Unload `module` if loaded, retrying while a deleted netns still holds it."""
    deadline = time.monotonic() + wait
    while module in _loaded_modules():
        proc = run(["rmmod", module], check=False)
        if proc.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"cannot unload {module}: {proc.stderr.strip()}")
        time.sleep(0.2)


def _build_tree(source: Path, exclude: set[str], dest: Path) -> None:
    """A module tree under dest/lib/modules/<ver> of symlinks into `source`, minus `exclude`."""
    version = source.name
    found: dict[str, Path] = {}
    for dirpath, _dirs, files in os.walk(source):
        for f in files:
            stem = f.split(".ko")[0].replace("-", "_")
            if ".ko" in f and stem in exclude:
                found[stem] = Path(dirpath, f).relative_to(source)
    missing = exclude - found.keys()
    if missing:
        raise ValueError(f"no such module(s) in {source}: {sorted(missing)}")
    skipped = set(found.values())
    ancestors = {p for rel in skipped for p in rel.parents if p != Path(".")}
    top = dest / "lib" / "modules" / version
    top.mkdir(parents=True)
    for name in ("modules.order", "modules.builtin", "modules.builtin.modinfo"):
        if (source / name).exists():
            shutil.copy2(source / name, top / name)

    def fill(rel: Path) -> None:
        for entry in (source / rel).iterdir():
            child = rel / entry.name
            if child in skipped or (rel == Path(".") and entry.name.startswith("modules.")):
                continue
            if child in ancestors:
                (top / child).mkdir()
                fill(child)
            else:
                (top / child).symlink_to(entry)

    fill(Path("."))
    run(["depmod", "-b", str(dest), version])


_excluded: list[str] = []


@contextlib.contextmanager
def module_tree_without(module_name: str) -> Iterator[Path]:
    """Unload `module_name` and make on-demand module loading fail for it (ENOENT) until exit.

    Yields the faulty tree's base dir (what `modprobe -d` gets). Nests: inner trees also lack
    the modules excluded by outer ones.
    """
    if not in_uml():
        raise RuntimeError("module_tree_without() only works inside the UML harness")
    module = module_name.replace("-", "_")
    previous = MODDIR_FILE.read_text().strip()
    version = os.uname().release
    dest = Path(tempfile.mkdtemp(prefix="modtree-", dir=RUN_DIR))
    _excluded.append(module)
    try:
        _rmmod(module)
        _build_tree(UML_MODULES / version, set(_excluded), dest)
        MODDIR_FILE.write_text(f"{dest}\n")
        yield dest
    finally:
        MODDIR_FILE.write_text(f"{previous}\n")
        _excluded.remove(module)
        shutil.rmtree(dest, ignore_errors=True)


# -- ipvsync CLI --------------------------------------------------------------------------------


class IpvsyncCmd:
    """Runs `python -m ipvsync --state-dir S --runtime-dir R ARGS` in a namespace.

    S and R are per-namespace dirs under the test's tmp_path, so two "directors" never share state.
    """

    def __init__(self, base: Path) -> None:
        self.base = base

    def state_dir(self, netns: Netns) -> Path:
        return self._dir(netns, "state")

    def runtime_dir(self, netns: Netns) -> Path:
        return self._dir(netns, "run")

    def _dir(self, netns: Netns, kind: str) -> Path:
        path = self.base / f"ipvsync-{netns.name}" / kind
        path.mkdir(parents=True, exist_ok=True)
        return path

    def argv(self, netns: Netns, *args: str | os.PathLike[str]) -> list[str]:
        """The command line (without the `ip netns exec` prefix)."""
        return [sys.executable, "-m", "ipvsync", "--state-dir", str(self.state_dir(netns)),
                "--runtime-dir", str(self.runtime_dir(netns)), *(os.fspath(a) for a in args)]

    def __call__(self, netns: Netns, *args: str | os.PathLike[str], check: bool = False,
                 input: str | None = None, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run to completion; check=False by default because exit codes are usually under test."""
        return netns.run(self.argv(netns, *args), check=check, input=input, timeout=timeout,
                         env=self.env())

    def popen(self, netns: Netns, *args: str | os.PathLike[str], **kwargs: object) -> subprocess.Popen[str]:
        """Start (e.g. the daemon) in the background; killed with the namespace at teardown."""
        kwargs.setdefault("env", self.env())
        return netns.popen(self.argv(netns, *args), **kwargs)

    @staticmethod
    def env() -> dict[str, str]:
        """Environment with the checkout importable."""
        env = dict(os.environ)
        parts = [str(REPO_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
        env["PYTHONPATH"] = os.pathsep.join(parts)
        return env
