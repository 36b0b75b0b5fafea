"""Read-only rtnetlink on a stdlib socket: links and addresses, plus change events.

Rules of residence: reading only. Observing the VIP interface must not pay for importing pyroute2
(≈2 s under UML), so `plan` and a no-op `apply` stay cheap; writes live in addresses.py.
"""

from __future__ import annotations

import os
import socket
import struct
from dataclasses import dataclass

NETLINK_ROUTE = 0
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
NLM_F_REQUEST, NLM_F_ACK, NLM_F_ROOT, NLM_F_MATCH = 0x1, 0x4, 0x100, 0x200
NLM_F_DUMP = NLM_F_ROOT | NLM_F_MATCH
NLMSG_ERROR, NLMSG_DONE = 2, 3
IFLA_IFNAME, IFLA_LINKINFO, IFLA_INFO_KIND = 3, 18, 1
IFA_ADDRESS, IFA_LOCAL, IFA_LABEL, IFA_FLAGS = 1, 2, 3, 8
IFF_UP = 0x1
RTMGRP_LINK, RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR = 0x1, 0x10, 0x100

_NLMSG = struct.Struct("=IHHII")
_IFINFO = struct.Struct("=BxHiII")
_IFADDR = struct.Struct("=BBBBI")
_RTA = struct.Struct("=HH")


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    up: bool
    kind: str


@dataclass(frozen=True)
class Address:
    index: int
    family: int
    address: str
    prefixlen: int


def _attrs(buf: memoryview, off: int, end: int) -> dict[int, memoryview]:
    out: dict[int, memoryview] = {}
    while off + 4 <= end:
        ln, kind = _RTA.unpack_from(buf, off)
        if ln < 4:
            break
        out[kind & 0x3FFF] = buf[off + 4: off + ln]
        off += (ln + 3) & ~3
    return out


class Rtnl:
    """A small rtnetlink reader with one reused receive buffer."""

    def __init__(self, groups: int = 0) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        self.sock.bind((0, groups))
        self.buf = bytearray(1 << 16)
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def fileno(self) -> int:
        return self.sock.fileno()

    def _dump(self, mtype: int, body: bytes) -> list[tuple[int, memoryview]]:
        self.seq += 1
        msg = _NLMSG.pack(_NLMSG.size + len(body), mtype, NLM_F_REQUEST | NLM_F_DUMP, self.seq, 0) + body
        self.sock.send(msg)
        out: list[tuple[int, memoryview]] = []
        while True:
            n = self.sock.recv_into(self.buf)
            view = memoryview(self.buf)[:n]
            off = 0
            while off + _NLMSG.size <= n:
                ln, typ, _flags, seq, _pid = _NLMSG.unpack_from(view, off)
                if ln < _NLMSG.size:
                    return out
                if seq == self.seq:
                    if typ == NLMSG_DONE:
                        return out
                    if typ == NLMSG_ERROR:
                        err = -struct.unpack_from("=i", view, off + _NLMSG.size)[0]
                        if err:
                            raise OSError(err, os.strerror(err))
                        return out
                    out.append((typ, memoryview(bytes(view[off + _NLMSG.size: off + ln]))))
                off += (ln + 3) & ~3

    def links(self) -> dict[str, Link]:
        out: dict[str, Link] = {}
        for _typ, m in self._dump(RTM_GETLINK, _IFINFO.pack(0, 0, 0, 0, 0)):
            _fam, _typ2, index, flags, _change = _IFINFO.unpack_from(m, 0)
            attrs = _attrs(m, _IFINFO.size, len(m))
            name = bytes(attrs.get(IFLA_IFNAME, b"")).rstrip(b"\0").decode()
            kind = ""
            if IFLA_LINKINFO in attrs:
                info = attrs[IFLA_LINKINFO]
                kind = bytes(_attrs(info, 0, len(info)).get(IFLA_INFO_KIND, b"")).rstrip(b"\0").decode()
            out[name] = Link(index, name, bool(flags & IFF_UP), kind)
        return out

    def addresses(self) -> list[Address]:
        """Every address. Decoding goes through a memo keyed by the message bytes (a static VIP's
        message does not change between dumps): a reconcile of 1000 VIPs decodes what changed."""
        out: list[Address] = []
        memo: dict[bytes, Address | None] = {}
        old = self._addr_memo
        for _typ, m in self._dump(RTM_GETADDR, _IFADDR.pack(0, 0, 0, 0, 0)):
            key = m.obj  # the message's own bytes object (see _dump)
            if key in old:
                a = old[key]
            else:
                a = self._address(m)
            memo[key] = a
            if a is not None:
                out.append(a)
        self._addr_memo = memo
        return out

    _addr_memo: dict[bytes, Address | None] = {}

    @staticmethod
    def _address(m: memoryview) -> Address | None:
        family, prefixlen, _flags, _scope, index = _IFADDR.unpack_from(m, 0)
        attrs = _attrs(m, _IFADDR.size, len(m))
        raw = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
        if raw is None:
            return None
        return Address(index, family, socket.inet_ntop(family, bytes(raw)), prefixlen)

    def drain_events(self) -> int:
        """Read every pending event message without blocking; return how many there were."""
        count = 0
        while True:
            try:
                n = self.sock.recv_into(self.buf, 0, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return count
            except OSError:  # ENOBUFS: events were lost; the caller re-reads everything anyway
                count += 1
                continue
            if n == 0:
                return count
            count += 1


def subscribe() -> Rtnl:
    """A socket that becomes readable whenever a link or address changes."""
    return Rtnl(RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR)
