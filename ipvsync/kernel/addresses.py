"""Writes to links and addresses: links through pyroute2's IPRoute (0.7.2 and current, imported
lazily), VIP addresses through a small stdlib rtnetlink socket of our own.

Rules of residence: the only module that changes links or addresses. VIPs are /32 or /128 with
IFA_F_NOPREFIXROUTE (and IFA_F_NODAD for IPv6); on a real (non-dummy) interface a gratuitous ARP or
unsolicited neighbour advertisement tells the segment where the VIP now lives.

Why addresses bypass pyroute2: binding 1000 VIPs is one RTM_NEWADDR each; through pyroute2 (0.9
runs an event loop per call, and every call also needed a link_lookup round trip) that cost ~1.8 ms
per VIP on a host and ~19 s for 1000 VIPs under UML, against ~20 µs for the bare request + ack.
The interface index comes from if_nametoindex(3) and is cached per name for a short while (one
apply's burst of binds); a stale index is caught by the kernel (ENODEV) and retried once afresh.
"""

from __future__ import annotations

import errno as _errno
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ipvsync.model import AF_INET6, Vip

IFA_F_NODAD = 0x02
IFA_F_NOPREFIXROUTE = 0x200

NETLINK_ROUTE = 0
RTM_NEWADDR, RTM_DELADDR = 20, 21
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x200, 0x400
NLMSG_ERROR = 2
IFA_ADDRESS, IFA_LOCAL, IFA_FLAGS = 1, 2, 8
INDEX_TTL = 2.0  # seconds an interface index is trusted without asking again

_NLMSG = struct.Struct("=IHHII")
_IFADDR = struct.Struct("=BBBBI")
_RTA = struct.Struct("=HH")
_U32 = struct.Struct("=I")
_I32 = struct.Struct("=i")


