"""Tiny "who am I" TCP/UDP server and client for kernel tests (stdlib only, runs in a netns).

    whoami.py serve --name NAME [--port 80] [--udp] [--no-tcp] [--peer]
        binds [::]:PORT (dual stack), prints "ready", answers every connection/datagram with
        "NAME\n" (or "NAME PEER_IP\n" with --peer) and closes.
    whoami.py ask [--count N] [--udp] [--timeout S] [--source ADDR] HOST PORT
        N fresh connections/datagrams; prints one answer per line, or "!ErrorName" on failure.
        Exit status 0 only if every attempt got an answer.
"""

from __future__ import annotations

import argparse
import selectors
import socket
import sys


def serve(name: str, port: int, tcp: bool, udp: bool, peer: bool) -> None:
    """Answer forever."""
    sel = selectors.DefaultSelector()
    for kind, enabled in ((socket.SOCK_STREAM, tcp), (socket.SOCK_DGRAM, udp)):
        if not enabled:
            continue
        sock = socket.socket(socket.AF_INET6, kind)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_IP, 19, 1)  # IP_FREEBIND: answer for VIPs added later too
        sock.bind(("::", port))
        if kind == socket.SOCK_STREAM:
            sock.listen(128)
        sel.register(sock, selectors.EVENT_READ)
    print("ready", flush=True)

    def answer(addr: tuple[str, ...]) -> bytes:
        ip = addr[0].removeprefix("::ffff:")
        return (f"{name} {ip}\n" if peer else f"{name}\n").encode()

    while True:
        for key, _ in sel.select():
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                if sock.type == socket.SOCK_STREAM:
                    conn, addr = sock.accept()
                    with conn:
                        conn.sendall(answer(addr))
                else:
                    _data, addr = sock.recvfrom(2048)
                    sock.sendto(answer(addr), addr)
            except OSError:
                continue


def ask_once(host: str, port: int, udp: bool, timeout: float, source: str | None) -> str:
    """One exchange; the answer line or '!ErrorName'."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    kind = socket.SOCK_DGRAM if udp else socket.SOCK_STREAM
    try:
        with socket.socket(family, kind) as sock:
            sock.settimeout(timeout)
            if source:
                sock.bind((source, 0))
            sock.connect((host, port))
            if udp:
                sock.send(b"?")
                data = sock.recv(2048)
            else:
                chunks = []
                while chunk := sock.recv(2048):
                    chunks.append(chunk)
                data = b"".join(chunks)
        text = data.decode(errors="replace").strip()
        return text if text else "!Empty"
    except OSError as exc:
        return f"!{type(exc).__name__}"


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=fmt)
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--name", required=True)
    s.add_argument("--port", type=int, default=80)
    s.add_argument("--udp", action="store_true")
    s.add_argument("--no-tcp", action="store_true")
    s.add_argument("--peer", action="store_true")
    a = sub.add_parser("ask")
    a.add_argument("--count", type=int, default=1)
    a.add_argument("--udp", action="store_true")
    a.add_argument("--timeout", type=float, default=3.0)
    a.add_argument("--source")
    a.add_argument("host")
    a.add_argument("port", type=int)
    args = parser.parse_args(argv)
    if args.cmd == "serve":
        serve(args.name, args.port, not args.no_tcp, args.udp, args.peer)
        return 0
    answers = [ask_once(args.host, args.port, args.udp, args.timeout, args.source) for _ in range(args.count)]
    print("\n".join(answers), flush=True)
    return 0 if all(not x.startswith("!") for x in answers) else 1


if __name__ == "__main__":
    sys.exit(main())
