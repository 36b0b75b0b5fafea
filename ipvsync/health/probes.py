"""Probes: one async function per check type, each returning a `ProbeResult`.

Rules of residence: I/O only, no health state. A `ProbeSpec` is the frozen, hashable description of
one probe (type, target, timeout and type parameters; never rise/fall/interval), so identical probes
from different services collapse onto one key. Sockets are created per probe in the caller's network
namespace, non-blocking, driven by the running event loop (no threads, no executors); timeouts use
`asyncio.timeout`, so a probe costs one task and one socket. Exceptions never escape `run_probe`.
The monitor's hot path for TCP checks is `TcpConnector` (callbacks, no task per probe).
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import pwd
import re
import select
import signal
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ipvsync.health import dnswire
from ipvsync.model import AF_INET, AF_INET6

SO_MARK = getattr(socket, "SO_MARK", 36)
DEFAULT_INTERVAL = 5.0
DEFAULT_TIMEOUT = 3.0
DEFAULT_STATUS = ((200, 399),)
DEFAULT_BODY_MAX = 65536
EXEC_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
EXEC_DEFAULT_USER = "nobody"  # used when the daemon runs as root and the check names no user


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    reason: str  # "ok", "timeout", "refused", "status 503", "regex mismatch", "exit 2", ...
    latency: float  # seconds
    weight: int | None = None  # file checks: the integer found in the file


def _freeze(v: Any) -> Any:
    if isinstance(v, list | tuple):
        return tuple(_freeze(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((k, _freeze(x)) for k, x in v.items()))
    return v


@dataclass(frozen=True)
class ProbeSpec:
    """What to probe and how: the dedup key. `params` holds the type's own keys, sorted."""

    type: str
    address: str = ""  # target (connect_ip or the real server); "" for file checks
    port: int = 0
    timeout: float = DEFAULT_TIMEOUT
    params: tuple[tuple[str, Any], ...] = ()
    source_address: str = ""
    fwmark: int = 0
    _p: dict[str, Any] | None = field(default=None, init=False, compare=False, hash=False, repr=False)

    def param(self, name: str, default: Any = None) -> Any:
        p = self._p
        if p is None:
            p = dict(self.params)
            object.__setattr__(self, "_p", p)
        return p.get(name, default)

    @property
    def family(self) -> int:
        return AF_INET6 if ":" in self.address else AF_INET  # addresses are canonical (config layer)

    @property
    def sockaddr(self) -> tuple[Any, ...]:
        return (self.address, self.port, 0, 0) if ":" in self.address else (self.address, self.port)

    @property
    def digest(self) -> str:
        """A stable text identity (for the state dir)."""
        return json.dumps([self.type, self.address, self.port, self.timeout, self.params, self.source_address,
                           self.fwmark], separators=(",", ":"), default=str)

    def describe(self) -> str:
        """Short human text for logs and status: 'tcp 10.0.0.1:80', 'http GET 10.0.0.1:80/health'."""
        host = f"[{self.address}]" if ":" in self.address else self.address
        if self.type in ("http", "https"):
            return f"{self.type} {self.param('method', 'GET')} {host}:{self.port}{self.param('path', '/')}"
        if self.type == "exec":
            return "exec " + " ".join(self.param("command", ()))
        if self.type == "file":
            return f"file {self.param('path')}"
        if self.type == "dns":
            return f"dns {host}:{self.port} {self.param('query_name', '.')} {self.param('query_type', 'SOA')}"
        return f"{self.type} {host}:{self.port}"


PROBE_KEYS = {"method", "path", "host", "status", "body_regex", "body_max", "tls_verify", "ca_file", "sni",
              "payload", "expect", "query_name", "query_type", "command", "user"}


