"""Real probes against servers on the host loopback (127.0.0.1 / ::1), started inside each test."""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from ipvsync.health import dnswire
from ipvsync.health.probes import (
    ProbeResult,
    ProbeSpec,
    TcpConnector,
    decode_payload,
    probe_template,
    run_probe,
    spec_for,
    status_ranges,
    use_pidfd_child_watcher,
)

LO = "127.0.0.1"


def spec(kind: str, port: int = 0, addr: str = LO, **kw: Any) -> ProbeSpec:
    s = spec_for({"type": kind, "timeout": kw.pop("timeout", 1.0), **kw}, addr, port)
    assert s is not None
    return s


def probe(s: ProbeSpec) -> ProbeResult:
    return asyncio.run(run_probe(s))


def free_port(kind: int = socket.SOCK_STREAM, family: int = socket.AF_INET) -> int:
    """A port nothing listens on (bound and released)."""
    with socket.socket(family, kind) as s:
        s.bind(("::1" if family == socket.AF_INET6 else LO, 0))
        return s.getsockname()[1]


def with_server(start: Callable[[], Awaitable[Any]], body: Callable[[Any], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        srv = await start()
        try:
            return await body(srv)
        finally:
            close = getattr(srv, "close", None)
            if close:
                close()

    return asyncio.run(main())


# ---------------------------------------------------------------------------------------------- tcp

def test_tcp_up_and_refused():
    with socket.socket() as ls:
        ls.bind((LO, 0))
        ls.listen(16)
        r = probe(spec("tcp", ls.getsockname()[1]))
    assert r.ok and r.reason == "ok" and 0 <= r.latency < 1
    r = probe(spec("tcp", free_port()))
    assert not r.ok and r.reason == "refused"


def test_tcp_timeout_on_full_backlog():
    with socket.socket() as ls:
        ls.bind((LO, 0))
        ls.listen(0)
        port = ls.getsockname()[1]
        fillers = []
        try:
            for _ in range(4):  # accept queue full: further SYNs are dropped
                c = socket.socket()
                c.setblocking(False)
                c.connect_ex((LO, port))
                fillers.append(c)
            time.sleep(0.05)
            t0 = time.monotonic()
            r = probe(spec("tcp", port, timeout=0.3))
            took = time.monotonic() - t0
        finally:
            for c in fillers:
                c.close()
    assert not r.ok and r.reason == "timeout"
    assert 0.25 < took < 2.5


def connector_probes(specs: list[ProbeSpec]) -> list[ProbeResult]:
    """Run specs through TcpConnector (the monitor's TCP hot path), all at once."""

    async def main() -> list[ProbeResult]:
        loop = asyncio.get_running_loop()
        tcp = TcpConnector(loop)
        results: dict[int, ProbeResult] = {}
        done = loop.create_future()

        def finish(i: int, r: ProbeResult, now: float) -> None:
            assert now <= time.monotonic()
            results[i] = r
            if len(results) == len(specs):
                done.set_result(None)

        for i, s in enumerate(specs):
            tcp.start(s, lambda r, now, i=i: finish(i, r, now))
        await asyncio.wait_for(done, 10)
        assert len(tcp) == 0 and tcp.close() == 0
        return [results[i] for i in range(len(specs))]

    return asyncio.run(main())


def test_tcp_connector_same_results_as_probe_tcp():
    with socket.socket() as ls, socket.socket() as full:
        ls.bind((LO, 0))
        ls.listen(64)
        full.bind((LO, 0))
        full.listen(0)
        fport = full.getsockname()[1]
        fillers = []
        try:
            for _ in range(4):  # accept queue full: further SYNs are dropped
                c = socket.socket()
                c.setblocking(False)
                c.connect_ex((LO, fport))
                fillers.append(c)
            time.sleep(0.05)
            specs = [spec("tcp", ls.getsockname()[1]), spec("tcp", free_port()),
                     spec("tcp", fport, timeout=0.3), spec("tcp", fport, timeout=0.2),
                     spec("tcp", ls.getsockname()[1], source_address="192.0.2.77")]
            t0 = time.monotonic()
            got = connector_probes(specs)
            took = time.monotonic() - t0
            want = [probe(s) for s in specs]
        finally:
            for c in fillers:
                c.close()
    assert [(r.ok, r.reason) for r in got] == [(r.ok, r.reason) for r in want]
    assert [(r.ok, r.reason) for r in got][:4] == [(True, "ok"), (False, "refused"), (False, "timeout"),
                                                   (False, "timeout")]
    assert 0.25 < got[2].latency < 2 and 0.15 < got[3].latency < got[2].latency
    assert 0.25 < took < 2.5


def test_tcp_connector_close_abandons_inflight():
    with socket.socket() as full:
        full.bind((LO, 0))
        full.listen(0)
        port = full.getsockname()[1]
        fillers = [socket.socket() for _ in range(4)]
        for c in fillers:
            c.setblocking(False)
            c.connect_ex((LO, port))
        time.sleep(0.05)

        async def main() -> int:
            tcp = TcpConnector(asyncio.get_running_loop())
            seen: list[ProbeResult] = []
            tcp.start(spec("tcp", port, timeout=0.2), lambda r, now: seen.append(r))
            n = tcp.close()
            await asyncio.sleep(0.4)
            assert seen == []
            return n

        try:
            assert asyncio.run(main()) == 1
        finally:
            for c in fillers:
                c.close()


def test_tcp_connector_reuses_sockets_and_resets():
    """A passed probe's socket is disconnected (RST, as SO_LINGER 0) and reused; a deferred batch
    finishes in flush() when the connect is already over; a refused probe's socket is not reused."""
    with socket.socket() as ls:
        ls.bind((LO, 0))
        ls.listen(64)
        port = ls.getsockname()[1]
        refused = free_port()

        async def main() -> None:
            loop = asyncio.get_running_loop()
            tcp = TcpConnector(loop)
            seen: list[tuple[bool, str]] = []
            fds = []
            for target in (port, port, refused, port):
                tcp.start(spec("tcp", target), lambda r, now: seen.append((r.ok, r.reason)), defer=True)
                fds.append(next(iter(tcp._pending)))
                await asyncio.sleep(0.05)  # connected (or refused) by now
                tcp.flush()
                assert len(tcp) == 0  # finished inside flush, not through the epoll
                if target == port:
                    conn, _ = ls.accept()
                    with conn, pytest.raises(ConnectionResetError):
                        conn.recv(1)
            assert seen == [(True, "ok"), (True, "ok"), (False, "refused"), (True, "ok")]
            if tcp._disconnect is not None:
                assert fds[0] == fds[1] == fds[2]  # the pooled socket, reconnected
                assert tcp._nidle == 1
            assert tcp.close() == 0

        asyncio.run(main())


def test_tcp_ipv6_loopback():
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        ls = socket.socket(socket.AF_INET6)
        ls.bind(("::1", 0))
    except OSError as exc:
        pytest.skip(f"no ::1: {exc}")
    with ls:
        ls.listen(4)
        assert probe(spec("tcp", ls.getsockname()[1], addr="::1")).ok
    assert probe(spec("tcp", free_port(family=socket.AF_INET6), addr="::1")).reason == "refused"


def test_tcp_fwmark_and_connect_port():
    with socket.socket() as ls:
        ls.bind((LO, 0))
        ls.listen(4)
        port = ls.getsockname()[1]
        s = spec_for({"type": "tcp", "timeout": 1, "connect_port": port, "fwmark": 7}, LO, 1)
        assert s is not None and s.port == port and s.fwmark == 7
        r = probe(s)
    if os.geteuid() == 0:
        assert r.ok, r  # SO_MARK needs CAP_NET_ADMIN
    else:
        assert not r.ok and r.reason == "eperm"


# ---------------------------------------------------------------------------------------------- http

class Http:
    """A tiny HTTP server: /ok 200, /fail 503, /chunked, /big, /hang (never answers)."""

    def __init__(self) -> None:
        self.peers: list[str] = []
        self.requests: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.peers.append(writer.get_extra_info("peername")[0])
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        self.requests.append(head)
        path = head.split(b" ")[1].decode()
        if path == "/hang":
            await asyncio.sleep(10)
        elif path == "/chunked":
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"5\r\nhello\r\n7\r\n world!\r\n0\r\n\r\n")
        elif path == "/big":
            body = b"x" * 100000 + b"MARKER"
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        elif path == "/garbage":
            writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")
        else:
            code = 200 if path in ("/ok", "/") else 503
            body = b"status: all good" if code == 200 else b"down for maintenance"
            writer.write(b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n" % (code, len(body)) + body)
        try:
            await writer.drain()
        except ConnectionError:
            pass
        writer.close()


def http_case(probes: list[dict[str, Any]], tls: ssl.SSLContext | None = None,
              source: str | None = None) -> tuple[list[ProbeResult], Http]:
    h = Http()

    async def body(srv: asyncio.Server) -> list[ProbeResult]:
        port = srv.sockets[0].getsockname()[1]
        kind = "https" if tls else "http"
        return [await run_probe(spec(kind, port, **p)) for p in probes]

    res = with_server(lambda: asyncio.start_server(h.handle, LO, 0, ssl=tls), body)
    return res, h


def test_http_status_body_regex():
    res, h = http_case([
        {"path": "/ok"},
        {"path": "/fail"},
        {"path": "/fail", "status": [503]},
        {"path": "/ok", "status": ["300-399"]},
        {"path": "/ok", "body_regex": "all g[o]+d"},
        {"path": "/ok", "body_regex": "^nope"},
        {"path": "/chunked", "body_regex": "hello world!"},
        {"path": "/big", "body_regex": "MARKER"},
        {"path": "/big", "body_regex": "MARKER", "body_max": 200000},
        {"path": "/ok", "method": "HEAD", "body_regex": "never read"},
        {"path": "/garbage"},
        {"path": "/ok", "host": "www.example.org"},
    ])
    assert [(r.ok, r.reason) for r in res] == [
        (True, "status 200"), (False, "status 503"), (True, "status 503"), (False, "status 200"),
        (True, "status 200"), (False, "regex mismatch"), (True, "status 200"), (False, "regex mismatch"),
        (True, "status 200"), (True, "status 200"), (False, "bad response"), (True, "status 200"),
    ]
    assert b"Host: www.example.org\r\n" in h.requests[-1]
    assert h.requests[0].startswith(b"GET /ok HTTP/1.1\r\nHost: 127.0.0.1:")


def test_http_timeout_when_server_never_answers():
    t0 = time.monotonic()
    res, _ = http_case([{"path": "/hang", "timeout": 0.2}])
    assert (res[0].ok, res[0].reason) == (False, "timeout")
    assert time.monotonic() - t0 < 2


def test_http_refused_and_source_address():
    assert probe(spec("http", free_port())).reason == "refused"
    res, h = http_case([{"path": "/ok", "source_address": "127.0.0.2"}])
    assert res[0].ok and h.peers == ["127.0.0.2"]


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    if not shutil.which("openssl"):
        pytest.skip("openssl CLI not available to make a self-signed certificate")
    d = tmp_path_factory.mktemp("tls")
    crt, key = str(d / "c.pem"), str(d / "k.pem")
    r = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                        "-out", crt, "-days", "2", "-subj", "/CN=test.example",
                        "-addext", "subjectAltName=DNS:test.example,IP:127.0.0.1"],
                       capture_output=True, timeout=60)
    if r.returncode != 0:
        pytest.skip(f"openssl failed: {r.stderr.decode()[-200:]}")
    return crt, key


