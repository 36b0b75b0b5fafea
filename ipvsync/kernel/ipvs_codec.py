"""Sans-I/O codec for the IPVS generic-netlink protocol: requests -> bytes, bytes -> records.

Rules of residence:
  * No sockets, no files, no clocks, no global state. Every function takes bytes (or model
    values) and returns model values (or bytes). ipvs.py owns the socket and the sequencing.
  * The ABI lives here: constants from include/uapi/linux/ip_vs.h, linux/netlink.h and
    linux/genetlink.h, and the wire layout of every attribute (ports big-endian, addresses as
    16-byte union nf_inet_addr, v4 netmask as a __be32 mask, v6 netmask as a u32 prefix length).
  * Request builders return a genetlink payload (genlmsghdr + attributes); `frame()` adds the
    nlmsghdr. Decoders accept that same payload shape, so a request decodes like a dump reply.
  * What the kernel reports is normalised on the way in (ServiceAttrs/DestAttrs.normalised,
    canonical address text), so the planner compares like with like.
  * Malformed or truncated input raises CodecError, never struct.error or IndexError.
"""

from __future__ import annotations

import functools
import ipaddress
import operator
import socket
import struct
import sys
from collections.abc import Iterator
from typing import NamedTuple

from ipvsync.model import (
    AF_INET,
    AF_INET6,
    FWD_TUNNEL,
    DestAttrs,
    DestKey,
    DestStats,
    ObservedDest,
    ObservedService,
    ServiceAttrs,
    ServiceKey,
    SyncDaemon,
    addr_family,
)

# --- netlink (linux/netlink.h) ---------------------------------------------------------------
NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLMSG_OVERRUN = 4

NLM_F_REQUEST = 0x01
NLM_F_MULTI = 0x02
NLM_F_ACK = 0x04
NLM_F_ECHO = 0x08
NLM_F_DUMP_INTR = 0x10
NLM_F_DUMP_FILTERED = 0x20
NLM_F_ROOT = 0x100
NLM_F_MATCH = 0x200
NLM_F_DUMP = NLM_F_ROOT | NLM_F_MATCH
NLM_F_CAPPED = 0x100  # on NLMSG_ERROR: original request not echoed back
NLM_F_ACK_TLVS = 0x200  # on NLMSG_ERROR: extended-ack TLVs follow

SOL_NETLINK = 270
NETLINK_EXT_ACK = 11
NETLINK_CAP_ACK = 10

NLMSGERR_ATTR_MSG = 1
NLMSGERR_ATTR_OFFS = 2

NLA_F_NESTED = 0x8000
NLA_F_NET_BYTEORDER = 0x4000
NLA_TYPE_MASK = ~(NLA_F_NESTED | NLA_F_NET_BYTEORDER) & 0xFFFF

# --- generic netlink controller (linux/genetlink.h) ------------------------------------------
GENL_ID_CTRL = 0x10
CTRL_CMD_NEWFAMILY = 1
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID = 1
CTRL_ATTR_FAMILY_NAME = 2
CTRL_VERSION = 2

# --- IPVS (linux/ip_vs.h) --------------------------------------------------------------------
IPVS_GENL_NAME = "IPVS"
IPVS_GENL_VERSION = 1

IPVS_CMD_NEW_SERVICE = 1
IPVS_CMD_SET_SERVICE = 2
IPVS_CMD_DEL_SERVICE = 3
IPVS_CMD_GET_SERVICE = 4
IPVS_CMD_NEW_DEST = 5
IPVS_CMD_SET_DEST = 6
IPVS_CMD_DEL_DEST = 7
IPVS_CMD_GET_DEST = 8
IPVS_CMD_NEW_DAEMON = 9
IPVS_CMD_DEL_DAEMON = 10
IPVS_CMD_GET_DAEMON = 11
IPVS_CMD_SET_CONFIG = 12
IPVS_CMD_GET_CONFIG = 13
IPVS_CMD_SET_INFO = 14
IPVS_CMD_GET_INFO = 15
IPVS_CMD_ZERO = 16
IPVS_CMD_FLUSH = 17

IPVS_CMD_ATTR_SERVICE = 1
IPVS_CMD_ATTR_DEST = 2
IPVS_CMD_ATTR_DAEMON = 3
IPVS_CMD_ATTR_TIMEOUT_TCP = 4
IPVS_CMD_ATTR_TIMEOUT_TCP_FIN = 5
IPVS_CMD_ATTR_TIMEOUT_UDP = 6

IPVS_SVC_ATTR_AF = 1  # u16
IPVS_SVC_ATTR_PROTOCOL = 2  # u16
IPVS_SVC_ATTR_ADDR = 3  # union nf_inet_addr (16 bytes)
IPVS_SVC_ATTR_PORT = 4  # __be16
IPVS_SVC_ATTR_FWMARK = 5  # u32
IPVS_SVC_ATTR_SCHED_NAME = 6  # NUL string
IPVS_SVC_ATTR_FLAGS = 7  # struct ip_vs_flags {u32 flags; u32 mask}
IPVS_SVC_ATTR_TIMEOUT = 8  # u32 seconds
IPVS_SVC_ATTR_NETMASK = 9  # v4: __be32 mask, v6: u32 prefix length
IPVS_SVC_ATTR_STATS = 10  # nested IPVS_STATS_ATTR_* (32-bit counters)
IPVS_SVC_ATTR_PE_NAME = 11  # NUL string
IPVS_SVC_ATTR_STATS64 = 12  # nested IPVS_STATS_ATTR_* (64-bit counters)