def spec_for(health: dict[str, Any], rs_address: str, rs_port: int,
             env: dict[str, str] | None = None) -> ProbeSpec | None:
    """The ProbeSpec of a resolved health block for one real server; None for type none.

    `env` (exec checks only) becomes part of the key, so exec probes are never shared across services.
    """
    t = probe_template(health)
    return None if t is None else t.spec(rs_address, rs_port, env)


@dataclass(frozen=True)
class ProbeTemplate:
    """The parsed, target-independent part of a health block (shared by every real server using it)."""

    type: str
    timeout: float
    interval: float
    params: tuple[tuple[str, Any], ...]
    source_address: str
    fwmark: int
    connect_ip: str | None
    connect_port: int | None

    def spec(self, rs_address: str, rs_port: int, env: dict[str, str] | None = None) -> ProbeSpec:
        params = self.params
        if self.type == "exec" and env:
            params = params + (("env", _freeze(env)),)
        if self.type == "file":
            address, port = "", 0
        elif self.type == "exec":
            address, port = rs_address, rs_port
        else:
            address = self.connect_ip or rs_address
            port = self.connect_port or rs_port
        return ProbeSpec(self.type, address, port, self.timeout, params, self.source_address, self.fwmark)


def probe_template(health: dict[str, Any]) -> ProbeTemplate | None:
    """Parse a resolved health block once; None for type none."""
    kind = health.get("type", "none")
    if kind == "none":
        return None
    from ipvsync.config.build import parse_duration

    return ProbeTemplate(
        type=kind, timeout=parse_duration(health.get("timeout", DEFAULT_TIMEOUT)),
        interval=parse_duration(health.get("interval", DEFAULT_INTERVAL)),
        params=_freeze({k: v for k, v in health.items() if k in PROBE_KEYS}),
        source_address=health.get("source_address", ""), fwmark=health.get("fwmark", 0),
        connect_ip=health.get("connect_ip"), connect_port=health.get("connect_port"))


# ---------------------------------------------------------------------------------------------- helpers

def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, ConnectionResetError):
        return "reset"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"tls: {exc.verify_message or exc.reason}"
    if isinstance(exc, ssl.SSLError):
        return f"tls: {exc.reason or exc}"
    if isinstance(exc, OSError) and exc.errno:
        if exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
            return "unreachable"
        return errno.errorcode.get(exc.errno, str(exc.errno)).lower()
    return f"error: {exc}"


def _socket(spec: ProbeSpec, kind: int) -> socket.socket:
    sock = socket.socket(spec.family, kind | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    try:
        if spec.fwmark:
            sock.setsockopt(socket.SOL_SOCKET, SO_MARK, spec.fwmark)
        if spec.source_address:
            sock.bind((spec.source_address, 0))
    except BaseException:
        sock.close()
        raise
    return sock


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


async def _connect(loop: asyncio.AbstractEventLoop, sock: socket.socket, addr: tuple[Any, ...]) -> None:
    """Non-blocking connect driven by one writer callback (cheaper than loop.sock_connect)."""
    err = sock.connect_ex(addr)
    if err == 0:
        return
    if err not in (errno.EINPROGRESS, errno.EAGAIN):
        raise OSError(err, os.strerror(err))
    fut = loop.create_future()
    fd = sock.fileno()
    loop.add_writer(fd, _wake, fut)
    try:
        await fut
    finally:
        loop.remove_writer(fd)
    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err:
        raise OSError(err, os.strerror(err))


_LINGER0 = b"\x01\x00\x00\x00\x00\x00\x00\x00"  # struct linger {l_onoff=1, l_linger=0}


async def probe_tcp(spec: ProbeSpec) -> ProbeResult:
    """Connect within the timeout, then reset (no TIME_WAIT on the prober, like HAProxy's connect checks)."""
    loop = asyncio.get_running_loop()
    t0 = time.monotonic()
    sock = None
    try:
        sock = _socket(spec, socket.SOCK_STREAM)
        async with asyncio.timeout(spec.timeout):
            await _connect(loop, sock, spec.sockaddr)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER0)
        return ProbeResult(True, "ok", time.monotonic() - t0)
    except (OSError, TimeoutError) as exc:
        return ProbeResult(False, _reason(exc), time.monotonic() - t0)
    finally:
        if sock is not None:
            sock.close()