def test_https_verify_sni_and_errors(cert):
    crt, key = cert
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(crt, key)
    res, _ = http_case([
        {"path": "/ok", "ca_file": crt, "sni": "test.example"},
        {"path": "/ok", "ca_file": crt},  # verified against the IP SAN
        {"path": "/ok"},  # system CAs: self-signed fails
        {"path": "/ok", "tls_verify": False},
        {"path": "/ok", "ca_file": crt, "sni": "wrong.example"},
        {"path": "/fail", "tls_verify": False},
    ], tls=ctx)
    assert [r.ok for r in res] == [True, True, False, True, False, False]
    assert res[2].reason.startswith("tls: ") and "self" in res[2].reason
    assert res[4].reason.startswith("tls: ") and "mismatch" in res[4].reason
    assert res[5].reason == "status 503"


def test_https_against_plain_server_fails():
    res, _ = http_case([{"path": "/ok"}])
    assert res[0].ok
    with socket.socket() as ls:  # a TCP server that speaks no TLS and closes
        ls.bind((LO, 0))
        ls.listen(4)
        r = probe(spec("https", ls.getsockname()[1], timeout=0.3, tls_verify=False))
    assert not r.ok and (r.reason in ("timeout", "connection closed", "reset") or r.reason.startswith("tls"))


