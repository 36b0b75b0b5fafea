"""Writes to links and addresses, through pyroute2's IPRoute (0.7.2 and current, imported lazily).

Rules of residence: the only module that changes links or addresses. VIPs are /32 or /128 with
IFA_F_NOPREFIXROUTE (and IFA_F_NODAD for IPv6); on a real (non-dummy) interface a gratuitous ARP or
unsolicited neighbour advertisement tells the segment where the VIP now lives.

Cost: pyroute2 is imported on the first write only (~2 s under UML). The interface index comes from
if_nametoindex(3), cached per name for a short while (one apply's burst of binds asks once; a stale
index is caught by the kernel as ENODEV and looked up again), so a bind is one IPRoute.addr call.
"""

from __future__ import annotations

import errno as _errno
import logging
import socket
import struct
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ipvsync.model import AF_INET6, Vip

IFA_F_NODAD = 0x02
IFA_F_NOPREFIXROUTE = 0x200
INDEX_TTL = 2.0  # seconds an interface index is trusted without asking again


def _oserror(exc: Exception) -> OSError:
    """pyroute2's NetlinkError (not an OSError on 0.7.2) as an OSError with the kernel's errno."""
    if isinstance(exc, OSError):
        return exc
    code = getattr(exc, "code", None)
    if isinstance(code, int) and code > 0:
        return OSError(code, str(exc))
    return OSError(_errno.EIO, str(exc))


def import_iproute() -> Any:
    """pyroute2's IPRoute class, without running pyroute2/__init__.py when nobody has yet.

    That __init__ imports every API of the library (NDB, IPDB, conntrack, devlink, ipset, ...):
    6-10 MB of RSS and most of the ~2 s import under UML, none of it needed to write addresses.
    So the package is registered as a shell over its own files and only pyroute2.iproute.linux
    loads; the shell runs the real __init__ the first time anyone asks it for another name, so
    `from pyroute2 import X` elsewhere in the process still works. Any failure: a plain import.
    """
    import sys

    if "pyroute2" not in sys.modules:
        import importlib.util
        import types

        spec = importlib.util.find_spec("pyroute2")
        if spec is not None and spec.loader is not None and spec.submodule_search_locations:
            shell = types.ModuleType("pyroute2")
            shell.__path__ = list(spec.submodule_search_locations)
            shell.__spec__ = spec
            shell.__file__ = spec.origin
            shell.__loader__ = spec.loader

            loading = [True]

            def complete(name: str) -> Any:
                if loading[0] or name.startswith("__") or importlib.util.find_spec(f"pyroute2.{name}"):
                    raise AttributeError(name)  # a submodule: the import system loads it on its own
                del shell.__getattr__  # type: ignore[attr-defined]
                spec.loader.exec_module(shell)  # type: ignore[union-attr]
                return getattr(shell, name)

            shell.__getattr__ = complete  # type: ignore[attr-defined]
            sys.modules["pyroute2"] = shell
            try:
                from pyroute2.iproute.linux import IPRoute

                loading[0] = False
                return IPRoute
            except Exception:
                for name in [n for n in sys.modules if n == "pyroute2" or n.startswith("pyroute2.")]:
                    del sys.modules[name]
    from pyroute2 import IPRoute

    return IPRoute


class LinkWriter:
    """Link and address writes through a lazy IPRoute.

    Every pyroute2 call runs on one private worker thread: pyroute2 >= 0.9 drives its own asyncio
    loop and cannot be called from a thread whose loop is already running (the daemon's).
    """

    def __init__(self) -> None:
        self._ipr: Any = None
        self._pool: ThreadPoolExecutor | None = None
        self._indexes: dict[str, tuple[int, float]] = {}  # name -> (ifindex, looked up at)

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="ipvsync-iproute")
        return self._pool.submit(fn, *args, **kwargs).result(timeout=60)

    @property
    def ipr(self) -> Any:
        if self._ipr is None:
            self._ipr = import_iproute()()
        return self._ipr

    def close(self) -> None:
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

    def _addr_request(self, cmd: str, vip: Vip, ifa_flags: int) -> int:
        """One IPRoute.addr call (on the worker thread); a cached index the kernel no longer knows is
        looked up again once."""
        for attempt in (0, 1):
            index = self._cached_index(vip.interface)
            kwargs: dict[str, Any] = {"index": index, "address": vip.address, "prefixlen": vip.prefixlen}
            if cmd == "add":
                kwargs["IFA_FLAGS"] = ifa_flags
            try:
                self._call(lambda: self.ipr.addr(cmd, **kwargs))
                return index
            except Exception as exc:  # NetlinkError
                err = _oserror(exc)
                self._indexes.pop(vip.interface, None)
                if attempt or err.errno != _errno.ENODEV:
                    raise err from None
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

    def bind(self, vip: Vip, announce: bool = False) -> None:
        self._bind(vip, announce)

    def _bind(self, vip: Vip, announce: bool = False) -> None:
        flags = IFA_F_NOPREFIXROUTE | (IFA_F_NODAD if vip.family == AF_INET6 else 0)
        index = self._addr_request("add", vip, flags)
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
        self._addr_request("del", vip, 0)


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
