"""Helper processes for the health-check kernel tests (stdlib only; run in a netns with `python -I -S`).

    health_servers.py serve --name NAME --dir DIR [--http PORT] [--dns PORT] [--udp PORT]
        One process, prints "ready" once every socket is bound ([::], dual stack). Behaviour is read
        from files in DIR on every request, so a test flips it by writing a file:
          http_status  HTTP status code to answer (default 200)
          http_body    HTTP body (default "OK NAME\\n")
          dns_mode     ok | nxdomain | refused | servfail | empty (NOERROR, no answer); default ok
          udp_reply    reply to every datagram (default "pong NAME"); "silent" = no reply
    health_servers.py weights [--every 0.02]
        Polls /proc/net/ip_vs of its netns; prints "MONOTONIC JSON" whenever the table changes, JSON
        being {"TCP 192.0.2.10:80": {"198.51.100.2:80": weight, ...}, ...}. CLOCK_MONOTONIC is the
        same in every process, so the test can compare these times with its own. "MONOTONIC GAP S"
        reports a poll that came S seconds late (a starved machine: timeouts fire where they should not).
    health_servers.py ask-http HOST PORT [--count N] [--timeout S]
        N fresh HTTP/1.0 GETs; prints the first body line of each answer, or "!ErrorName".
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

# -- servers -----------------------------------------------------------------------------------------


def _read(path: Path, default: str) -> str:
    try:
        return path.read_text().strip() or default
    except OSError:
        return default


def _http_conn(conn: socket.socket, name: str, d: Path) -> None:
    with conn:
        conn.settimeout(5.0)
        buf = b""
        try:
            while b"\r\n\r\n" not in buf and len(buf) < 65536:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                buf += chunk
            status = int(_read(d / "http_status", "200"))
            try:
                body = (d / "http_body").read_bytes()
            except OSError:
                body = f"OK {name}\n".encode()
            head = (f"HTTP/1.1 {status} X\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
                    "Connection: close\r\n\r\n").encode()
            conn.sendall(head + body)
        except OSError:
            pass


RCODES = {"ok": 0, "empty": 0, "servfail": 2, "nxdomain": 3, "refused": 5}


def dns_answer(query: bytes, mode: str) -> bytes | None:
    """A reply to a one-question query: A 192.0.2.53, AAAA 2001:db8::53, SOA (root-ish), by `mode`."""
    if len(query) < 17:
        return None
    qid, flags = struct.unpack("!HH", query[:4])
    off = 12
    while off < len(query) and query[off] != 0:
        off += 1 + query[off]
    off += 1
    if off + 4 > len(query):
        return None
    qtype = struct.unpack("!H", query[off:off + 2])[0]
    qsection = query[12:off + 4]
    rcode = RCODES.get(mode, 0)
    rdata = None
    if mode == "ok":
        if qtype == 1:
            rdata = socket.inet_pton(socket.AF_INET, "192.0.2.53")
        elif qtype == 28:
            rdata = socket.inet_pton(socket.AF_INET6, "2001:db8::53")
        elif qtype == 6:
            rdata = b"\x00\x00" + struct.pack("!IIIII", 1, 3600, 600, 86400, 60)
    answers = b""
    if rdata is not None:
        answers = b"\xc0\x0c" + struct.pack("!HHIH", qtype, 1, 60, len(rdata)) + rdata
    rflags = 0x8000 | (flags & 0x7900) | 0x0400 | rcode  # QR, opcode+RD copied, AA
    return struct.pack("!HHHHHH", qid, rflags, 1, 1 if answers else 0, 0, 0) + qsection + answers


def serve(name: str, d: Path, http: int | None, dns: int | None, udp: int | None) -> None:
    sel = selectors.DefaultSelector()
    for port, kind, role in ((http, socket.SOCK_STREAM, "http"), (dns, socket.SOCK_DGRAM, "dns"),
                             (udp, socket.SOCK_DGRAM, "udp")):
        if port is None:
            continue
        sock = socket.socket(socket.AF_INET6, kind)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("::", port))
        if kind == socket.SOCK_STREAM:
            sock.listen(128)
        sel.register(sock, selectors.EVENT_READ, role)
    print("ready", flush=True)
    while True:
        for key, _ in sel.select():
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                if key.data == "http":
                    conn, _addr = sock.accept()
                    threading.Thread(target=_http_conn, args=(conn, name, d), daemon=True).start()
                    continue
                data, addr = sock.recvfrom(4096)
                if key.data == "dns":
                    reply = dns_answer(data, _read(d / "dns_mode", "ok"))
                else:
                    text = _read(d / "udp_reply", f"pong {name}")
                    reply = None if text == "silent" else text.encode()
                if reply is not None:
                    sock.sendto(reply, addr)
            except OSError:
                continue


# -- IPVS table watcher ---------------------------------------------------------------------------------


def _hexaddr(text: str) -> str:
    addr, port = text.rsplit(":", 1)
    if len(addr) == 8:
        ip = socket.inet_ntop(socket.AF_INET, bytes.fromhex(addr))
    else:
        ip = "[" + socket.inet_ntop(socket.AF_INET6, bytes.fromhex(addr.replace(":", ""))) + "]"
    return f"{ip}:{int(port, 16)}"


def ipvs_table(text: str) -> dict[str, dict[str, int]]:
    """/proc/net/ip_vs -> {"TCP 192.0.2.10:80": {"198.51.100.2:80": weight}}."""
    table: dict[str, dict[str, int]] = {}
    current: dict[str, int] | None = None
    for line in text.splitlines()[3:]:
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "->":
            if current is not None and len(parts) >= 4:
                current[_hexaddr(parts[1])] = int(parts[3])
        elif parts[0] in ("TCP", "UDP", "SCTP"):
            current = table.setdefault(f"{parts[0]} {_hexaddr(parts[1])}", {})
        elif parts[0] == "FWM":
            current = table.setdefault(f"FWM {int(parts[1], 16)}", {})
        else:
            current = None
    return table


def weights(every: float) -> None:
    last = None
    print("ready", flush=True)
    prev = time.monotonic()
    while True:
        try:
            text = Path("/proc/net/ip_vs").read_text()
        except OSError:
            text = ""
        now = time.monotonic()
        if now - prev > 0.5:  # this process did not run for a while: the (UML) machine is starved
            print(f"{now:.4f} GAP {now - prev:.3f}", flush=True)
        prev = now
        table = ipvs_table(text)
        if table != last:
            last = table
            print(f"{now:.4f} {json.dumps(table, sort_keys=True)}", flush=True)
        time.sleep(every)


# -- test side (imported by tests/kernel/test_health_*.py inside UML) ------------------------------------

HERE = Path(__file__).resolve()
REPO = HERE.parents[2]
PY_FAST = [sys.executable, "-I", "-S"]


class WeightWatch:
    """Every change of the director's IPVS table, timestamped (CLOCK_MONOTONIC) by a helper in its netns."""

    def __init__(self, ns: Any) -> None:
        self.proc = ns.popen([*PY_FAST, str(HERE), "weights"])
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"weights watcher did not start: {line}{self.proc.stdout.read()}")
        self.history: list[tuple[float, dict[str, dict[str, int]]]] = []
        self.gaps: list[tuple[float, float]] = []  # (when, seconds the poller was held up)
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            t, _, text = line.partition(" ")
            if text.startswith("GAP "):
                self.gaps.append((float(t), float(text.split()[1])))
                continue
            with self.cond:
                self.history.append((float(t), json.loads(text)))
                self.cond.notify_all()

    def table(self) -> dict[str, dict[str, int]]:
        with self.cond:
            return self.history[-1][1] if self.history else {}

    @staticmethod
    def weight_in(table: dict[str, dict[str, int]], svc: str, rs: str) -> int | None:
        return table.get(svc, {}).get(rs)

    def weight(self, svc: str, rs: str) -> int | None:
        return self.weight_in(self.table(), svc, rs)

    def wait(self, pred: Callable[[dict[str, dict[str, int]]], bool], after: float | None = None,
             limit: float = 20.0, what: str = "condition") -> float:
        """Monotonic time at which `pred(table)` first held at or after `after` (default: now)."""
        after = time.monotonic() if after is None else after
        deadline = time.monotonic() + limit
        with self.cond:
            while True:
                timeline: list[tuple[float, dict[str, dict[str, int]]]] = []
                for t, table in self.history:
                    if t <= after:
                        timeline = [(after, table)]
                    else:
                        timeline.append((t, table))
                for t, table in timeline:
                    if pred(table):
                        return t
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out after {limit:g} s waiting for {what}; "
                                         f"IPVS table now {self.history[-1][1] if self.history else None}")
                self.cond.wait(min(left, 0.5))

    def wait_weight(self, svc: str, rs: str, weight: int | None, after: float | None = None,
                    limit: float = 20.0) -> float:
        return self.wait(lambda tb: self.weight_in(tb, svc, rs) == weight and svc in tb, after, limit,
                         f"{svc} {rs} weight {weight}")

    def tables(self, t0: float, t1: float) -> list[tuple[float, dict[str, dict[str, int]]]]:
        """The tables in effect at some time within [t0, t1] (the one current at t0 included)."""
        with self.cond:
            out = []
            for t, table in self.history:
                if t <= t0:
                    out = [(t, table)]
                elif t <= t1:
                    out.append((t, table))
            return out


