"""/proc/net/ip_vs as a cheap change detector for the periodic reconcile.

A full reconcile of 1000 services reads them over generic netlink: one dump per service, ~3000
system calls (expensive under VMs and UML). The kernel's text table shows, per service, its
scheduler, persistence and one-packet flag, and per real server its address, forwarding method
and weight, in one file read. `service_blocks` cuts it into one block per service (connection
counters removed: traffic must not look like drift); the daemon compares the blocks with those
it verified at the last netlink reconcile and re-reads over netlink only the services whose
block changed. What the table does not show (thresholds, tunnel settings, scheduler flags,
persistence engine) is checked by a full netlink reconcile every few intervals.
"""

from __future__ import annotations

import ipaddress
import re

from ipvsync.model import AF_INET6, PROTOCOL_NAMES, ServiceKey

PROC_IPVS = "/proc/net/ip_vs"
_COUNTERS = re.compile(rb"^(  -> \S+\s+\S+\s+-?\d+)\s+\d+\s+\d+[ \t]*$", re.M)
_BLOCK = re.compile(rb"^(?=\S)", re.M)


def read_table(path: str = PROC_IPVS) -> bytes | None:
    """The text table, or None when it cannot be read (no IPVS, no procfs)."""
    try:
        with open(path, "rb", buffering=0) as fh:
            chunks = []
            while True:
                data = fh.read(1 << 20)
                if not data:
                    return b"".join(chunks)
                chunks.append(data)
    except OSError:
        return None


def service_blocks(table: bytes) -> dict[bytes, bytes] | None:
    """Service identity (its header's protocol and address, or FWM and mark) -> its block without
    connection counters. None when two blocks share an identity (an IPv4 and an IPv6 service on
    the same firewall mark look alike here): the caller then reads everything over netlink."""
    text = _COUNTERS.sub(rb"\1", table)
    out: dict[bytes, bytes] = {}
    for block in _BLOCK.split(text):
        if not block or block.startswith((b"IP Virtual Server", b"Prot ", b"  -> RemoteAddress")):
            continue
        fields = block.split(None, 2)
        if len(fields) < 2:
            continue
        ident = fields[0] + b" " + fields[1]
        if ident in out:
            return None
        out[ident] = block
    return out


def ident_of(key: ServiceKey) -> bytes:
    """The identity service_blocks gives the kernel's line for this service."""
    if key.fwmark:
        return b"FWM %08X" % key.fwmark
    proto = PROTOCOL_NAMES.get(key.protocol, str(key.protocol)).upper().encode()
    if key.family == AF_INET6:
        addr = ipaddress.IPv6Address(key.address).exploded.encode()
        return b"%s [%s]:%04X" % (proto, addr, key.port)
    return b"%s %08X:%04X" % (proto, int(ipaddress.IPv4Address(key.address)), key.port)