def test_status_ranges():
    assert status_ranges(None) == ((200, 399),)
    assert status_ranges([200, "300-302", "404"]) == ((200, 200), (300, 302), (404, 404))


# ---------------------------------------------------------------------------------------------- udp

class Udp(asyncio.DatagramProtocol):
    def __init__(self, reply: Callable[[bytes], bytes | None]) -> None:
        self.reply = reply
        self.got: list[bytes] = []

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.got.append(data)
        out = self.reply(data)
        if out is not None:
            self.transport.sendto(out, addr)


def udp_case(reply: Callable[[bytes], bytes | None], probes: list[dict[str, Any]], kind: str = "udp"
             ) -> tuple[list[ProbeResult], Udp]:
    proto = Udp(reply)

    async def start() -> Any:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: proto, local_addr=(LO, 0))
        return transport

    async def body(tr: Any) -> list[ProbeResult]:
        port = tr.get_extra_info("sockname")[1]
        return [await run_probe(spec(kind, port, **p)) for p in probes]

    return with_server(start, body), proto


def test_udp_reply_expect_and_silence():
    res, proto = udp_case(lambda d: b"PONG " + d, [
        {"payload": "PING\\x00\\x01", "expect": "^PONG PING\\x00\\x01$"},
        {"payload": "PING", "expect": "NOPE"},
        {"payload": "PING"},
    ])
    assert [(r.ok, r.reason) for r in res] == [(True, "reply matched"), (False, "regex mismatch"),
                                                (True, "reply")]
    assert proto.got[0] == b"PING\x00\x01"
    res, _ = udp_case(lambda d: None, [{"payload": "x", "timeout": 0.15},
                                       {"payload": "x", "timeout": 0.15, "expect": "."}])
    assert [(r.ok, r.reason) for r in res] == [(True, "no error"), (False, "timeout")]


