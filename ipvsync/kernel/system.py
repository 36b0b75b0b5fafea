"""The kernel as apply.py sees it: observe everything, run operations, report one result each.

Rules of residence: maps plan operations to the IPVS codec, the link writer and sysctls. Holds
the sockets (one IPVS socket, one rtnetlink reader, a lazily created pyroute2 IPRoute).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Collection, Sequence
from typing import Any

from ipvsync.kernel import ipvs_codec as codec
from ipvsync.kernel.addresses import LinkWriter
from ipvsync.kernel.ipvs import IpvsSocket
from ipvsync.kernel.rtnl import Rtnl
from ipvsync.model import ObservedService, ServiceKey, Vip
from ipvsync.plan import (
    AddDaemon,
    AddDest,
    AddService,
    BindVip,
    CreateLink,
    DelDaemon,
    DelDest,
    DeleteLink,
    DelService,
    EditDest,
    EditService,
    Observed,
    Op,
    SetLinkUp,
    SetTimeouts,
    UnbindVip,
)

_ENCODERS: dict[type, Callable[[Any], bytes]] = {
    AddService: lambda op: codec.new_service(op.key, op.attrs),
    EditService: lambda op: codec.set_service(op.key, op.new),
    DelService: lambda op: codec.del_service(op.key),
    AddDest: lambda op: codec.new_dest(op.service, op.key, op.family, op.attrs),
    EditDest: lambda op: codec.set_dest(op.service, op.key, op.family, op.new),
    DelDest: lambda op: codec.del_dest(op.service, op.key, op.family),
    AddDaemon: lambda op: codec.new_daemon(op.daemon),
    DelDaemon: lambda op: codec.del_daemon(op.daemon),
    SetTimeouts: lambda op: codec.set_config(*op.new),
}


def ipvs_payload(op: Op) -> bytes:
    """The genetlink request for an IPVS operation."""
    encode = _ENCODERS.get(type(op))
    if encode is None:
        for kind, fn in _ENCODERS.items():  # a subclass of an operation
            if isinstance(op, kind):
                return fn(op)
        raise TypeError(f"not an IPVS operation: {op!r}")
    return encode(op)


FEW = 32  # services read one GET each rather than by dumping the table
ENCODE_SLICE = 1024  # IPVS requests encoded and sent per slice


class Kernel:
    """Live kernel access for one network namespace."""

    def __init__(self) -> None:
        self.ipvs = IpvsSocket()
        self.rtnl = Rtnl()
        self.links = LinkWriter()
        self._dummy: dict[str, bool] = {}  # interface -> is a dummy (no ARP needed), per interface
        self._last_vips: tuple[str, list, frozenset[Vip]] | None = None

    def close(self) -> None:
        self.ipvs.close()
        self.rtnl.close()
        self.links.close()

    def __enter__(self) -> Kernel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def observe(self, vip_interface: str, *, daemons: bool = False, timeouts: bool = False,
                only: Collection[ServiceKey] | None = None, addresses: bool = True) -> Observed:
        """The kernel's state; with `only`, just those services (and their real servers) are read.

        addresses=False: the VIP interface's addresses are not read (reported empty): for callers
        that plan no VIP change (a weight edit must not decode 1000 addresses)."""
        if only is None:
            services = self.ipvs.dump()
        else:
            wanted = set(only)
            if len(wanted) <= FEW:  # a one-service edit asks for one service, not a dump of 1000
                found = [s for s in map(self.ipvs.service, wanted) if s is not None]
            else:
                found = [s for s in self.ipvs.services() if s.key in wanted]
            services = {s.key: ObservedService(s.key, s.attrs, self.ipvs.dests(s.key), s.stats) for s in found}
        links = self.rtnl.links()
        self._dummy = {name: ln.kind == "dummy" for name, ln in links.items()}
        link = links.get(vip_interface)
        vips: frozenset[Vip] = frozenset()
        if link is not None and addresses:
            mine = [a for a in self.rtnl.addresses() if a.index == link.index and a.prefixlen in (32, 128)]
            last = self._last_vips
            if last is not None and last[0] == vip_interface and len(last[1]) == len(mine) and all(
                    x is y for x, y in zip(last[1], mine, strict=True)):
                vips = last[2]  # the very same decoded addresses: the same set (no 1000 Vip hashes)
            else:
                vips = frozenset(Vip(a.address, vip_interface) for a in mine)
                self._last_vips = (vip_interface, mine, vips)
        return Observed(
            services=services, addresses=vips, link_exists=link is not None,
            link_up=bool(link and link.up),
            daemons=tuple(self.ipvs.daemons()) if daemons else (),
            timeouts=self.ipvs.config() if timeouts else None)

    def is_dummy(self, name: str) -> bool:
        if name not in self._dummy:
            link = self.rtnl.links().get(name)
            self._dummy[name] = bool(link and link.kind == "dummy")
        return self._dummy[name]

    def run_ipvs(self, ops: Sequence[Op]) -> list[int | None]:
        """One result per op: 0 done, errno failed, None not attempted (after a failed batch).

        Encoded a slice at a time: 11,000 requests' bytes need not all be alive at once (the
        memory of one slice is reused by the next; new pages are what a cold apply pays for)."""
        results: list[int | None] = []
        for start in range(0, len(ops), ENCODE_SLICE):
            done = self.ipvs.execute([ipvs_payload(op) for op in ops[start:start + ENCODE_SLICE]], stop_on_error=True)
            results += done
            if any(r != 0 for r in done):  # an error (or not attempted): nothing after it is sent
                results += [None] * (len(ops) - len(results))
                break
        return results

    def run_other(self, op: Op) -> int:
        """A link or address operation; returns 0 or an errno."""
        try:
            if isinstance(op, (CreateLink, DeleteLink)):
                self._dummy.pop(op.name, None)
            if isinstance(op, CreateLink):
                self.links.create_dummy(op.name)
            elif isinstance(op, DeleteLink):
                self.links.delete_link(op.name)
            elif isinstance(op, SetLinkUp):
                self.links.set_up(op.name, op.up)
            elif isinstance(op, BindVip):
                self.links.bind(op.vip, announce=not self.is_dummy(op.vip.interface))
            elif isinstance(op, UnbindVip):
                self.links.unbind(op.vip)
            else:
                raise TypeError(f"unknown operation {op!r}")
        except OSError as exc:
            return exc.errno or errno.EIO
        except Exception as exc:  # pyroute2 raises NetlinkError (an OSError subclass in new releases)
            code = getattr(exc, "code", None)
            return int(code) if isinstance(code, int) and code > 0 else errno.EIO
        return 0


def read_sysctl(name: str) -> str | None:
    try:
        with open("/proc/sys/" + name.replace(".", "/")) as fh:
            return fh.read().strip()
    except OSError:
        return None


def write_sysctl(name: str, value: int) -> None:
    with open("/proc/sys/" + name.replace(".", "/"), "w") as fh:
        fh.write(f"{value}\n")


def scheduler_available(name: str) -> bool | None:
    """True/False when the running kernel says; None when it cannot tell (no module index)."""
    mod = f"ip_vs_{name}"
    try:
        with open("/proc/modules") as fh:
            if any(line.split(" ", 1)[0] == mod for line in fh):
                return True
    except OSError:
        return None
    release = os.uname().release
    base = f"/lib/modules/{release}"
    found_index = False
    for fname in ("modules.builtin", "modules.dep"):
        try:
            with open(os.path.join(base, fname)) as fh:
                found_index = True
                for line in fh:
                    path = line.split(":", 1)[0]
                    stem = os.path.basename(path).split(".ko", 1)[0]
                    if stem == mod:
                        return True
        except OSError:
            continue
    return False if found_index else None