_EPOLL_FAILED = select.EPOLLERR | select.EPOLLHUP
_EPOLL_ARM = select.EPOLLOUT | select.EPOLLONESHOT
POOL_MAX = 1024  # idle sockets one TcpConnector keeps for reuse


def _disconnector() -> Callable[[int], int] | None:
    """connect(fd, AF_UNSPEC) through libc (Python's socket API cannot pass AF_UNSPEC): a TCP socket's
    disconnect (RST if connected, as close with SO_LINGER 0), leaving it reusable for another connect.
    None without ctypes: every probe then takes a new socket."""
    try:
        import ctypes

        fn = ctypes.CDLL(None, use_errno=True).connect
        fn.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint32)
        fn.restype = ctypes.c_int
        unspec = ctypes.create_string_buffer(16)  # struct sockaddr with sa_family AF_UNSPEC (0)
    except Exception:
        return None

    def disconnect(fd: int) -> int:
        return fn(fd, unspec, 16)

    return disconnect


class TcpConnector:
    """TCP connect checks without a task, a future or a timeout context per probe.

    The same check as `probe_tcp` (connect within the timeout, then reset; same results, reasons and
    latency), driven by callbacks for the monitor's hot path. Under UML every syscall, clock reads
    included, is expensive, so a probe that connects at once costs two: connect, and a disconnect
    (connect to AF_UNSPEC: RST, as close with SO_LINGER 0) that returns the socket to a pool for the
    next probe with the same family, fwmark and source address (a probe that fails, times out or
    cannot be disconnected closes its socket). `start` only queues a probe whose connect is in
    progress, and `flush` checks the whole queue with one poll(2) (a local or fast server has answered
    by then); only the probes still connecting are armed in one private epoll (EPOLLONESHOT, one
    epoll_ctl each), whose fd is a single reader of the event loop. The clock is read once per batch
    of completions; timeouts are kept in one FIFO per timeout length (deadlines arrive in order)
    behind a single loop timer. `done(result, now)` is never called inside `start`: from the event
    loop, or from `flush`; `now` is this connector's `time.monotonic()` reading.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._ep = select.epoll()
        self._pending: dict[int, list[Any]] = {}  # fd -> [sock, t0, done, pool key]
        self._fresh: list[int] = []  # fds started since the last flush (not armed in the epoll)
        self._flush_handle: asyncio.Handle | None = None
        self._deadlines: dict[float, deque[tuple[float, int, list[Any]]]] = {}  # timeout -> FIFO
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self._disconnect = _disconnector()
        self._idle: dict[tuple[int, int, str], list[socket.socket]] = {}  # (family, fwmark, source) -> pool
        self._nidle = 0
        self._in_ep: set[int] = set()  # fds of open sockets known to the epoll (armed or spent)
        loop.add_reader(self._ep.fileno(), self._ready)

    def __len__(self) -> int:
        return len(self._pending)

    def start(self, spec: ProbeSpec, done: Callable[[ProbeResult, float], None], t0: float | None = None,
              defer: bool = False) -> None:
        """Start one check; `t0` is the caller's fresh `time.monotonic()` reading, if it has one.

        With `defer` the caller calls `flush()` after its batch of starts; otherwise the loop does, soon.
        """
        if t0 is None:
            t0 = time.monotonic()
        sock = None
        key = (AF_INET6 if ":" in spec.address else AF_INET, spec.fwmark, spec.source_address)
        try:
            idle = self._idle.get(key)
            if idle:
                sock = idle.pop()
                self._nidle -= 1
                err = sock.connect_ex(spec.sockaddr)
                if err in (errno.EISCONN, errno.EALREADY, errno.EINVAL):  # not reset after all: take a new one
                    self._discard(sock)
                    sock = None
            if sock is None:
                sock = _socket(spec, socket.SOCK_STREAM)
                err = sock.connect_ex(spec.sockaddr)
            if err in (errno.EINPROGRESS, errno.EAGAIN):
                fd = sock.fileno()
                entry = [sock, t0, done, key]
                self._pending[fd] = entry
                self._fresh.append(fd)
                sock = None  # owned by _pending now
                deadline = t0 + spec.timeout
                fifo = self._deadlines.get(spec.timeout)
                if fifo is None:
                    fifo = self._deadlines[spec.timeout] = deque()
                fifo.append((deadline, fd, entry))
                if deadline < self._timer_at:
                    self._arm(deadline)
                if not defer and self._flush_handle is None:
                    self._flush_handle = self.loop.call_soon(self.flush)
                return
            if err:
                raise OSError(err, os.strerror(err))
            self._release(sock, key)
            sock = None
            now = time.monotonic()
            result = ProbeResult(True, "ok", now - t0)
        except (OSError, TimeoutError) as exc:
            now = time.monotonic()
            result = ProbeResult(False, _reason(exc), now - t0)
        except Exception as exc:  # as run_probe: never escapes
            now = time.monotonic()
            result = ProbeResult(False, _reason(exc), 0.0)
        finally:
            if sock is not None:
                self._discard(sock)
        self.loop.call_soon(done, result, now)

    def flush(self) -> None:
        """Finish the started probes whose connect is already over (one poll(2) for all of them);
        arm the others in the epoll. Calls their `done` before it returns."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        fresh = self._fresh
        if not fresh:
            return
        self._fresh = []
        pending = self._pending
        p = select.poll()
        for fd in fresh:
            if fd in pending:  # not abandoned by a timeout or close()
                p.register(fd, select.POLLOUT)
        try:
            events = p.poll(0)
        except OSError:  # cannot happen for open fds; then the epoll watches every one
            events = []
        ready = set()
        if events:
            self._complete(events, time.monotonic())
            ready = {fd for fd, _ev in events}
        ep, in_ep = self._ep, self._in_ep
        for fd in dict.fromkeys(fresh):  # an fd abandoned by a timeout may have been reused in the batch
            if fd not in ready and fd in pending:
                if fd in in_ep:
                    ep.modify(fd, _EPOLL_ARM)
                else:
                    ep.register(fd, _EPOLL_ARM)
                    in_ep.add(fd)

    def _release(self, sock: socket.socket, key: tuple[int, int, str]) -> None:
        """A connected socket is done: reset it (RST) and keep it for the next probe, or close it."""
        dis = self._disconnect
        if dis is not None and self._nidle < POOL_MAX and dis(sock.fileno()) == 0:
            self._idle.setdefault(key, []).append(sock)
            self._nidle += 1
            return
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER0)  # RST, as the disconnect
        except OSError:
            pass
        self._discard(sock)

    def _discard(self, sock: socket.socket) -> None:
        self._in_ep.discard(sock.fileno())
        sock.close()

    def _arm(self, deadline: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        # loop.time() is time.monotonic() for asyncio's loops; call_later keeps us honest otherwise
        self._timer = self.loop.call_later(max(0.0, deadline - time.monotonic()), self._expire)

    def _ready(self) -> None:
        events = self._ep.poll(0)
        if events:
            self._complete(events, time.monotonic())  # one clock read for the whole batch

    def _complete(self, events: list[tuple[int, int]], now: float) -> None:
        pending = self._pending
        for fd, ev in events:
            entry = pending.pop(fd, None)
            if entry is None:
                continue
            sock, t0, done, key = entry
            entry[2] = None  # completed: its deadline in the FIFO is now a no-op
            try:
                # tcp_poll flags POLLERR whenever sk_err is set: without it SO_ERROR is 0 (saves a syscall)
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) if ev & _EPOLL_FAILED else 0
            except OSError as exc:
                err = exc.errno or errno.EIO
            if err:
                result = ProbeResult(False, _reason(OSError(err, os.strerror(err))), now - t0)
                self._discard(sock)
            else:
                result = ProbeResult(True, "ok", now - t0)
                self._release(sock, key)
            try:
                done(result, now)
            except Exception as exc:  # as a loop callback would: reported, the other probes go on
                self.loop.call_exception_handler({"message": "TCP check callback failed", "exception": exc})

    def _expire(self) -> None:
        self._timer = None
        self._timer_at = float("inf")
        now = time.monotonic()
        nxt = float("inf")
        expired = []
        for timeout, fifo in list(self._deadlines.items()):
            while fifo and fifo[0][0] <= now:
                _deadline, fd, entry = fifo.popleft()
                if entry[2] is not None and self._pending.get(fd) is entry:
                    del self._pending[fd]
                    expired.append(entry)
            while fifo and fifo[0][2][2] is None:  # completed in time: drop without waiting for it
                fifo.popleft()
            if fifo:
                nxt = min(nxt, fifo[0][0])
            else:
                del self._deadlines[timeout]
        if nxt < float("inf"):
            self._arm(nxt)
        for entry in expired:
            sock, t0, done = entry[0], entry[1], entry[2]
            entry[2] = None
            self._discard(sock)
            done(ProbeResult(False, "timeout", now - t0), now)

    def close(self) -> int:
        """Abandon every in-flight probe (their callbacks are not called) and close the idle sockets;
        returns how many probes were abandoned."""
        n = len(self._pending)
        for entry in self._pending.values():
            entry[0].close()
            entry[2] = None
        self._pending.clear()
        for idle in self._idle.values():
            for sock in idle:
                sock.close()
        self._idle.clear()
        self._nidle = 0
        self._in_ep.clear()
        self._fresh = []
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._deadlines.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        try:
            self.loop.remove_reader(self._ep.fileno())
        except Exception:  # the loop may already be closed
            pass
        self._ep.close()
        return n