class Lab:
    """The director netns running `ipvsync run` (stderr to a log file), real servers, a weight watcher."""

    def __init__(self, director: Any, topo: Any, base: Path) -> None:
        self.director = director
        self.topo = topo
        self.base = base
        (base / "etc").mkdir(exist_ok=True)
        self.cfg = base / "etc" / "ipvsync.yaml"  # a dir of its own: the daemon watches it
        self.state_dir = base / "state"
        self.runtime_dir = base / "run"
        self.log = base / "daemon.log"
        self.daemon: Any = None
        self.lines: list[tuple[float, str]] = []  # (monotonic arrival time, daemon output line)
        self.watch = WeightWatch(director)

    # -- real servers
    def serve(self, host: Any, http: int | None = None, dns: int | None = None,
              udp: int | None = None) -> Path:
        """health_servers.py serve in `host`'s netns; returns its mode dir."""
        d = self.base / f"srv-{host.name}"
        d.mkdir(exist_ok=True)
        argv = [*PY_FAST, str(HERE), "serve", "--name", host.name, "--dir", str(d)]
        for flag, port in (("--http", http), ("--dns", dns), ("--udp", udp)):
            if port is not None:
                argv += [flag, str(port)]
        proc = host.ns.popen(argv)
        line = proc.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"health server in {host.name} did not start: {line}{proc.stdout.read()}")
        return d

    # -- config and daemon
    def write_config(self, text: str) -> None:
        tmp = self.cfg.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.cfg)  # like an editor: the daemon never reads a half-written file

    def start_daemon(self, limit: float = 90.0) -> float:
        """Start `ipvsync run`; returns the seconds until its control socket answered. Its output is
        read by a thread that stamps every line with the monotonic time it arrived."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        env["PYTHONUNBUFFERED"] = "1"
        env.pop("JOURNAL_STREAM", None)
        env.pop("INVOCATION_ID", None)
        t0 = time.monotonic()
        self.lines.append((t0, "=== daemon start"))
        self.daemon = self.director.popen(
            [sys.executable, "-m", "ipvsync", "run", "-c", str(self.cfg), "--state-dir", str(self.state_dir),
             "--runtime-dir", str(self.runtime_dir)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        threading.Thread(target=self._read_log, args=(self.daemon,), daemon=True).start()
        while True:
            if self.daemon.poll() is not None:
                time.sleep(0.2)
                raise AssertionError(f"the daemon exited ({self.daemon.returncode}):\n{self.log_text()}")
            if time.monotonic() - t0 > limit:
                raise AssertionError(f"the daemon did not answer within {limit:g} s:\n{self.log_text()}")
            try:
                if self.request({"cmd": "ping"}, timeout=5).get("ok"):
                    return time.monotonic() - t0
            except Exception:  # noqa: BLE001 - not up yet
                pass
            time.sleep(0.1)

    def _read_log(self, proc: Any) -> None:
        with open(self.log, "a") as logf:
            for line in proc.stdout:
                now = time.monotonic()
                self.lines.append((now, line.rstrip("\n")))
                logf.write(f"{now:.3f} {line}")
                logf.flush()

    def stop_daemon(self, sig: int = signal.SIGTERM) -> None:
        assert self.daemon is not None
        self.daemon.send_signal(sig)
        self.daemon.wait(timeout=30)
        self.daemon = None

    def request(self, payload: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
        from ipvsync.control import request

        return request(str(self.runtime_dir), payload, timeout=timeout)

    def reload(self) -> dict[str, Any]:
        return self.request({"cmd": "reload"}, timeout=60)

    def rs_status(self, service: str, rs: str) -> dict[str, Any]:
        """The status JSON entry of one real server (health, last_failure, kernel_weight, ...)."""
        doc = self.request({"cmd": "status", "service": service})["status"]
        for svc in doc["services"]:
            for r in svc["real_servers"]:
                if r["real_server"] == rs:
                    return r
        raise AssertionError(f"{service} {rs} not in status: {doc}")

    def dump(self) -> str:
        """What to look at when a test fails: IPVS, addresses, the daemon log."""
        out = [self.director.run(["ipvsadm", "-Ln"], check=False).stdout,
               self.director.run(["ip", "-br", "addr"], check=False).stdout]
        for h in self.topo.servers:
            out.append(f"{h.name}: " + h.ns.run(["ss", "-ltnu"], check=False).stdout)
        gaps = ", ".join(f"{g:.1f} s at {t:.1f}" for t, g in self.watch.gaps) or "none"
        out.append(f"machine stalls (> 0.5 s without running the weight poller): {gaps}")
        out.append("--- daemon log (tail)\n" + "\n".join(self.log_text().splitlines()[-120:]))
        return "\n".join(out)

    @contextlib.contextmanager
    def diagnostics(self) -> Iterator[None]:
        """Print dump() when the block fails (shown with the inner failure)."""
        try:
            yield
        except BaseException:
            print(self.dump())
            raise

    def log_text(self) -> str:
        return "\n".join(f"{t:.3f} {line}" for t, line in list(self.lines))

    def transitions(self, service: str, rs: str) -> list[str]:
        """The daemon's health transition lines for one real server of one service."""
        tag = f"SERVICE={service} REAL_SERVER={rs} "
        return [ln for _t, ln in list(self.lines) if tag in ln and " -> " in ln]

    def sequence(self, service: str, rs: str) -> list[str]:
        """["down -> up", "up -> down", ...]: the transitions of one real server of one service."""
        return [ln.split(": ", 1)[1].split(" (")[0] for ln in self.transitions(service, rs)]

    def transition_time(self, service: str, rs: str, change: str, after: float, limit: float = 10.0) -> float:
        """When the daemon logged `change` ("up -> down") for this real server after `after`. Waits up
        to `limit` s for it: the line is read by another thread, it can arrive after the weight change
        a test has just seen."""
        tag = f"SERVICE={service} REAL_SERVER={rs} "
        deadline = time.monotonic() + limit
        while True:
            for t, ln in list(self.lines):
                if t > after and tag in ln and f": {change} (" in ln:
                    return t
            if time.monotonic() > deadline:
                raise AssertionError(f"no {change} logged for {service} {rs}")
            time.sleep(0.02)


