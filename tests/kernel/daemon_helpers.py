"""Helpers for the daemon (issue 4) kernel tests: a running `ipvsync run`, traffic, kernel oracles.

Test side (inside UML, in the pytest process):
  `RunningDaemon`  the real `python -m ipvsync run` in the director netns, its log (stderr) in a file,
                   its control socket talked to in-process (ipvsync.control.request), config writes
                   in every editor style (in place, rename-over, ..data symlink swap).
  `start_servers`, `Load`, `Holder`  the helper processes below, started in the topology's netns.
  `ipvs_weights`, `vips`, `ProcIpvs`  kernel oracles (ipvsadm -Sn, ip addr, /proc/PID/net/ip_vs).

Script side (`python -I -S daemon_helpers.py serve|load|hold ...`, stdlib only, in a netns):
  serve  TCP server on [::]:PORT: greets each connection with "NAME\\n", answers every line with
         "NAME\\n", closes on EOF (so connections can be held open through the VIP).
  load   a bounded loop of NEW TCP connections (connect, read the greeting, close), counted; stops
         when the stop file appears or at --max-seconds/--max-count; prints "first" after the first
         answer and a JSON summary at the end.
  hold   one connection held open: stdin "ping" -> one answer line; "rst" -> close with RST.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import selectors
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
REPO = HERE.parents[2]
PY_FAST = [sys.executable, "-I", "-S"]
RUNNING = "ipvsync running:"
RELOADED = "config reloaded"
REJECTED = "config rejected"


# ================================================================================================
# script side (stdlib only)
# ================================================================================================


def _serve(name: str, port: int) -> None:
    sel = selectors.DefaultSelector()
    ls = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    ls.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("::", port))
    ls.listen(1024)
    ls.setblocking(False)
    sel.register(ls, selectors.EVENT_READ, None)
    greeting = f"{name}\n".encode()
    print("ready", flush=True)
    while True:
        for key, _ in sel.select():
            if key.data is None:
                try:
                    conn, _addr = ls.accept()
                except OSError:
                    continue
                conn.setblocking(False)
                try:
                    conn.send(greeting)
                except OSError:
                    conn.close()
                    continue
                sel.register(conn, selectors.EVENT_READ, "c")
                continue
            conn = key.fileobj
            assert isinstance(conn, socket.socket)
            try:
                data = conn.recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                sel.unregister(conn)
                conn.close()
                continue
            with contextlib.suppress(OSError):
                conn.send(greeting * data.count(b"\n"))


def _read_line(sock: socket.socket) -> str:
    buf = b""
    while b"\n" not in buf:
        chunk = sock.recv(256)
        if not chunk:
            break
        buf += chunk
    return buf.decode(errors="replace").strip()


def _load(host: str, port: int, stop: str, max_seconds: float, max_count: int, timeout: float,
          pause: float) -> None:
    ok = fail = slow = 0
    by: dict[str, int] = {}
    failures: list[str] = []
    max_lat = 0.0
    first = True
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    t_start = time.monotonic()
    end = t_start + max_seconds
    while time.monotonic() < end and ok + fail < max_count and not os.path.exists(stop):
        t0 = time.monotonic()
        try:
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.settimeout(timeout)
                s.connect((host, port))
                name = _read_line(s)
            if not name:
                raise ConnectionError("connection closed without an answer")
            ok += 1
            by[name] = by.get(name, 0) + 1
            if first:
                print("first", flush=True)
                first = False
        except OSError as exc:
            fail += 1
            if len(failures) < 50:
                failures.append(f"{time.time():.3f} {type(exc).__name__}: {exc}")
        lat = time.monotonic() - t0
        max_lat = max(max_lat, lat)
        if lat > 0.9:  # a SYN retransmission (1 s RTO) hides a dropped packet
            slow += 1
        if pause:
            time.sleep(pause)
    print(json.dumps({"ok": ok, "fail": fail, "slow": slow, "by": by, "failures": failures,
                      "max_latency": round(max_lat, 3), "seconds": round(time.monotonic() - t_start, 2)}),
          flush=True)


def _hold(host: str, port: int, timeout: float) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect((host, port))
        print(_read_line(s) or "!EOF", flush=True)
    except OSError as exc:
        print(f"!{type(exc).__name__}", flush=True)
        return
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "ping":
            try:
                s.sendall(b"ping\n")
                print(_read_line(s) or "!EOF", flush=True)
            except OSError as exc:
                print(f"!{type(exc).__name__}", flush=True)
        elif cmd == "rst":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
            print("closed", flush=True)
            return


def _script_main(argv: list[str]) -> int:
    import argparse

    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--name", required=True)
    s.add_argument("--port", type=int, default=80)
    ld = sub.add_parser("load")
    ld.add_argument("--stop", required=True)
    ld.add_argument("--max-seconds", type=float, default=300.0)
    ld.add_argument("--max-count", type=int, default=200000)
    ld.add_argument("--timeout", type=float, default=3.0)
    ld.add_argument("--pause", type=float, default=0.0)
    ld.add_argument("host")
    ld.add_argument("port", type=int)
    h = sub.add_parser("hold")
    h.add_argument("--timeout", type=float, default=5.0)
    h.add_argument("host")
    h.add_argument("port", type=int)
    a = p.parse_args(argv)
    if a.cmd == "serve":
        _serve(a.name, a.port)
    elif a.cmd == "load":
        _load(a.host, a.port, a.stop, a.max_seconds, a.max_count, a.timeout, a.pause)
    else:
        _hold(a.host, a.port, a.timeout)
    return 0


if __name__ == "__main__":
    sys.exit(_script_main(sys.argv[1:]))


# ================================================================================================
# test side
# ================================================================================================


def wait_for(cond: Any, timeout: float, step: float = 0.02, what: str = "condition") -> float:
    """Poll `cond()` until truthy; returns the seconds it took. AssertionError on timeout."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    while True:
        if cond():
            return time.monotonic() - t0
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(step)