# ---------------------------------------------------------------------------------------------- http

_ssl_contexts: dict[tuple[bool, str | None], ssl.SSLContext] = {}


def ssl_context(verify: bool, ca_file: str | None) -> ssl.SSLContext:
    """Contexts are costly (CA store); one per (verify, ca_file), shared by every probe."""
    key = (verify, ca_file)
    ctx = _ssl_contexts.get(key)
    if ctx is None:
        if verify:
            ctx = ssl.create_default_context(cafile=ca_file)
        else:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        _ssl_contexts[key] = ctx
    return ctx


def status_ranges(spec: list[Any] | tuple[Any, ...] | None) -> tuple[tuple[int, int], ...]:
    """[200, "300-399"] -> ((200, 200), (300, 399)); default 200-399."""
    if not spec:
        return DEFAULT_STATUS
    out = []
    for s in spec:
        if isinstance(s, int):
            out.append((s, s))
        else:
            lo, _, hi = str(s).partition("-")
            out.append((int(lo), int(hi or lo)))
    return tuple(out)


_regex_cache: dict[str, re.Pattern[str]] = {}


def _regex(text: str) -> re.Pattern[str]:
    rx = _regex_cache.get(text)
    if rx is None:
        rx = _regex_cache[text] = re.compile(text)
    return rx