def test_udp_icmp_port_unreachable_is_down():
    r = probe(spec("udp", free_port(socket.SOCK_DGRAM), payload="x", timeout=0.5))
    assert (r.ok, r.reason) == (False, "refused")
    r = probe(spec("udp", free_port(socket.SOCK_DGRAM), payload="x", timeout=0.5, expect="."))
    assert (r.ok, r.reason) == (False, "refused")


def test_decode_payload():
    assert decode_payload("a\\x00\\xffé") == b"a\x00\xff\xc3\xa9"


# ---------------------------------------------------------------------------------------------- dns

def dns_reply(query: bytes) -> bytes | None:
    """NOERROR + A for ok.test, NXDOMAIN for nx.test, NOERROR/no answer for empty.test, wrong id for
    spoof.test (then the right reply), nothing for silent.test."""
    qid, = struct.unpack_from("!H", query)
    qname, _ = dnswire._name(query, 12)
    q = query[12:]
    if qname == "silent.test.":
        return None
    rcode, answers = 0, b""
    if qname in ("ok.test.", "spoof.test."):
        answers = struct.pack("!HHHIH", 0xC00C, 1, 1, 60, 4) + socket.inet_aton("192.0.2.7")
    elif qname == "nx.test.":
        rcode = 3
    header = struct.pack("!HHHHHH", qid, 0x8180 | rcode, 1, 1 if answers else 0, 0, 0)
    return header + q + answers