IPVS_DEST_ATTR_ADDR = 1
IPVS_DEST_ATTR_PORT = 2  # __be16
IPVS_DEST_ATTR_FWD_METHOD = 3  # u32
IPVS_DEST_ATTR_WEIGHT = 4  # u32
IPVS_DEST_ATTR_U_THRESH = 5  # u32
IPVS_DEST_ATTR_L_THRESH = 6  # u32
IPVS_DEST_ATTR_ACTIVE_CONNS = 7  # u32
IPVS_DEST_ATTR_INACT_CONNS = 8  # u32
IPVS_DEST_ATTR_PERSIST_CONNS = 9  # u32
IPVS_DEST_ATTR_STATS = 10
IPVS_DEST_ATTR_ADDR_FAMILY = 11  # u16
IPVS_DEST_ATTR_STATS64 = 12
IPVS_DEST_ATTR_TUN_TYPE = 13  # u8
IPVS_DEST_ATTR_TUN_PORT = 14  # __be16
IPVS_DEST_ATTR_TUN_FLAGS = 15  # u16

IPVS_DAEMON_ATTR_STATE = 1  # u32
IPVS_DAEMON_ATTR_MCAST_IFN = 2  # NUL string
IPVS_DAEMON_ATTR_SYNC_ID = 3  # u32
IPVS_DAEMON_ATTR_SYNC_MAXLEN = 4  # u16
IPVS_DAEMON_ATTR_MCAST_GROUP = 5  # in_addr
IPVS_DAEMON_ATTR_MCAST_GROUP6 = 6  # in6_addr
IPVS_DAEMON_ATTR_MCAST_PORT = 7  # u16
IPVS_DAEMON_ATTR_MCAST_TTL = 8  # u8

IPVS_STATS_ATTR_CONNS = 1
IPVS_STATS_ATTR_INPKTS = 2
IPVS_STATS_ATTR_OUTPKTS = 3
IPVS_STATS_ATTR_INBYTES = 4
IPVS_STATS_ATTR_OUTBYTES = 5
IPVS_STATS_ATTR_CPS = 6
IPVS_STATS_ATTR_INPPS = 7
IPVS_STATS_ATTR_OUTPPS = 8
IPVS_STATS_ATTR_INBPS = 9
IPVS_STATS_ATTR_OUTBPS = 10

IPVS_INFO_ATTR_VERSION = 1
IPVS_INFO_ATTR_CONN_TAB_SIZE = 2

IP_VS_STATE_MASTER = 0x1
IP_VS_STATE_BACKUP = 0x2
DAEMON_STATES = {"master": IP_VS_STATE_MASTER, "backup": IP_VS_STATE_BACKUP}
DAEMON_ROLES = {v: k for k, v in DAEMON_STATES.items()}

IP_VS_CONN_F_FWD_MASK = 0x7
# tun_flags values (uapi ip_vs.h); NB model.TUN_F_* (0x1/0x2/0x4) do not match these
IP_VS_TUNNEL_ENCAP_FLAG_NOCSUM = 0
IP_VS_TUNNEL_ENCAP_FLAG_CSUM = 1 << 0
IP_VS_TUNNEL_ENCAP_FLAG_REMCSUM = 1 << 1
IP_VS_SCHEDNAME_MAXLEN = 16
IP_VS_PENAME_MAXLEN = 16
IP_VS_IFNAME_MAXLEN = 16

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_GENLHDR = struct.Struct("=BBH")  # cmd, version, reserved
_NLA = struct.Struct("=HH")  # len, type
_U8 = struct.Struct("=B")
_U16 = struct.Struct("=H")
_BE16 = struct.Struct("!H")
_U32 = struct.Struct("=I")
_BE32 = struct.Struct("!I")
_U64 = struct.Struct("=Q")
_I32 = struct.Struct("=i")
_FLAGS = struct.Struct("=II")
NLMSG_HDRLEN = _NLMSGHDR.size
NLMSG_HEADER = _NLMSGHDR  # for ipvs.py's inlined message loop
GENL_HDRLEN = _GENLHDR.size


class CodecError(ValueError):
    """Bytes that are not a well-formed netlink/IPVS message (truncated, bad lengths, missing attrs)."""


class Message(NamedTuple):
    """One netlink message of a received buffer; payload is a view into that buffer."""

    type: int
    flags: int
    seq: int
    pid: int
    payload: memoryview


class Ack(NamedTuple):
    """A decoded NLMSG_ERROR: errno is 0 for an ack, else the positive errno; message from ext-ack."""

    errno: int
    message: str = ""
    offset: int | None = None
    seq: int = 0


# --- encoding --------------------------------------------------------------------------------


def _attr(kind: int, data: bytes) -> bytes:
    length = _NLA.size + len(data)
    return _NLA.pack(length, kind) + data + b"\0" * (-length & 3)


def _nest(kind: int, *attrs: bytes) -> bytes:
    return _attr(kind | NLA_F_NESTED, b"".join(attrs))


def _str(kind: int, text: str, maxlen: int) -> bytes:
    raw = text.encode()
    if len(raw) >= maxlen or b"\0" in raw:
        raise ValueError(f"name {text!r} too long for IPVS (max {maxlen - 1} bytes)")
    return _attr(kind, raw + b"\0")


def _u32(value: int) -> bytes:
    if not 0 <= value <= 0xFFFFFFFF:
        raise ValueError(f"{value} does not fit in u32")
    return _U32.pack(value)


def _port(value: int) -> bytes:
    if not 0 <= value <= 0xFFFF:
        raise ValueError(f"port {value} out of range")
    return _BE16.pack(value)


def _addr(text: str, family: int) -> bytes:
    """The 16-byte nf_inet_addr of `text`; ValueError when it is not an address of `family`."""
    try:  # inet_pton accepts exactly the canonical forms ipaddress does, ~20x cheaper
        if family == AF_INET:
            return socket.inet_pton(socket.AF_INET, text) + _V4_FILL
        if family == AF_INET6:
            return socket.inet_pton(socket.AF_INET6, text)
    except (OSError, TypeError, ValueError):
        pass  # the slow path below raises the right error (or accepts what inet_pton does not)
    ip = ipaddress.ip_address(text)
    if (ip.version == 6) != (family == AF_INET6):
        raise ValueError(f"address {text} does not match family {family}")
    return ip.packed.ljust(16, b"\0")