def _dechunk(data: bytes, limit: int) -> bytes:
    """Best-effort decoding of a chunked body (enough for a regex over its first bytes)."""
    out = bytearray()
    pos = 0
    while pos < len(data) and len(out) < limit:
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            break
        try:
            size = int(data[pos:eol].split(b";")[0], 16)
        except ValueError:
            break
        if size == 0:
            break
        out += data[eol + 2:eol + 2 + size]
        pos = eol + 2 + size + 2
    return bytes(out[:limit])


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str], limit: int) -> bytes:
    chunked = "chunked" in headers.get("transfer-encoding", "").lower()
    want = limit
    if not chunked and "content-length" in headers:
        try:
            want = min(limit, int(headers["content-length"]))
        except ValueError:
            pass
    cap = want if not chunked else limit + 64 * 1024
    buf = bytearray()
    while len(buf) < cap:
        data = await reader.read(cap - len(buf))
        if not data:
            break
        buf += data
        if chunked and buf.endswith(b"0\r\n\r\n"):
            break
    return _dechunk(bytes(buf), limit) if chunked else bytes(buf[:limit])


async def probe_http(spec: ProbeSpec) -> ProbeResult:
    """One HTTP/1.1 request (Connection: close); status in ranges; optional regex over the first bytes."""
    loop = asyncio.get_running_loop()
    t0 = time.monotonic()
    tls = spec.type == "https"
    method = spec.param("method", "GET")
    host_text = f"[{spec.address}]" if spec.family == AF_INET6 else spec.address
    default_port = 443 if tls else 80
    host = spec.param("host") or (host_text if spec.port == default_port else f"{host_text}:{spec.port}")
    req = (f"{method} {spec.param('path', '/')} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: ipvsync-health\r\n"
           "Accept: */*\r\nConnection: close\r\n\r\n").encode("latin-1")
    sock = None
    writer = None
    try:
        sock = _socket(spec, socket.SOCK_STREAM)
        async with asyncio.timeout(spec.timeout):
            await _connect(loop, sock, spec.sockaddr)
            ctx = None
            server_hostname = None
            if tls:
                ctx = ssl_context(bool(spec.param("tls_verify", True)), spec.param("ca_file"))
                server_hostname = spec.param("sni") or spec.param("host") or spec.address
            reader, writer = await asyncio.open_connection(sock=sock, ssl=ctx,
                                                           server_hostname=server_hostname)
            sock = None  # owned by the transport now
            writer.write(req)
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            parts = lines[0].split(" ", 2)
            if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
                return ProbeResult(False, "bad response", time.monotonic() - t0)
            code = int(parts[1])
            if not any(lo <= code <= hi for lo, hi in status_ranges(spec.param("status"))):
                return ProbeResult(False, f"status {code}", time.monotonic() - t0)
            pattern = spec.param("body_regex")
            if pattern is not None and method != "HEAD":
                headers = {}
                for line in lines[1:]:
                    k, sep, v = line.partition(":")
                    if sep:
                        headers[k.strip().lower()] = v.strip()
                body = await _read_body(reader, headers, int(spec.param("body_max", DEFAULT_BODY_MAX)))
                if not _regex(pattern).search(body.decode("utf-8", "replace")):
                    return ProbeResult(False, "regex mismatch", time.monotonic() - t0)
        return ProbeResult(True, f"status {code}", time.monotonic() - t0)
    except asyncio.IncompleteReadError:
        return ProbeResult(False, "connection closed", time.monotonic() - t0)
    except asyncio.LimitOverrunError:
        return ProbeResult(False, "headers too long", time.monotonic() - t0)
    except (OSError, TimeoutError, ssl.SSLError) as exc:
        return ProbeResult(False, _reason(exc), time.monotonic() - t0)
    finally:
        if writer is not None:
            writer.transport.abort()
        if sock is not None:
            sock.close()