def test_dns_noerror_nxdomain_noanswer_timeout():
    res, proto = udp_case(dns_reply, [
        {"query_name": "ok.test", "query_type": "A"},
        {"query_name": "nx.test", "query_type": "A"},
        {"query_name": "empty.test", "query_type": "AAAA"},
        {"query_name": "silent.test", "timeout": 0.15},
    ], kind="dns")
    assert [(r.ok, r.reason) for r in res] == [(True, "NOERROR 1 answers"), (False, "NXDOMAIN"),
                                                (False, "no answer"), (False, "timeout")]
    rq = dnswire.decode_reply(proto.got[0])  # our query parses as a message with one question
    assert rq.question == dnswire.question("ok.test", "A") and not rq.is_response
    r = probe(spec("dns", free_port(socket.SOCK_DGRAM), timeout=0.5))
    assert (r.ok, r.reason) == (False, "refused")


def test_dns_ignores_replies_with_wrong_id():
    def spoofing(q: bytes) -> bytes | None:
        good = dns_reply(q)
        assert good is not None
        return bytes([good[0] ^ 0xFF]) + good[1:]

    res, _ = udp_case(spoofing, [{"query_name": "spoof.test", "query_type": "A", "timeout": 0.2}], kind="dns")
    assert (res[0].ok, res[0].reason) == (False, "timeout")


def test_dnswire_codec():
    q = dnswire.encode_query(0x1234, "www.Example.org.", "MX")
    assert q[:12] == b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
    assert q[12:] == b"\x03www\x07Example\x03org\x00\x00\x0f\x00\x01"
    assert dnswire.encode_name(".") == b"\x00"
    with pytest.raises(dnswire.DnsError):
        dnswire.encode_name("a" * 64 + ".org")
    with pytest.raises(dnswire.DnsError):
        dnswire.decode_reply(b"\x00" * 5)
    loop = b"\x00\x01\x81\x80\x00\x00\x00\x01\x00\x00\x00\x00" + b"\xc0\x0c"
    with pytest.raises(dnswire.DnsError):
        dnswire.decode_reply(loop)
    rep = dnswire.decode_reply(dns_reply(q[:12] + dnswire.question("ok.test", "A")) or b"")
    assert rep.rcode_name == "NOERROR" and rep.answers[0].name == "ok.test." and rep.answers[0].rdata == \
        socket.inet_aton("192.0.2.7")


# ---------------------------------------------------------------------------------------------- exec

PY = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable


def exec_spec(code: str, *args: str, timeout: float = 3.0, **kw: Any) -> ProbeSpec:
    tpl = probe_template({"type": "exec", "command": [PY, "-c", code, *args], "timeout": timeout, **kw})
    assert tpl is not None
    env = {"IPVSYNC_SERVICE": "web", "IPVSYNC_VIP": "192.0.2.1", "IPVSYNC_VPORT": "80",
           "IPVSYNC_RS_ADDR": "10.0.0.1", "IPVSYNC_RS_PORT": "8080", "IPVSYNC_PROTOCOL": "tcp"}
    return tpl.spec("10.0.0.1", 8080, env)


def test_exec_exit_codes_and_env():
    check_env = ("import os, sys; e = os.environ; sys.exit(0 if (e['IPVSYNC_SERVICE'], e['IPVSYNC_VIP'], "
                 "e['IPVSYNC_VPORT'], e['IPVSYNC_RS_ADDR'], e['IPVSYNC_RS_PORT'], e['IPVSYNC_PROTOCOL']) == "
                 "('web', '192.0.2.1', '80', '10.0.0.1', '8080', 'tcp') else 5)")
    rs = [probe(exec_spec("import sys; sys.exit(0)")), probe(exec_spec("import sys; sys.exit(2)")),
          probe(exec_spec(check_env)), probe(exec_spec("import os; os.kill(os.getpid(), 15)"))]
    assert [(r.ok, r.reason) for r in rs] == [(True, "exit 0"), (False, "exit 2"), (True, "exit 0"),
                                              (False, "signal SIGTERM")]


