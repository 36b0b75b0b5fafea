"""Kernel-shaped values shared by every layer: what a service or real server *is*.

Rules of residence: plain frozen data and the constants of the IPVS ABI only. No I/O, no
YAML, no netlink. The config layer produces these (desired state), the kernel layer decodes
them from dumps (observed state), the planner compares them.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field

AF_INET = socket.AF_INET  # 2
AF_INET6 = socket.AF_INET6  # 10

PROTOCOLS = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP, "sctp": 132}
PROTOCOL_NAMES = {v: k for k, v in PROTOCOLS.items()}
FAMILIES = {"inet": AF_INET, "inet6": AF_INET6}
FAMILY_NAMES = {v: k for k, v in FAMILIES.items()}

# ip_vs.h service flags
SVC_F_PERSISTENT = 0x0001
SVC_F_HASHED = 0x0002  # kernel-internal; reported in dumps, never desired
SVC_F_ONEPACKET = 0x0004
SVC_F_SCHED1 = 0x0008  # sh-fallback / mh-fallback
SVC_F_SCHED2 = 0x0010  # sh-port / mh-port
SVC_F_SCHED3 = 0x0020
SVC_F_USER_MASK = SVC_F_PERSISTENT | SVC_F_ONEPACKET | SVC_F_SCHED1 | SVC_F_SCHED2 | SVC_F_SCHED3

SCHEDULER_FLAGS = {
    "sh-fallback": ("sh", SVC_F_SCHED1),
    "sh-port": ("sh", SVC_F_SCHED2),
    "mh-fallback": ("mh", SVC_F_SCHED1),
    "mh-port": ("mh", SVC_F_SCHED2),
}
SCHEDULERS = ("rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "fo", "ovf", "mh", "twos")

# forwarding methods (IP_VS_CONN_F_*)
FWD_MASQ = 0
FWD_LOCALNODE = 1
FWD_TUNNEL = 2
FWD_DROUTE = 3
FORWARD_METHODS = {"nat": FWD_MASQ, "tun": FWD_TUNNEL, "dr": FWD_DROUTE, "local": FWD_LOCALNODE}
FORWARD_NAMES = {v: k for k, v in FORWARD_METHODS.items()}

# tunnel types and flags
TUN_TYPES = {"ipip": 0, "gue": 1, "gre": 2}
TUN_TYPE_NAMES = {v: k for k, v in TUN_TYPES.items()}
TUN_F_NOCSUM = 0  # IP_VS_TUNNEL_ENCAP_FLAG_NOCSUM
TUN_F_CSUM = 1
TUN_F_REMCSUM = 2


def norm_addr(text: str) -> str:
    """Canonical text of an IP address (compressed IPv6, no zone)."""
    return str(ipaddress.ip_address(text))


def addr_family(text: str) -> int:
    return AF_INET6 if ipaddress.ip_address(text).version == 6 else AF_INET


@dataclass(frozen=True, order=True, slots=True)
class ServiceKey:
    """Identity of a virtual service in the kernel: (proto, vip, port) or (fwmark, family)."""

    family: int
    protocol: int = 0  # IPPROTO_*; 0 for fwmark services
    address: str = ""  # canonical text; "" for fwmark services
    port: int = 0
    fwmark: int = 0

    def __str__(self) -> str:
        if self.fwmark:
            return f"fwmark {self.fwmark} {FAMILY_NAMES[self.family]}"
        host = f"[{self.address}]" if self.family == AF_INET6 else self.address
        return f"{PROTOCOL_NAMES.get(self.protocol, self.protocol)} {host}:{self.port}"

    @property
    def default_name(self) -> str:
        """Name `export` gives a service: tcp-192.0.2.10-80, udp-2001-db8--10-53, fwmark-10-inet6."""
        if self.fwmark:
            return f"fwmark-{self.fwmark}-{FAMILY_NAMES[self.family]}"
        addr = self.address.replace(":", "-").replace(".", ".")
        return f"{PROTOCOL_NAMES.get(self.protocol, str(self.protocol))}-{addr}-{self.port}"


@dataclass(frozen=True, slots=True)
class ServiceAttrs:
    """The settable part of a service (IPVS_CMD_SET_SERVICE changes these in place)."""

    scheduler: str = "wlc"
    flags: int = 0  # user flags only, HASHED masked out
    timeout: int = 0  # persistence timeout, seconds; 0 = not persistent
    netmask: int = 32  # persistence granularity as prefix length (v4 mask is sent as dotted mask)
    pe_name: str = ""  # persistence engine ("sip") or ""

    def normalised(self, family: int) -> ServiceAttrs:
        """Fold what the kernel reports but we never set: HASHED, netmask/timeout when not persistent."""
        flags = self.flags & SVC_F_USER_MASK
        full = 128 if family == AF_INET6 else 32
        if not flags & SVC_F_PERSISTENT:
            if flags == self.flags and self.timeout == 0 and self.netmask == full:
                return self  # already normal (values are frozen: no copy needed)
            return ServiceAttrs(self.scheduler, flags, 0, full, self.pe_name)
        if flags == self.flags:
            return self
        return ServiceAttrs(self.scheduler, flags, self.timeout, self.netmask, self.pe_name)


@dataclass(frozen=True, order=True, slots=True)
class DestKey:
    """Identity of a real server inside its service."""

    address: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class DestAttrs:
    """The settable part of a real server (IPVS_CMD_SET_DEST changes these in place)."""

    forward: int = FWD_MASQ
    weight: int = 1
    u_threshold: int = 0
    l_threshold: int = 0
    tun_type: int = 0
    tun_port: int = 0
    tun_flags: int = 0

    def normalised(self) -> DestAttrs:
        """Tunnel fields mean nothing unless forwarding is tunnel."""
        if self.forward != FWD_TUNNEL and (self.tun_type or self.tun_port or self.tun_flags):
            return DestAttrs(self.forward, self.weight, self.u_threshold, self.l_threshold)
        return self


@dataclass(frozen=True, slots=True)
class DestStats:
    """Counters the kernel reports for a real server (never compared by the planner)."""

    active: int = 0
    inactive: int = 0
    persistent: int = 0
    conns: int = 0
    inpkts: int = 0
    outpkts: int = 0
    inbytes: int = 0
    outbytes: int = 0
    cps: int = 0
    inpps: int = 0
    outpps: int = 0
    inbps: int = 0
    outbps: int = 0


@dataclass(frozen=True, slots=True)
class ObservedDest:
    key: DestKey
    family: int
    attrs: DestAttrs
    stats: DestStats = DestStats()


@dataclass(frozen=True, slots=True)
class ObservedService:
    key: ServiceKey
    attrs: ServiceAttrs
    dests: dict[DestKey, ObservedDest] = field(default_factory=dict)
    stats: DestStats = DestStats()


@dataclass(frozen=True, slots=True)
class SyncDaemon:
    """A kernel IPVS connection-sync daemon (IPVS_CMD_NEW_DAEMON)."""

    role: str  # "master" | "backup"
    interface: str
    syncid: int = 0


@dataclass(frozen=True, order=True, slots=True)
class Vip:
    """An address ipvsync binds on an interface: /32 or /128, no prefix route."""

    address: str
    interface: str

    @property
    def family(self) -> int:
        return addr_family(self.address)

    @property
    def prefixlen(self) -> int:
        return 128 if self.family == AF_INET6 else 32

    def __str__(self) -> str:
        return f"{self.address}/{self.prefixlen} dev {self.interface}"