# ---------------------------------------------------------------------------------------------- udp, dns

_HEX = re.compile(r"\\x([0-9a-fA-F]{2})")


def decode_payload(text: str) -> bytes:
    """Text with \\xNN escapes -> bytes (other characters as UTF-8)."""
    out = bytearray()
    pos = 0
    for m in _HEX.finditer(text):
        out += text[pos:m.start()].encode()
        out.append(int(m.group(1), 16))
        pos = m.end()
    out += text[pos:].encode()
    return bytes(out)


async def _udp_exchange(spec: ProbeSpec, payload: bytes, wait_reply: bool) -> tuple[bytes | None, float]:
    """Send one datagram on a connected socket; return the reply (None: no reply within the timeout,
    only when `wait_reply` is false). ICMP port unreachable surfaces as ConnectionRefusedError."""
    loop = asyncio.get_running_loop()
    t0 = time.monotonic()
    sock = _socket(spec, socket.SOCK_DGRAM)
    try:
        sock.connect(spec.sockaddr)  # UDP: no I/O, sets the peer so ICMP errors are reported
        try:
            async with asyncio.timeout(spec.timeout):
                await loop.sock_sendall(sock, payload)
                data = await loop.sock_recv(sock, 65535)
        except TimeoutError:
            if wait_reply:
                raise
            return None, time.monotonic() - t0
        return data, time.monotonic() - t0
    finally:
        sock.close()