def _readline(proc: subprocess.Popen[str], timeout: float) -> str:
    """One stdout line of `proc` within `timeout` ('' on EOF)."""
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    try:
        if not sel.select(timeout):
            raise AssertionError(f"no output from {proc.args} within {timeout:g} s")
    finally:
        sel.close()
    return proc.stdout.readline()


def start_servers(hosts: list[Any], port: int = 80) -> None:
    """The greeting/echo server on each host (named after its netns)."""
    for h in hosts:
        proc = h.ns.popen([*PY_FAST, str(HERE), "serve", "--name", h.name, "--port", str(port)])
        line = _readline(proc, 60)
        if line.strip() != "ready":
            raise RuntimeError(f"server in {h.name} failed: {line}{proc.stdout.read() if proc.stdout else ''}")


class Load:
    """Continuous NEW connections from `client` to host:port until stop()."""

    def __init__(self, client: Any, host: str, port: int, base: Path, pause: float = 0.003,
                 max_seconds: float = 300.0, max_count: int = 200000) -> None:
        self.stop_file = base / f"stop-load-{client.name}-{port}-{time.monotonic_ns()}"
        self.proc = client.ns.popen([*PY_FAST, str(HERE), "load", "--stop", str(self.stop_file),
                                     "--max-seconds", str(max_seconds), "--max-count", str(max_count),
                                     "--pause", str(pause), host, str(port)])
        line = _readline(self.proc, 60)
        if line.strip() != "first":
            raise AssertionError(f"no traffic to {host}:{port}: {line}{self.proc.stdout.read()}")  # type: ignore
        self.result: dict[str, Any] | None = None

    def stop(self, finish: bool = False) -> dict[str, Any]:
        """Stop now (or, with finish=True, let a --max-count loop end by itself) and return the counts."""
        if self.result is None:
            if not finish:
                self.stop_file.touch()
            out, _ = self.proc.communicate(timeout=60)
            self.result = json.loads(out.strip().splitlines()[-1])
        return self.result