_V4_FILL = bytes(12)


def _netmask(prefix: int, family: int) -> bytes:
    if family == AF_INET6:
        if not 0 <= prefix <= 128:
            raise ValueError(f"IPv6 persistence netmask /{prefix} out of range")
        return _U32.pack(prefix)
    if not 0 <= prefix <= 32:
        raise ValueError(f"IPv4 persistence netmask /{prefix} out of range")
    return _BE32.pack((0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF)


def genl(cmd: int, *attrs: bytes, version: int = IPVS_GENL_VERSION) -> bytes:
    """A genetlink payload: genlmsghdr followed by already-encoded attributes."""
    return _GENLHDR.pack(cmd, version, 0) + b"".join(attrs)


def frame(family_id: int, flags: int, seq: int, payload: bytes) -> bytes:
    """Wrap a payload in an nlmsghdr (pid 0 = let the kernel fill in ours), padded to 4 bytes."""
    length = NLMSG_HDRLEN + len(payload)
    return _NLMSGHDR.pack(length, family_id, flags, seq & 0xFFFFFFFF, 0) + payload + b"\0" * (-length & 3)


def _service_key_attrs(key: ServiceKey) -> list[bytes]:
    if key.family not in (AF_INET, AF_INET6):
        raise ValueError(f"unsupported address family {key.family}")
    out = [_attr(IPVS_SVC_ATTR_AF, _U16.pack(key.family))]
    if key.fwmark:
        out.append(_attr(IPVS_SVC_ATTR_FWMARK, _u32(key.fwmark)))
    else:
        out += [
            _attr(IPVS_SVC_ATTR_PROTOCOL, _U16.pack(key.protocol)),
            _attr(IPVS_SVC_ATTR_ADDR, _addr(key.address, key.family)),
            _attr(IPVS_SVC_ATTR_PORT, _port(key.port)),
        ]
    return out


@functools.lru_cache(maxsize=1 << 14)
def _service_key_nest(key: ServiceKey) -> bytes:
    """The service nest of every real-server request (the same bytes for all of a service's dests)."""
    return _nest(IPVS_CMD_ATTR_SERVICE, *_service_key_attrs(key))


def _service(key: ServiceKey, attrs: ServiceAttrs | None, flags_mask: int) -> bytes:
    if attrs is None:
        return _service_key_nest(key)
    parts = _service_key_attrs(key)
    if attrs is not None:
        parts += [
            _str(IPVS_SVC_ATTR_SCHED_NAME, attrs.scheduler, IP_VS_SCHEDNAME_MAXLEN),
            _attr(IPVS_SVC_ATTR_FLAGS, _FLAGS.pack(attrs.flags & 0xFFFFFFFF, flags_mask & 0xFFFFFFFF)),
            _attr(IPVS_SVC_ATTR_TIMEOUT, _u32(attrs.timeout)),
            _attr(IPVS_SVC_ATTR_NETMASK, _netmask(attrs.netmask, key.family)),
            _str(IPVS_SVC_ATTR_PE_NAME, attrs.pe_name, IP_VS_PENAME_MAXLEN),  # "" clears the PE
        ]
    return _nest(IPVS_CMD_ATTR_SERVICE, *parts)


# A whole IPVS_CMD_ATTR_DEST nest in one pack: the same bytes as _nest(_attr(...), ...) below
_DEST_NEST_FULL = struct.Struct("=HH" "HH16s" "HH2s2x" "HHH2x" "HHI" "HHI" "HHI" "HHI" "HHB3x" "HH2s2x" "HHH2x")


def _dest(dest: DestKey, family: int | None, attrs: DestAttrs | None) -> bytes:
    fam = family or addr_family(dest.address)
    if attrs is not None:
        port, fwd, weight, uth, lth = dest.port, attrs.forward, attrs.weight, attrs.u_threshold, attrs.l_threshold
        tun_type, tun_port, tun_flags = attrs.tun_type, attrs.tun_port, attrs.tun_flags
        if (0 <= port <= 0xFFFF and 0 <= fam <= 0xFFFF and 0 <= fwd <= 0xFFFFFFFF and 0 <= weight <= 0xFFFFFFFF
                and 0 <= uth <= 0xFFFFFFFF and 0 <= lth <= 0xFFFFFFFF and 0 <= tun_type <= 0xFF
                and 0 <= tun_port <= 0xFFFF and 0 <= tun_flags <= 0xFFFF):  # else: the checks below raise
            return _DEST_NEST_FULL.pack(
                _DEST_NEST_FULL.size, IPVS_CMD_ATTR_DEST | NLA_F_NESTED,
                20, IPVS_DEST_ATTR_ADDR, _addr(dest.address, fam),
                6, IPVS_DEST_ATTR_PORT, _BE16.pack(port),
                6, IPVS_DEST_ATTR_ADDR_FAMILY, fam,
                8, IPVS_DEST_ATTR_FWD_METHOD, fwd,
                8, IPVS_DEST_ATTR_WEIGHT, weight,
                8, IPVS_DEST_ATTR_U_THRESH, uth,
                8, IPVS_DEST_ATTR_L_THRESH, lth,
                5, IPVS_DEST_ATTR_TUN_TYPE, tun_type,
                6, IPVS_DEST_ATTR_TUN_PORT, _BE16.pack(tun_port),
                6, IPVS_DEST_ATTR_TUN_FLAGS, tun_flags,
            )
        # the same checks, in the same order, as the generic encoding below
        addr, port = _addr(dest.address, fam), _port(dest.port)
        _U16.pack(fam)
        for v in (attrs.forward, attrs.weight, attrs.u_threshold, attrs.l_threshold):
            if not 0 <= v <= 0xFFFFFFFF:
                raise ValueError(f"{v} does not fit in u32")
        if not 0 <= attrs.tun_type <= 0xFF:
            _U8.pack(attrs.tun_type)  # raises struct.error, as before
        tun_port = _port(attrs.tun_port)
        if not 0 <= attrs.tun_flags <= 0xFFFF:
            _U16.pack(attrs.tun_flags)
        return _DEST_NEST_FULL.pack(
            _DEST_NEST_FULL.size, IPVS_CMD_ATTR_DEST | NLA_F_NESTED,
            20, IPVS_DEST_ATTR_ADDR, addr,
            6, IPVS_DEST_ATTR_PORT, port,
            6, IPVS_DEST_ATTR_ADDR_FAMILY, fam,
            8, IPVS_DEST_ATTR_FWD_METHOD, attrs.forward,
            8, IPVS_DEST_ATTR_WEIGHT, attrs.weight,
            8, IPVS_DEST_ATTR_U_THRESH, attrs.u_threshold,
            8, IPVS_DEST_ATTR_L_THRESH, attrs.l_threshold,
            5, IPVS_DEST_ATTR_TUN_TYPE, attrs.tun_type,
            6, IPVS_DEST_ATTR_TUN_PORT, tun_port,
            6, IPVS_DEST_ATTR_TUN_FLAGS, attrs.tun_flags,
        )
    parts = [
        _attr(IPVS_DEST_ATTR_ADDR, _addr(dest.address, fam)),
        _attr(IPVS_DEST_ATTR_PORT, _port(dest.port)),
        _attr(IPVS_DEST_ATTR_ADDR_FAMILY, _U16.pack(fam)),
    ]
    if attrs is not None:
        parts += [
            _attr(IPVS_DEST_ATTR_FWD_METHOD, _u32(attrs.forward)),
            _attr(IPVS_DEST_ATTR_WEIGHT, _u32(attrs.weight)),
            _attr(IPVS_DEST_ATTR_U_THRESH, _u32(attrs.u_threshold)),
            _attr(IPVS_DEST_ATTR_L_THRESH, _u32(attrs.l_threshold)),
            _attr(IPVS_DEST_ATTR_TUN_TYPE, _U8.pack(attrs.tun_type)),
            _attr(IPVS_DEST_ATTR_TUN_PORT, _port(attrs.tun_port)),
            _attr(IPVS_DEST_ATTR_TUN_FLAGS, _U16.pack(attrs.tun_flags)),
        ]
    return _nest(IPVS_CMD_ATTR_DEST, *parts)


def get_family(name: str = IPVS_GENL_NAME) -> bytes:
    """CTRL_CMD_GETFAMILY payload; frame it to GENL_ID_CTRL."""
    return genl(CTRL_CMD_GETFAMILY, _str(CTRL_ATTR_FAMILY_NAME, name, 64), version=CTRL_VERSION)


def new_service(key: ServiceKey, attrs: ServiceAttrs, flags_mask: int = 0xFFFFFFFF) -> bytes:
    return genl(IPVS_CMD_NEW_SERVICE, _service(key, attrs, flags_mask))


def set_service(key: ServiceKey, attrs: ServiceAttrs, flags_mask: int = 0xFFFFFFFF) -> bytes:
    """Edit in place; the kernel requires sched, flags, timeout and netmask; mask ~0 lets flags clear."""
    return genl(IPVS_CMD_SET_SERVICE, _service(key, attrs, flags_mask))


def del_service(key: ServiceKey) -> bytes:
    return genl(IPVS_CMD_DEL_SERVICE, _service(key, None, 0))


def get_service(key: ServiceKey) -> bytes:
    """Single-service GET (doit, no NLM_F_DUMP); the reply is one IPVS_CMD_NEW_SERVICE message."""
    return genl(IPVS_CMD_GET_SERVICE, _service(key, None, 0))


def get_services() -> bytes:
    """Dump request (send with NLM_F_DUMP)."""
    return genl(IPVS_CMD_GET_SERVICE)


_GENL_NEW_DEST = _GENLHDR.pack(IPVS_CMD_NEW_DEST, IPVS_GENL_VERSION, 0)
_GENL_SET_DEST = _GENLHDR.pack(IPVS_CMD_SET_DEST, IPVS_GENL_VERSION, 0)
_GENL_DEL_DEST = _GENLHDR.pack(IPVS_CMD_DEL_DEST, IPVS_GENL_VERSION, 0)


def new_dest(svc: ServiceKey, dest: DestKey, family: int | None, attrs: DestAttrs) -> bytes:
    """Add a real server; family None = from the address (mixed families only with tunnelling)."""
    return _GENL_NEW_DEST + _service_key_nest(svc) + _dest(dest, family, attrs)


def set_dest(svc: ServiceKey, dest: DestKey, family: int | None, attrs: DestAttrs) -> bytes:
    return _GENL_SET_DEST + _service_key_nest(svc) + _dest(dest, family, attrs)


def del_dest(svc: ServiceKey, dest: DestKey, family: int | None = None) -> bytes:
    return _GENL_DEL_DEST + _service_key_nest(svc) + _dest(dest, family, None)


def get_dests(svc: ServiceKey) -> bytes:
    """Dump request for the real servers of one service (send with NLM_F_DUMP)."""
    return genl(IPVS_CMD_GET_DEST, _service(svc, None, 0))


def _daemon(d: SyncDaemon, full: bool) -> bytes:
    if d.role not in DAEMON_STATES:
        raise ValueError(f"sync daemon role must be master or backup, not {d.role!r}")
    parts = [_attr(IPVS_DAEMON_ATTR_STATE, _U32.pack(DAEMON_STATES[d.role]))]
    if full:
        parts += [
            _str(IPVS_DAEMON_ATTR_MCAST_IFN, d.interface, IP_VS_IFNAME_MAXLEN),
            _attr(IPVS_DAEMON_ATTR_SYNC_ID, _u32(d.syncid)),
        ]
    return _nest(IPVS_CMD_ATTR_DAEMON, *parts)


def new_daemon(d: SyncDaemon) -> bytes:
    return genl(IPVS_CMD_NEW_DAEMON, _daemon(d, True))


def del_daemon(d: SyncDaemon) -> bytes:
    """The kernel identifies a sync daemon by its state (role) alone."""
    return genl(IPVS_CMD_DEL_DAEMON, _daemon(d, False))


def get_daemons() -> bytes:
    """Dump request (send with NLM_F_DUMP)."""
    return genl(IPVS_CMD_GET_DAEMON)


def set_config(tcp: int | None = None, tcpfin: int | None = None, udp: int | None = None) -> bytes:
    """Protocol timeouts in seconds; None or 0 leaves that timeout unchanged."""
    parts = [
        _attr(kind, _u32(value))
        for kind, value in (
            (IPVS_CMD_ATTR_TIMEOUT_TCP, tcp),
            (IPVS_CMD_ATTR_TIMEOUT_TCP_FIN, tcpfin),
            (IPVS_CMD_ATTR_TIMEOUT_UDP, udp),
        )
        if value is not None
    ]
    return genl(IPVS_CMD_SET_CONFIG, *parts)


def get_config() -> bytes:
    return genl(IPVS_CMD_GET_CONFIG)


def get_info() -> bytes:
    return genl(IPVS_CMD_GET_INFO)


def flush() -> bytes:
    """Delete every service and real server in the namespace."""
    return genl(IPVS_CMD_FLUSH)


# --- decoding --------------------------------------------------------------------------------


def iter_messages(buf: memoryview | bytes) -> Iterator[Message]:
    """Split a received buffer into netlink messages (payload views share the buffer)."""
    view = memoryview(buf)
    end = len(view)
    off = 0
    while off < end:
        if end - off < NLMSG_HDRLEN:
            raise CodecError(f"truncated netlink header: {end - off} bytes at offset {off}")
        length, kind, flags, seq, pid = _NLMSGHDR.unpack_from(view, off)
        if length < NLMSG_HDRLEN or off + length > end:
            raise CodecError(f"truncated netlink message: length {length}, {end - off} bytes left")
        yield Message(kind, flags, seq, pid, view[off + NLMSG_HDRLEN : off + length])
        off += (length + 3) & ~3


def parse_attrs(buf: memoryview | bytes) -> dict[int, memoryview]:
    """Attributes of one level (type -> value view); nested/byteorder flag bits are dropped."""
    view = memoryview(buf)
    end = len(view)
    out: dict[int, memoryview] = {}
    unpack = _NLA.unpack_from
    off = 0
    while off < end:
        if end - off < 4:
            raise CodecError(f"truncated attribute header: {end - off} bytes at offset {off}")
        length, kind = unpack(view, off)
        stop = off + length
        if length < 4 or stop > end:
            raise CodecError(f"truncated attribute {kind & NLA_TYPE_MASK}: length {length}, {end - off} left")
        out[kind & NLA_TYPE_MASK] = view[off + 4 : stop]
        off = (stop + 3) & ~3
    return out


def _ints(attrs: dict[int, memoryview], spec: tuple[tuple[int, struct.Struct, int], ...]) -> list[int]:
    """Integer attributes per (kind, format, default-if-absent); the hot path of dump decoding."""
    out = []
    for kind, fmt, default in spec:
        data = attrs.get(kind)
        if data is None:
            out.append(default)
        elif len(data) < fmt.size:
            raise CodecError(f"attribute {kind}: {len(data)} bytes, need {fmt.size}")
        else:
            out.append(fmt.unpack_from(data)[0])
    return out


def _unpack(fmt: struct.Struct, data: memoryview, what: str) -> int:
    if len(data) < fmt.size:
        raise CodecError(f"{what}: {len(data)} bytes, need {fmt.size}")
    return fmt.unpack_from(data)[0]


def _text(data: memoryview) -> str:
    raw = bytes(data)
    return raw.split(b"\0", 1)[0].decode(errors="replace")


def _addr_text(data: memoryview, family: int, what: str) -> str:
    size = 16 if family == AF_INET6 else 4
    if family not in (AF_INET, AF_INET6):
        raise CodecError(f"{what}: unsupported address family {family}")
    if len(data) < size:
        raise CodecError(f"{what}: {len(data)} bytes, need {size}")
    return _addr_str(bytes(data[:size]))


@functools.lru_cache(maxsize=1 << 16)
def _addr_str(packed: bytes) -> str:
    """Canonical text, as str(ipaddress.ip_address(packed)), via inet_ntop (~10x cheaper)."""
    if len(packed) == 4:
        return socket.inet_ntop(socket.AF_INET, packed)
    if len(packed) == 16:
        text = socket.inet_ntop(socket.AF_INET6, packed)
        if "." not in text:  # libc writes embedded IPv4 dotted (::ffff:1.2.3.4), ipaddress in hex
            return text
    return str(ipaddress.ip_address(packed))


def _need(attrs: dict[int, memoryview], kind: int, what: str) -> memoryview:
    try:
        return attrs[kind]
    except KeyError:
        raise CodecError(f"missing attribute {what}") from None


def genl_cmd(payload: memoryview | bytes) -> tuple[int, dict[int, memoryview]]:
    """(cmd, top-level attributes) of a genetlink payload."""
    view = memoryview(payload)
    if len(view) < GENL_HDRLEN:
        raise CodecError(f"truncated genetlink header: {len(view)} bytes")
    return view[0], parse_attrs(view[GENL_HDRLEN:])


def decode_error(payload: memoryview | bytes, flags: int = 0) -> Ack:
    """Decode an NLMSG_ERROR payload (errno made positive; 0 = ack), with ext-ack TLVs if flagged."""
    view = memoryview(payload)
    if len(view) < 4 + NLMSG_HDRLEN:
        raise CodecError(f"truncated NLMSG_ERROR: {len(view)} bytes")
    err = _I32.unpack_from(view)[0]
    orig_len, _, _, seq, _ = _NLMSGHDR.unpack_from(view, 4)
    message, offset = "", None
    if flags & NLM_F_ACK_TLVS:
        skip = 4 + (NLMSG_HDRLEN if flags & NLM_F_CAPPED else (orig_len + 3) & ~3)
        if skip > len(view):
            raise CodecError("NLMSG_ERROR: ext-ack TLVs beyond end of message")
        tlvs = parse_attrs(view[skip:])
        if NLMSGERR_ATTR_MSG in tlvs:
            message = _text(tlvs[NLMSGERR_ATTR_MSG])
        if NLMSGERR_ATTR_OFFS in tlvs:
            offset = _unpack(_U32, tlvs[NLMSGERR_ATTR_OFFS], "ext-ack offset")
    return Ack(-err, message, offset, seq)


def decode_done(payload: memoryview | bytes) -> int:
    """Positive errno carried by NLMSG_DONE (0 = dump complete)."""
    view = memoryview(payload)
    return -_I32.unpack_from(view)[0] if len(view) >= 4 else 0


def decode_family_id(payload: memoryview | bytes) -> int:
    """Family id from a CTRL_CMD_NEWFAMILY reply."""
    _, attrs = genl_cmd(payload)
    return _unpack(_U16, _need(attrs, CTRL_ATTR_FAMILY_ID, "CTRL_ATTR_FAMILY_ID"), "family id")


_STATS64 = tuple((k, _U64, 0) for k in range(IPVS_STATS_ATTR_CONNS, IPVS_STATS_ATTR_OUTBPS + 1))
_STATS32 = tuple(
    (k, _U64 if k in (IPVS_STATS_ATTR_INBYTES, IPVS_STATS_ATTR_OUTBYTES) else _U32, 0)
    for k in range(IPVS_STATS_ATTR_CONNS, IPVS_STATS_ATTR_OUTBPS + 1)
)
_STATS64_PACKED = struct.Struct("=" + "HHQ" * len(_STATS64))
_STATS64_LENS = (12,) * len(_STATS64)
_STATS64_KINDS = tuple(k for k, _, _ in _STATS64)
_DEST_FIELDS = (  # DestAttrs order, then the connection counters
    (IPVS_DEST_ATTR_FWD_METHOD, _U32, 0),
    (IPVS_DEST_ATTR_WEIGHT, _U32, 1),
    (IPVS_DEST_ATTR_U_THRESH, _U32, 0),
    (IPVS_DEST_ATTR_L_THRESH, _U32, 0),
    (IPVS_DEST_ATTR_TUN_TYPE, _U8, 0),
    (IPVS_DEST_ATTR_TUN_PORT, _BE16, 0),
    (IPVS_DEST_ATTR_TUN_FLAGS, _U16, 0),
    (IPVS_DEST_ATTR_ACTIVE_CONNS, _U32, 0),
    (IPVS_DEST_ATTR_INACT_CONNS, _U32, 0),
    (IPVS_DEST_ATTR_PERSIST_CONNS, _U32, 0),
)


def _stats(attrs: dict[int, memoryview], k32: int, k64: int, conns: tuple[int, int, int]) -> DestStats:
    nested, fmt = (attrs.get(k64), _U64) if k64 in attrs else (attrs.get(k32), None)
    if nested is None:
        return DestStats(*conns)
    if fmt and len(nested) == _STATS64_PACKED.size:  # fast path: the kernel's layout without PAD attrs
        raw = _STATS64_PACKED.unpack_from(nested)
        if raw[0::3] == _STATS64_LENS and raw[1::3] == _STATS64_KINDS:
            return DestStats(*conns, *raw[2::3])
    return DestStats(*conns, *_ints(parse_attrs(nested), _STATS64 if fmt else _STATS32))


def decode_service(payload: memoryview | bytes) -> ObservedService:
    """An IPVS_CMD_ATTR_SERVICE payload (dump reply or request) -> ObservedService, dests empty."""
    _, top = genl_cmd(payload)
    a = parse_attrs(_need(top, IPVS_CMD_ATTR_SERVICE, "IPVS_CMD_ATTR_SERVICE"))
    family = _unpack(_U16, _need(a, IPVS_SVC_ATTR_AF, "IPVS_SVC_ATTR_AF"), "service family")
    fwmark = _unpack(_U32, a[IPVS_SVC_ATTR_FWMARK], "fwmark") if IPVS_SVC_ATTR_FWMARK in a else 0
    if fwmark:
        key = ServiceKey(family, fwmark=fwmark)
    else:
        key = ServiceKey(
            family,
            _unpack(_U16, _need(a, IPVS_SVC_ATTR_PROTOCOL, "IPVS_SVC_ATTR_PROTOCOL"), "protocol"),
            _addr_text(_need(a, IPVS_SVC_ATTR_ADDR, "IPVS_SVC_ATTR_ADDR"), family, "service address"),
            _unpack(_BE16, _need(a, IPVS_SVC_ATTR_PORT, "IPVS_SVC_ATTR_PORT"), "service port"),
        )
    attrs = ServiceAttrs()
    if IPVS_SVC_ATTR_SCHED_NAME in a:  # absent only in del/get requests
        flags, mask = 0, 0
        if IPVS_SVC_ATTR_FLAGS in a:
            raw = a[IPVS_SVC_ATTR_FLAGS]
            if len(raw) < _FLAGS.size:
                raise CodecError(f"service flags: {len(raw)} bytes, need {_FLAGS.size}")
            flags, mask = _FLAGS.unpack_from(raw)
        netmask = 128 if family == AF_INET6 else 32
        if IPVS_SVC_ATTR_NETMASK in a:
            raw = a[IPVS_SVC_ATTR_NETMASK]
            if family == AF_INET6:
                netmask = _unpack(_U32, raw, "netmask")
            else:
                mask32 = _unpack(_BE32, raw, "netmask")
                netmask = 32 - ((~mask32 & 0xFFFFFFFF).bit_length())  # leading one bits
        attrs = ServiceAttrs(
            scheduler=_text(a[IPVS_SVC_ATTR_SCHED_NAME]),
            flags=flags & mask,
            timeout=_unpack(_U32, a[IPVS_SVC_ATTR_TIMEOUT], "timeout") if IPVS_SVC_ATTR_TIMEOUT in a else 0,
            netmask=netmask,
            pe_name=_text(a[IPVS_SVC_ATTR_PE_NAME]) if IPVS_SVC_ATTR_PE_NAME in a else "",
        ).normalised(family)
    stats = _stats(a, IPVS_SVC_ATTR_STATS, IPVS_SVC_ATTR_STATS64, (0, 0, 0))
    return ObservedService(key, attrs, {}, stats)


class _Layout(NamedTuple):
    """The byte layout of one dest message shape, learnt from a message of that shape.

    A kernel sends every real server of a dump with the same attributes in the same order, so after
    the first one a single `struct.unpack_from` reads a whole message. The layout is used only when
    every attribute header (length, type) of the message equals the learnt one, so any other shape
    (older kernel, extra or missing attribute, PAD attributes, odd sizes) takes the generic path.
    Layouts are a memo of a pure function of the headers (like `_addr_str`'s cache), not state.
    """

    fmt: struct.Struct
    headers: tuple[int, ...]  # the expected (len, type) values, in unpack order
    pick_headers: operator.itemgetter  # type: ignore[type-arg]
    pick_values: operator.itemgetter  # type: ignore[type-arg]


_DEST_LAYOUT_KINDS = (  # what the fast path reads, in this order (all must be present to learn)
    IPVS_DEST_ATTR_ADDR, IPVS_DEST_ATTR_ADDR_FAMILY, IPVS_DEST_ATTR_PORT, IPVS_DEST_ATTR_FWD_METHOD,
    IPVS_DEST_ATTR_WEIGHT, IPVS_DEST_ATTR_U_THRESH, IPVS_DEST_ATTR_L_THRESH, IPVS_DEST_ATTR_TUN_TYPE,
    IPVS_DEST_ATTR_TUN_PORT, IPVS_DEST_ATTR_TUN_FLAGS, IPVS_DEST_ATTR_ACTIVE_CONNS,
    IPVS_DEST_ATTR_INACT_CONNS, IPVS_DEST_ATTR_PERSIST_CONNS,
)
_LAYOUT_CODES = {_U8: "B", _U16: "H", _BE16: "H", _U32: "I", _U64: "Q"}  # read native; BE16 swapped after
_DEST_LAYOUT_FMT: dict[int, struct.Struct] = {k: f for k, f, _ in _DEST_FIELDS}
_DEST_LAYOUT_FMT[IPVS_DEST_ATTR_ADDR_FAMILY] = _U16
_DEST_LAYOUT_FMT[IPVS_DEST_ATTR_PORT] = _BE16
_SWAP16 = sys.byteorder == "little"
_dest_layouts: dict[bytes, _Layout | None] = {}
# (key, family, attrs) of a real server by its decoded non-counter values: a memo of a pure function
# (frozen values), so a real server whose counters moved keeps its identical key and attrs objects
_dest_idents: dict[tuple[object, ...], tuple[DestKey, int, DestAttrs]] = {}
IDENT_MEMO_LIMIT = 1 << 16


def _learn_dest_layout(view: memoryview) -> _Layout | None:
    """A `_Layout` for this dest message's shape, or None when it has a shape we do not template."""
    fmt = ["=", f"{GENL_HDRLEN}x"]
    headers: list[int] = []
    header_idx: list[int] = []
    where: dict[tuple[int, int], int] = {}  # (nest, kind) -> index of its value in the unpacked tuple
    count = 0

    def field(code: str) -> int:
        nonlocal count
        fmt.append(code)
        count += 1
        return count - 1

    def walk(off: int, end: int, nest: int) -> bool:
        while off < end:
            if end - off < 4:
                return False
            length, kind = _NLA.unpack_from(view, off)
            if length < 4 or off + length > end:
                return False
            headers.extend((length, kind))
            header_idx.extend((field("H"), field("H")))
            size, k = length - 4, kind & NLA_TYPE_MASK
            if nest == 0 and k in (IPVS_DEST_ATTR_STATS, IPVS_DEST_ATTR_STATS64):
                if not walk(off + 4, off + length, k):
                    return False
            elif nest == 0 and k == IPVS_DEST_ATTR_ADDR:
                if size != 16:
                    return False
                where[(0, k)] = field("16s")
            elif nest == 0 and k in _DEST_LAYOUT_FMT:
                if size != _DEST_LAYOUT_FMT[k].size:
                    return False
                where[(0, k)] = field(_LAYOUT_CODES[_DEST_LAYOUT_FMT[k]])
            elif nest and IPVS_STATS_ATTR_CONNS <= k <= IPVS_STATS_ATTR_OUTBPS:
                wide = nest == IPVS_DEST_ATTR_STATS64 or k in (IPVS_STATS_ATTR_INBYTES, IPVS_STATS_ATTR_OUTBYTES)
                if size != (8 if wide else 4):
                    return False
                where[(nest, k)] = field("Q" if wide else "I")
            elif size:
                fmt.append(f"{size}x")  # an attribute decode_dest ignores
            pad = -length & 3
            if pad:
                fmt.append(f"{pad}x")
            off += length + pad
        return True

    if len(view) < GENL_HDRLEN + 4:
        return None
    top_len, top_kind = _NLA.unpack_from(view, GENL_HDRLEN)
    if top_kind & NLA_TYPE_MASK != IPVS_CMD_ATTR_DEST or GENL_HDRLEN + top_len != len(view):
        return None
    headers.extend((top_len, top_kind))
    header_idx.extend((field("H"), field("H")))
    if not walk(GENL_HDRLEN + 4, GENL_HDRLEN + top_len, 0):
        return None
    nest = IPVS_DEST_ATTR_STATS64 if any(n == IPVS_DEST_ATTR_STATS64 for n, _ in where) else IPVS_DEST_ATTR_STATS
    need = [(0, k) for k in _DEST_LAYOUT_KINDS]
    need += [(nest, k) for k in range(IPVS_STATS_ATTR_CONNS, IPVS_STATS_ATTR_OUTBPS + 1)]
    if any(n not in where for n in need):
        return None
    packed = struct.Struct("".join(fmt))
    if packed.size != len(view):
        return None
    return _Layout(packed, tuple(headers), operator.itemgetter(*header_idx),
                   operator.itemgetter(*(where[n] for n in need)))


def _decode_dest_fast(view: memoryview) -> ObservedDest | None:
    """decode_dest through a learnt layout, or None to use the generic path."""
    n = len(view)
    if n < GENL_HDRLEN + 4:
        return None
    shape = bytes(view[GENL_HDRLEN : GENL_HDRLEN + 4])  # the nest's header: its length tells shapes apart
    layout = _dest_layouts.get(shape, False)
    if layout is False:
        if len(_dest_layouts) >= 64:
            return None
        layout = _dest_layouts[shape] = _learn_dest_layout(view)
    if layout is None or layout.fmt.size != n:
        return None
    raw = layout.fmt.unpack_from(view)
    if layout.pick_headers(raw) != layout.headers:
        return None
    values = layout.pick_values(raw)
    ident = values[:10]  # everything but the counters
    known = _dest_idents.get(ident)
    if known is None:
        addr, fam, port, fwd, weight, uth, lth, tun_type, tun_port, tun_flags = ident
        if fam == AF_INET:
            addr = addr[:4]
        elif fam != AF_INET6:
            return None  # the generic path raises the right error
        if _SWAP16:
            port = ((port & 0xFF) << 8) | (port >> 8)
            tun_port = ((tun_port & 0xFF) << 8) | (tun_port >> 8)
        forward = fwd & IP_VS_CONN_F_FWD_MASK
        if forward != FWD_TUNNEL and (tun_type or tun_port or tun_flags):
            attrs = DestAttrs(forward, weight, uth, lth)
        else:
            attrs = DestAttrs(forward, weight, uth, lth, tun_type, tun_port, tun_flags)
        if len(_dest_idents) >= IDENT_MEMO_LIMIT:
            _dest_idents.clear()
        known = _dest_idents[ident] = (DestKey(_addr_str(addr), port), fam, attrs)
    return ObservedDest(known[0], known[1], known[2], DestStats(*values[10:]))


def decode_dest(payload: memoryview | bytes, family: int = 0) -> ObservedDest:
    """An IPVS_CMD_ATTR_DEST payload -> ObservedDest; `family` is the fallback without ADDR_FAMILY."""
    fast = _decode_dest_fast(memoryview(payload))
    if fast is not None:
        return fast
    _, top = genl_cmd(payload)
    a = parse_attrs(_need(top, IPVS_CMD_ATTR_DEST, "IPVS_CMD_ATTR_DEST"))
    if IPVS_DEST_ATTR_ADDR_FAMILY in a:
        family = _unpack(_U16, a[IPVS_DEST_ATTR_ADDR_FAMILY], "dest family")
    key = DestKey(
        _addr_text(_need(a, IPVS_DEST_ATTR_ADDR, "IPVS_DEST_ATTR_ADDR"), family, "dest address"),
        _unpack(_BE16, _need(a, IPVS_DEST_ATTR_PORT, "IPVS_DEST_ATTR_PORT"), "dest port"),
    )

    v = _ints(a, _DEST_FIELDS)
    attrs = DestAttrs(v[0] & IP_VS_CONN_F_FWD_MASK, *v[1:7])
    if attrs.forward != FWD_TUNNEL and (v[4] or v[5] or v[6]):
        attrs = attrs.normalised()
    stats = _stats(a, IPVS_DEST_ATTR_STATS, IPVS_DEST_ATTR_STATS64, (v[7], v[8], v[9]))
    return ObservedDest(key, family, attrs, stats)


def decode_daemon(payload: memoryview | bytes) -> SyncDaemon:
    """An IPVS_CMD_ATTR_DAEMON payload -> SyncDaemon."""
    _, top = genl_cmd(payload)
    a = parse_attrs(_need(top, IPVS_CMD_ATTR_DAEMON, "IPVS_CMD_ATTR_DAEMON"))
    state = _unpack(_U32, _need(a, IPVS_DAEMON_ATTR_STATE, "IPVS_DAEMON_ATTR_STATE"), "daemon state")
    if state not in DAEMON_ROLES:
        raise CodecError(f"unknown sync daemon state {state}")
    return SyncDaemon(
        DAEMON_ROLES[state],
        _text(a[IPVS_DAEMON_ATTR_MCAST_IFN]) if IPVS_DAEMON_ATTR_MCAST_IFN in a else "",
        _unpack(_U32, a[IPVS_DAEMON_ATTR_SYNC_ID], "syncid") if IPVS_DAEMON_ATTR_SYNC_ID in a else 0,
    )


def decode_config(payload: memoryview | bytes) -> tuple[int, int, int]:
    """(tcp, tcpfin, udp) timeouts in seconds from a GET_CONFIG reply (absent = 0)."""
    _, a = genl_cmd(payload)
    return tuple(  # type: ignore[return-value]
        _unpack(_U32, a[kind], "timeout") if kind in a else 0
        for kind in (IPVS_CMD_ATTR_TIMEOUT_TCP, IPVS_CMD_ATTR_TIMEOUT_TCP_FIN, IPVS_CMD_ATTR_TIMEOUT_UDP)
    )


def decode_info(payload: memoryview | bytes) -> tuple[int, int]:
    """(version code e.g. 0x010201, connection hash table size) from a GET_INFO reply."""
    _, a = genl_cmd(payload)
    return (
        _unpack(_U32, _need(a, IPVS_INFO_ATTR_VERSION, "IPVS_INFO_ATTR_VERSION"), "version"),
        _unpack(_U32, _need(a, IPVS_INFO_ATTR_CONN_TAB_SIZE, "IPVS_INFO_ATTR_CONN_TAB_SIZE"), "size"),
    )