async def probe_udp(spec: ProbeSpec) -> ProbeResult:
    """Send the payload; with `expect` a matching reply is required, else silence or any reply is up."""
    t0 = time.monotonic()
    expect = spec.param("expect")
    try:
        payload = decode_payload(spec.param("payload", ""))
        reply, latency = await _udp_exchange(spec, payload, expect is not None)
    except (OSError, TimeoutError) as exc:
        return ProbeResult(False, _reason(exc), time.monotonic() - t0)
    if expect is not None:
        assert reply is not None
        if not _regex(expect).search(reply.decode("latin-1")):
            return ProbeResult(False, "regex mismatch", latency)
        return ProbeResult(True, "reply matched", latency)
    return ProbeResult(True, "reply" if reply is not None else "no error", latency)


async def probe_dns(spec: ProbeSpec) -> ProbeResult:
    """Query name/type over UDP; up = NOERROR with at least one answer."""
    t0 = time.monotonic()
    qid = int.from_bytes(os.urandom(2), "big")
    name, qtype = spec.param("query_name", "."), spec.param("query_type", "SOA")
    try:
        query = dnswire.encode_query(qid, name, qtype)
        loop = asyncio.get_running_loop()
        sock = _socket(spec, socket.SOCK_DGRAM)
        try:
            sock.connect(spec.sockaddr)
            async with asyncio.timeout(spec.timeout):
                await loop.sock_sendall(sock, query)
                while True:  # skip stray datagrams (wrong id or question) until the timeout
                    data = await loop.sock_recv(sock, 65535)
                    try:
                        reply = dnswire.decode_reply(data)
                    except dnswire.DnsError:
                        continue
                    if reply.id == qid and reply.is_response and reply.question.lower() == query[12:].lower():
                        break
        finally:
            sock.close()
    except dnswire.DnsError as exc:
        return ProbeResult(False, f"bad query: {exc}", time.monotonic() - t0)
    except (OSError, TimeoutError) as exc:
        return ProbeResult(False, _reason(exc), time.monotonic() - t0)
    latency = time.monotonic() - t0
    if reply.rcode != 0:
        return ProbeResult(False, reply.rcode_name, latency)
    if not reply.answers:
        return ProbeResult(False, "no answer", latency)
    return ProbeResult(True, f"NOERROR {len(reply.answers)} answers", latency)


# ---------------------------------------------------------------------------------------------- exec, file

def _exec_user(name: str | None) -> tuple[int, int] | None:
    """(uid, gid) to switch to, or None to run as ourselves. Raises PermissionError/KeyError."""
    euid = os.geteuid()
    if name is None:
        if euid != 0:
            return None
        name = EXEC_DEFAULT_USER
    pw = pwd.getpwnam(name)
    if pw.pw_uid == euid:
        return None
    if euid != 0:
        raise PermissionError(f"cannot run as {name}: the daemon is not root")
    return pw.pw_uid, pw.pw_gid