def test_exec_no_shell():
    code = "import sys; sys.exit(0 if sys.argv[1:] == ['a; exit 3', '$(false)', '*'] else 4)"
    r = probe(exec_spec(code, "a; exit 3", "$(false)", "*"))
    assert (r.ok, r.reason) == (True, "exit 0")
    r = probe(spec_for({"type": "exec", "command": ["/nonexistent/check"]}, LO, 80))  # type: ignore[arg-type]
    assert not r.ok and r.reason.startswith("cannot run /nonexistent/check")


def test_exec_timeout_kills_process_group():
    import tempfile

    d = tempfile.mkdtemp(prefix="ipvsync-health-")  # pytest's tmp_path is not reachable by nobody
    os.chmod(d, 0o777)
    pidfile = Path(d) / "child.pid"
    code = ("import subprocess, sys, time; p = subprocess.Popen(['sleep', '30']); "
            f"open({str(pidfile)!r}, 'w').write(str(p.pid)); time.sleep(30)")
    t0 = time.monotonic()
    r = probe(exec_spec(code, timeout=0.5))
    assert (r.ok, r.reason) == (False, "timeout") and time.monotonic() - t0 < 3
    pid = int(pidfile.read_text())
    time.sleep(0.05)
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0]
    except FileNotFoundError:
        state = "gone"
    shutil.rmtree(d)
    assert state in ("gone", "Z", "X")


def test_exec_runs_unprivileged():
    if os.geteuid() != 0:
        r = probe(exec_spec("import sys; sys.exit(0)", user="root"))
        assert not r.ok and "not root" in r.reason
        return
    nobody = pwd.getpwnam("nobody")
    code = f"import os, sys; sys.exit(0 if (os.getuid(), os.getgid(), os.getgroups()) == ({nobody.pw_uid}, " \
           f"{nobody.pw_gid}, []) else 6)"
    assert probe(exec_spec(code)).reason == "exit 0"  # root daemon, no user: nobody
    assert probe(exec_spec(code, user="nobody")).reason == "exit 0"
    assert probe(exec_spec(code, user="no-such-user-xyz")).reason == "no such user no-such-user-xyz"


def test_exec_with_pidfd_child_watcher():
    async def main() -> ProbeResult:
        assert use_pidfd_child_watcher()
        return await run_probe(exec_spec("import sys; sys.exit(3)"))

    import warnings

    try:
        assert asyncio.run(main()).reason == "exit 3"
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            asyncio.set_child_watcher(asyncio.ThreadedChildWatcher())


# ---------------------------------------------------------------------------------------------- file, none

def test_file_switch(tmp_path: Path):
    path = tmp_path / "maint-web"
    s = spec_for({"type": "file", "path": str(path)}, "10.0.0.1", 80)
    assert s is not None and s.address == "" and s.port == 0  # shared by every server naming that file
    r = probe(s)
    assert (r.ok, r.reason, r.weight) == (True, "file absent", None)
    path.write_text("")
    r = probe(s)
    assert (r.ok, r.reason, r.weight) == (False, "file present", 0)
    path.write_text("5\n")
    r = probe(s)
    assert (r.ok, r.reason, r.weight) == (True, "file weight 5", 5)
    path.write_text("0")
    assert probe(s).weight == 0 and not probe(s).ok
    path.write_text("maintenance by bob")
    assert probe(s).reason == "file present"


def test_none_has_no_spec_and_specs_dedup():
    assert spec_for({"type": "none"}, LO, 80) is None
    a = spec_for({"type": "http", "path": "/h", "status": [200, "300-399"], "rise": 1}, LO, 80)
    b = spec_for({"type": "http", "path": "/h", "status": [200, "300-399"], "fall": 9, "interval": 9}, LO, 80)
    c = spec_for({"type": "http", "path": "/x", "status": [200, "300-399"]}, LO, 80)
    assert a == b and hash(a) == hash(b) and a != c
    assert a is not None and a.describe() == "http GET 127.0.0.1:80/h"