class _AddrSocket:
    """RTM_NEWADDR / RTM_DELADDR with an ack, on a plain NETLINK_ROUTE socket (thread-safe)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        self.sock.bind((0, 0))
        self.sock.settimeout(60)
        self.buf = bytearray(1 << 16)
        self.seq = 0
        self.lock = threading.Lock()

    def close(self) -> None:
        self.sock.close()

    def request(self, mtype: int, flags: int, family: int, prefixlen: int, ifa_flags: int, index: int,
                address: str) -> None:
        raw = socket.inet_pton(family, address)
        rta = _RTA.pack(4 + len(raw), IFA_LOCAL) + raw + _RTA.pack(4 + len(raw), IFA_ADDRESS) + raw
        if mtype == RTM_NEWADDR:
            rta += _RTA.pack(8, IFA_FLAGS) + _U32.pack(ifa_flags)
        body = _IFADDR.pack(family, prefixlen, ifa_flags & 0xFF, 0, index) + rta
        with self.lock:
            self.seq = (self.seq + 1) & 0xFFFFFFFF
            seq = self.seq
            self.sock.send(_NLMSG.pack(_NLMSG.size + len(body), mtype, NLM_F_REQUEST | NLM_F_ACK | flags, seq, 0)
                           + body)
            while True:
                n = self.sock.recv_into(self.buf)
                off = 0
                while off + _NLMSG.size <= n:
                    ln, typ, _f, mseq, _pid = _NLMSG.unpack_from(self.buf, off)
                    if ln < _NLMSG.size:
                        break
                    if mseq == seq and typ == NLMSG_ERROR and ln >= _NLMSG.size + 4:
                        err = -_I32.unpack_from(self.buf, off + _NLMSG.size)[0]
                        if err:
                            raise OSError(err, os.strerror(err))
                        return
                    off += (ln + 3) & ~3


class LinkWriter:
    """Link writes through a lazy IPRoute (pyroute2 is imported on the first link write only);
    VIP binds through `_AddrSocket`.

    Every pyroute2 call runs on one private worker thread: pyroute2 >= 0.9 drives its own asyncio
    loop and cannot be called from a thread whose loop is already running (the daemon's). bind and
    unbind do not use pyroute2 and run on the caller's thread (no hop per VIP).
    """

    def __init__(self) -> None:
        self._ipr: Any = None
        self._pool: ThreadPoolExecutor | None = None
        self._addr: _AddrSocket | None = None
        self._indexes: dict[str, tuple[int, float]] = {}  # name -> (ifindex, looked up at)

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="ipvsync-iproute")
        return self._pool.submit(fn, *args, **kwargs).result(timeout=60)

    @property
    def ipr(self) -> Any:
        if self._ipr is None:
            from pyroute2 import IPRoute

            self._ipr = IPRoute()
        return self._ipr

    def close(self) -> None:
        if self._addr is not None:
            self._addr.close()
            self._addr = None
        self._indexes.clear()
        if self._ipr is not None:
            self._call(self._ipr.close)
            self._ipr = None
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def index(self, *args: Any, **kwargs: Any) -> Any:
        return self._call(self._index, *args, **kwargs)

    def _index(self, name: str) -> int:
        try:
            return socket.if_nametoindex(name)
        except (OSError, ValueError):
            raise OSError(_errno.ENODEV, f"no interface named {name}") from None

    def _cached_index(self, name: str) -> int:
        """The interface index, trusted for INDEX_TTL s (a burst of binds asks the kernel once)."""
        hit = self._indexes.get(name)
        now = time.monotonic()
        if hit is not None and now - hit[1] < INDEX_TTL:
            return hit[0]
        index = self._index(name)
        self._indexes[name] = (index, now)
        return index

    def _addr_request(self, mtype: int, flags: int, vip: Vip, ifa_flags: int) -> int:
        """One address request; a cached index the kernel no longer knows is looked up again once."""
        if self._addr is None:
            self._addr = _AddrSocket()
        family = socket.AF_INET6 if vip.family == AF_INET6 else socket.AF_INET
        for attempt in (0, 1):
            index = self._cached_index(vip.interface)
            try:
                self._addr.request(mtype, flags, family, vip.prefixlen, ifa_flags, index, vip.address)
                return index
            except OSError as exc:
                self._indexes.pop(vip.interface, None)
                if attempt or exc.errno != _errno.ENODEV:
                    raise
        raise AssertionError("unreachable")

    def create_dummy(self, *args: Any, **kwargs: Any) -> Any:
        return self._call(self._create_dummy, *args, **kwargs)

    def _create_dummy(self, name: str) -> None:
        self._indexes.pop(name, None)
        self.ipr.link("add", ifname=name, kind="dummy")
        self.ipr.link("set", index=self._index(name), state="up")

    def delete_link(self, *args: Any, **kwargs: Any) -> Any:
        return self._call(self._delete_link, *args, **kwargs)

    def _delete_link(self, name: str) -> None:
        self._indexes.pop(name, None)
        self.ipr.link("del", index=self._index(name))

    def set_up(self, *args: Any, **kwargs: Any) -> Any:
        return self._call(self._set_up, *args, **kwargs)

    def _set_up(self, name: str, up: bool = True) -> None:
        self.ipr.link("set", index=self._index(name), state="up" if up else "down")

    # bind/unbind do not touch pyroute2, so they need no hop to the worker thread
    def bind(self, vip: Vip, announce: bool = False) -> None:
        self._bind(vip, announce)

    def _bind(self, vip: Vip, announce: bool = False) -> None:
        flags = IFA_F_NOPREFIXROUTE | (IFA_F_NODAD if vip.family == AF_INET6 else 0)
        index = self._addr_request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, vip, flags)
        if announce:
            try:
                announce_vip(vip, index)
            except OSError as exc:  # best effort: the neighbours learn it on their next ARP/ND anyway
                logging.getLogger("ipvsync.addresses").warning(
                    "VIP %s bound on %s, but no gratuitous ARP/NA was sent (%s); with the packaged unit, "
                    "allow AF_PACKET: /usr/share/doc/ipvsync/examples/systemd/garp.conf", vip.address,
                    vip.interface, exc.strerror or exc, extra={"VIP": vip.address})

    def unbind(self, vip: Vip) -> None:
        self._unbind(vip)

    def _unbind(self, vip: Vip) -> None:
        self._addr_request(RTM_DELADDR, 0, vip, 0)


def _mac(ifname: str) -> bytes:
    with open(f"/sys/class/net/{ifname}/address") as fh:
        return bytes.fromhex(fh.read().strip().replace(":", ""))


def announce_vip(vip: Vip, index: int) -> None:
    """Gratuitous ARP (IPv4) or unsolicited neighbour advertisement (IPv6) for a freshly bound VIP."""
    mac = _mac(vip.interface)
    if len(mac) != 6:
        return
    if vip.family == AF_INET6:
        _unsolicited_na(vip, index, mac)
        return
    ip = socket.inet_aton(vip.address)
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, mac, ip, b"\xff" * 6, ip)
    frame = b"\xff" * 6 + mac + struct.pack("!H", 0x0806) + arp
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
        s.bind((vip.interface, 0))
        for _ in range(2):
            s.send(frame)


def _unsolicited_na(vip: Vip, index: int, mac: bytes) -> None:
    target = socket.inet_pton(socket.AF_INET6, vip.address)
    # type 136, code 0, checksum (kernel fills it for ICMPv6 raw sockets), flags: override
    body = struct.pack("!BBHI", 136, 0, 0, 0x20000000) + target + struct.pack("!BB", 2, 1) + mac
    with socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6) as s:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
        try:
            s.bind((vip.address, 0, 0, index))
        except OSError:
            pass
        s.sendto(body, ("ff02::1", 0, 0, index))