class Holder:
    """One TCP connection from `client` through host:port, held open."""

    def __init__(self, client: Any, host: str, port: int) -> None:
        self.proc = client.ns.popen([*PY_FAST, str(HERE), "hold", host, str(port)], stdin=subprocess.PIPE)
        self.server = _readline(self.proc, 60).strip()
        assert self.server and not self.server.startswith("!"), f"cannot hold a connection: {self.server}"

    def ping(self) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write("ping\n")
        self.proc.stdin.flush()
        return _readline(self.proc, 30).strip()

    def reset(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("rst\n")
        self.proc.stdin.flush()
        assert _readline(self.proc, 30).strip() == "closed"
        self.proc.wait(timeout=10)


# -- kernel oracles ------------------------------------------------------------------------------


_SAVE_DEST = re.compile(r"^-a -([tuf]) (\S+) -r (\S+) .*-w (\d+)")
_SAVE_SVC = re.compile(r"^-A -([tuf]) (\S+)")


def ipvs_weights(netns: Any) -> dict[str, dict[str, int]]:
    """`ipvsadm -Sn` as {'t 192.0.2.10:80': {'198.51.100.2:80': weight}}."""
    out: dict[str, dict[str, int]] = {}
    for line in netns.ipvsadm_save().splitlines():
        m = _SAVE_SVC.match(line)
        if m:
            out.setdefault(f"{m[1]} {m[2]}", {})
            continue
        m = _SAVE_DEST.match(line)
        if m:
            out.setdefault(f"{m[1]} {m[2]}", {})[m[3]] = int(m[4])
    return out


def vips(netns: Any, dev: str = "ipvsync0") -> set[str]:
    """Addresses on `dev` (empty set if it does not exist)."""
    proc = netns.run(["ip", "-br", "addr", "show", "dev", dev], check=False)
    if proc.returncode != 0:
        return set()
    parts = proc.stdout.split()
    return {p.split("/")[0] for p in parts[2:] if not p.startswith("fe80:")}


def link_up(netns: Any, dev: str = "ipvsync0") -> bool:
    proc = netns.run(["ip", "-o", "link", "show", "dev", dev], check=False)
    return proc.returncode == 0 and bool(re.search(r"<[^>]*\bUP\b", proc.stdout))


def service_conns(netns: Any, key: str) -> int:
    """Total connections counter (`ipvsadm -Ln --stats`) of service 'TCP 192.0.2.10:80'."""
    for line in netns.run(["ipvsadm", "-Ln", "--stats", "--exact"]).stdout.splitlines():
        parts = line.split()
        if len(parts) >= 3 and f"{parts[0]} {parts[1]}" == key:
            return int(parts[2])
    raise AssertionError(f"no service {key} in ipvsadm -Ln --stats")


class ProcIpvs:
    """Cheap polling of a netns' IPVS table via /proc/PID/net/ip_vs (no fork)."""

    def __init__(self, pid: int) -> None:
        self.path = f"/proc/{pid}/net/ip_vs"

    def services(self) -> int:
        try:
            with open(self.path) as fh:
                return sum(1 for line in fh if line[:4] in ("TCP ", "UDP ", "FWM ", "SCTP"))
        except OSError:
            return -1


# -- the daemon ----------------------------------------------------------------------------------


def keep_artifacts(name: str, *daemons: RunningDaemon) -> None:
    """Copy the daemons' logs to $IPVSYNC_TEST_ARTIFACTS (if set): evidence and timings to read later."""
    dest = os.environ.get("IPVSYNC_TEST_ARTIFACTS")
    if not dest:
        return
    os.makedirs(dest, exist_ok=True)
    for d in daemons:
        with contextlib.suppress(OSError):
            Path(dest, f"{name}-{d.base.name}.log").write_text(d.log(whole=True))


class RunningDaemon:
    """`python -m ipvsync run` in `netns`, with its config in its own directory."""

    def __init__(self, netns: Any, base: Path, name: str = "d") -> None:
        self.netns = netns
        self.base = base / f"ipvsync-{name}"
        self.confdir = self.base / "etc"
        self.config = self.confdir / "ipvsync.yaml"
        self.state_dir = self.base / "state"
        self.runtime_dir = self.base / "run"
        self.log_path = self.base / "daemon.log"
        for d in (self.confdir, self.state_dir, self.runtime_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[str] | None = None
        self.offset = 0
        self._n = 0
        self.start_seconds = 0.0

    # -- config writes ---------------------------------------------------------------------------

    @staticmethod
    def text(yaml: str) -> str:
        return textwrap.dedent(yaml).lstrip("\n")

    def write(self, yaml: str, how: str = "rename") -> None:
        """Write the config: 'rename' (temp + mv, like vim), 'inplace' (truncate + write, like cp/sed)."""
        data = self.text(yaml).encode()
        if how == "inplace":
            with open(self.config, "wb") as fh:
                fh.write(data)
        elif how == "rename":
            self._n += 1
            tmp = self.confdir / f".ipvsync.yaml.{self._n}.tmp"
            tmp.write_bytes(data)
            os.replace(tmp, self.config)
        else:
            raise ValueError(how)

    def line_of(self, needle: str) -> int:
        for i, line in enumerate(self.config.read_text().splitlines(), 1):
            if needle in line:
                return i
        raise AssertionError(f"{needle!r} not in the config")

    # -- process ---------------------------------------------------------------------------------

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "ipvsync", "--state-dir", str(self.state_dir), "--runtime-dir",
                str(self.runtime_dir), *args]

    @staticmethod
    def env() -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        return env

    def start(self, *extra: str, wait: bool = True, timeout: float = 120.0) -> None:
        with open(self.log_path, "a") as fh:
            fh.write(f"=== test: start {' '.join(extra)} at {time.time():.3f}\n")
            self.offset = fh.tell()
        log = open(self.log_path, "a")  # noqa: SIM115 - handed to the child
        t0 = time.monotonic()
        try:
            self.proc = self.netns.popen(self.argv("run", "-c", str(self.config), *extra), stdout=log,
                                         stderr=subprocess.STDOUT, env=self.env())
        finally:
            log.close()
        if wait:
            self.wait_running(timeout)
            self.start_seconds = time.monotonic() - t0

    def wait_running(self, timeout: float = 120.0) -> None:
        def up() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"the daemon exited with {self.proc.returncode}:\n{self.log()}")
            return RUNNING in self.log()

        wait_for(up, timeout, 0.05, "the daemon to start")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def send(self, sig: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
        return self.proc.wait(timeout=timeout)

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    # -- log ---------------------------------------------------------------------------------------

    def log(self, whole: bool = False) -> str:
        """This run's log (or the whole file)."""
        with open(self.log_path, errors="replace") as fh:
            if not whole:
                fh.seek(self.offset)
            return fh.read()

    def count(self, needle: str) -> int:
        return sum(1 for line in self.log().splitlines() if needle in line)

    def reloads(self) -> int:
        return sum(1 for line in self.log().splitlines() if line.startswith(RELOADED))

    def rejections(self) -> int:
        """Rejected reloads: invalid files ('config rejected (N errors)') and refusals ('config rejected: refusing')."""
        return sum(1 for line in self.log().splitlines()
                   if line.startswith((REJECTED + " (", REJECTED + ": refusing", REJECTED + ": cannot read")))

    def wait_reloads(self, n: int, timeout: float = 30.0) -> float:
        return wait_for(lambda: self.reloads() >= n, timeout, 0.01, f"{n} 'config reloaded' lines:\n{self.log()}")

    # -- control socket ----------------------------------------------------------------------------

    def request(self, payload: dict[str, Any], timeout: float = 120.0) -> dict[str, Any]:
        from ipvsync.control import request

        return request(str(self.runtime_dir), payload, timeout=timeout)

    def reload(self) -> dict[str, Any]:
        return self.request({"cmd": "reload"})

    def pending_ops(self) -> list[Any]:
        """The daemon's own plan against the kernel now (empty when converged)."""
        ans = self.request({"cmd": "plan"})
        assert ans.get("ok"), ans
        return list(ans["operations"])

    def cli(self, *args: str, timeout: float = 180.0) -> subprocess.CompletedProcess[str]:
        """The real `python -m ipvsync ARGS -c CONFIG` (fresh interpreter) in the netns."""
        cmd, *rest = args
        return self.netns.run(self.argv(cmd, "-c", str(self.config), *rest), check=False, env=self.env(),
                              timeout=timeout)


def daemon_fixture() -> Any:
    """`daemon` fixture factory for the test modules: make(name='d') -> RunningDaemon, logs kept."""
    import pytest

    @pytest.fixture
    def make_daemon(netns: Any, tmp_path: Path, request: Any) -> Any:
        made: list[RunningDaemon] = []

        def make(name: str = "d", ns: Any = None) -> RunningDaemon:
            made.append(RunningDaemon(ns or netns, tmp_path, name))
            return made[-1]

        yield make
        keep_artifacts(request.node.name, *made)
        for d in made:
            if d.alive():
                with contextlib.suppress(Exception):
                    d.kill9()

    return make_daemon