def passive_opens(ns: Any) -> int:
    """TCP connections accepted in `ns` so far (Tcp PassiveOpens of its /proc/net/snmp)."""
    lines = [ln.split() for ln in ns.run(["cat", "/proc/net/snmp"]).stdout.splitlines() if ln.startswith("Tcp:")]
    return int(lines[1][lines[0].index("PassiveOpens")])


def drop_tcp(ns: Any, port: int, on: bool) -> None:
    """Drop incoming TCP to `port` in `ns` with a tc ingress filter (this UML kernel has nf_tables for
    the bridge family only, and no iptables binary is installed)."""
    if on:
        ns.run(["tc", "qdisc", "add", "dev", "eth0", "ingress"])
        ns.run(["tc", "filter", "add", "dev", "eth0", "ingress", "protocol", "ip", "flower", "ip_proto", "tcp",
                "dst_port", str(port), "action", "drop"])
    else:
        ns.run(["tc", "qdisc", "del", "dev", "eth0", "ingress"])


# -- client -----------------------------------------------------------------------------------------------


def ask_http(host: str, port: int, timeout: float) -> str:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect((host, port))
            sock.sendall(f"GET / HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
            chunks = []
            while chunk := sock.recv(4096):
                chunks.append(chunk)
        data = b"".join(chunks).decode(errors="replace")
        head, _, body = data.partition("\r\n\r\n")
        return (body.strip().splitlines() or ["!Empty"])[0]
    except OSError as exc:
        return f"!{type(exc).__name__}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--name", required=True)
    s.add_argument("--dir", required=True)
    s.add_argument("--http", type=int)
    s.add_argument("--dns", type=int)
    s.add_argument("--udp", type=int)
    w = sub.add_parser("weights")
    w.add_argument("--every", type=float, default=0.02)
    a = sub.add_parser("ask-http")
    a.add_argument("host")
    a.add_argument("port", type=int)
    a.add_argument("--count", type=int, default=1)
    a.add_argument("--timeout", type=float, default=3.0)
    args = p.parse_args(argv)
    if args.cmd == "serve":
        serve(args.name, Path(args.dir), args.http, args.dns, args.udp)
    elif args.cmd == "weights":
        weights(args.every)
    else:
        print("\n".join(ask_http(args.host, args.port, args.timeout) for _ in range(args.count)), flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