async def probe_exec(spec: ProbeSpec) -> ProbeResult:
    """Run the argument list (no shell) in its own process group; exit 0 = up; timeout kills the group."""
    t0 = time.monotonic()
    argv = list(spec.param("command", ()))
    env = {"PATH": EXEC_PATH, **dict(spec.param("env", ()))}
    try:
        ids = _exec_user(spec.param("user"))
    except KeyError:
        return ProbeResult(False, f"no such user {spec.param('user')}", 0.0)
    except PermissionError as exc:
        return ProbeResult(False, str(exc), 0.0)
    kwargs: dict[str, Any] = {}
    if ids is not None:
        kwargs = {"user": ids[0], "group": ids[1], "extra_groups": []}
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL, env=env, cwd="/", start_new_session=True, **kwargs)
    except OSError as exc:
        return ProbeResult(False, f"cannot run {argv[0]}: {exc.strerror}", time.monotonic() - t0)
    try:
        async with asyncio.timeout(spec.timeout):
            rc = await proc.wait()
    except TimeoutError:
        _killpg(proc.pid)
        await proc.wait()
        return ProbeResult(False, "timeout", time.monotonic() - t0)
    except asyncio.CancelledError:
        _killpg(proc.pid)
        raise
    latency = time.monotonic() - t0
    if rc == 0:
        return ProbeResult(True, "exit 0", latency)
    if rc < 0:
        return ProbeResult(False, f"signal {signal.Signals(-rc).name}", latency)
    return ProbeResult(False, f"exit {rc}", latency)


def _killpg(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def probe_file_sync(spec: ProbeSpec) -> ProbeResult:
    """Operator switch: absent = up; present = down, unless it holds an integer (the weight)."""
    t0 = time.monotonic()
    path = spec.param("path")
    try:
        with open(path, "rb") as fh:
            text = fh.read(64).decode("ascii", "replace").strip()
    except FileNotFoundError:
        return ProbeResult(True, "file absent", time.monotonic() - t0)
    except IsADirectoryError:
        return ProbeResult(False, "file present", time.monotonic() - t0, weight=0)
    except OSError as exc:
        return ProbeResult(False, f"file unreadable: {exc.strerror}", time.monotonic() - t0, weight=0)
    if text.isdigit():
        w = int(text)
        return ProbeResult(w > 0, f"file weight {w}", time.monotonic() - t0, weight=w)
    return ProbeResult(False, "file present", time.monotonic() - t0, weight=0)


async def probe_file(spec: ProbeSpec) -> ProbeResult:
    return probe_file_sync(spec)


async def probe_none(spec: ProbeSpec) -> ProbeResult:
    return ProbeResult(True, "none", 0.0)


PROBES = {"tcp": probe_tcp, "http": probe_http, "https": probe_http, "udp": probe_udp, "dns": probe_dns,
          "exec": probe_exec, "file": probe_file, "none": probe_none}


async def run_probe(spec: ProbeSpec) -> ProbeResult:
    """Dispatch on the type; any unexpected exception becomes a failed result."""
    try:
        return await PROBES[spec.type](spec)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # a probe must never take the scheduler down
        return ProbeResult(False, _reason(exc), 0.0)


def use_pidfd_child_watcher() -> bool:
    """Python 3.11's default child watcher starts a thread per subprocess; pidfd needs none.

    Installs asyncio.PidfdChildWatcher for the running loop when the kernel supports pidfd_open.
    Python >= 3.12 already does this. Returns True when pidfd watching is in effect.
    """
    import sys
    import warnings

    if sys.version_info >= (3, 12) or not hasattr(os, "pidfd_open"):
        return sys.version_info >= (3, 12)
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        current = asyncio.get_child_watcher()
        if isinstance(current, asyncio.PidfdChildWatcher):
            current.attach_loop(asyncio.get_running_loop())  # may have been attached to an older loop
            return True
        watcher = asyncio.PidfdChildWatcher()
        asyncio.set_child_watcher(watcher)
        watcher.attach_loop(asyncio.get_running_loop())
    return True
