"""ipvs_codec without a kernel: wire layout, round trips, framing, acks and malformed input."""

from __future__ import annotations

import errno
import socket
import struct

import pytest

from ipvsync.kernel import ipvs_codec as c
from ipvsync.model import (
    AF_INET,
    AF_INET6,
    FWD_DROUTE,
    FWD_MASQ,
    FWD_TUNNEL,
    SVC_F_HASHED,
    SVC_F_ONEPACKET,
    SVC_F_PERSISTENT,
    SVC_F_SCHED1,
    SVC_F_SCHED2,
    DestAttrs,
    DestKey,
    DestStats,
    ServiceAttrs,
    ServiceKey,
    SyncDaemon,
)

# --- an independent, kernel-like encoder for hand-built replies ---------------------------------


def nla(kind: int, data: bytes) -> bytes:
    n = 4 + len(data)
    return struct.pack("=HH", n, kind) + data + b"\0" * (-n & 3)


def nlmsg(kind: int, flags: int, seq: int, payload: bytes, pid: int = 1234) -> bytes:
    n = 16 + len(payload)
    return struct.pack("=IHHII", n, kind, flags, seq, pid) + payload + b"\0" * (-n & 3)


def genlhdr(cmd: int) -> bytes:
    return struct.pack("=BBH", cmd, 1, 0)


def attrs_of(payload: bytes, *path: int) -> dict[int, bytes]:
    """Walk nested attributes by hand (not via the codec) and return the innermost level."""
    level = payload[4:]
    for kind in (*path, None):
        out: dict[int, bytes] = {}
        off = 0
        while off + 4 <= len(level):
            n, k = struct.unpack_from("=HH", level, off)
            out[k & 0x3FFF] = level[off + 4 : off + n]
            off += (n + 3) & ~3
        if kind is None:
            return out
        level = out[kind]
    raise AssertionError("unreachable")


V4 = ServiceKey(AF_INET, socket.IPPROTO_TCP, "192.0.2.10", 80)
V6 = ServiceKey(AF_INET6, socket.IPPROTO_UDP, "2001:db8::10", 53)
FW4 = ServiceKey(AF_INET, fwmark=10)
FW6 = ServiceKey(AF_INET6, fwmark=0xFFFFFFFF)


# --- wire layout (checked with the hand walker, not the codec's decoder) ---------------------


def test_service_wire_layout_v4() -> None:
    p = c.new_service(V4, ServiceAttrs("wrr", SVC_F_PERSISTENT, 300, 24, ""))
    assert p[0] == c.IPVS_CMD_NEW_SERVICE and p[1] == 1
    a = attrs_of(p, c.IPVS_CMD_ATTR_SERVICE)
    assert a[c.IPVS_SVC_ATTR_AF] == struct.pack("=H", AF_INET)
    assert a[c.IPVS_SVC_ATTR_PROTOCOL] == struct.pack("=H", 6)
    assert a[c.IPVS_SVC_ATTR_ADDR][:4] == bytes([192, 0, 2, 10])
    assert a[c.IPVS_SVC_ATTR_PORT] == b"\x00\x50"  # big-endian 80
    assert a[c.IPVS_SVC_ATTR_SCHED_NAME] == b"wrr\0"
    assert a[c.IPVS_SVC_ATTR_FLAGS] == struct.pack("=II", SVC_F_PERSISTENT, 0xFFFFFFFF)
    assert a[c.IPVS_SVC_ATTR_TIMEOUT] == struct.pack("=I", 300)
    assert a[c.IPVS_SVC_ATTR_NETMASK] == b"\xff\xff\xff\x00"  # __be32 mask
    assert a[c.IPVS_SVC_ATTR_PE_NAME] == b"\0"  # empty string clears the PE
    assert c.IPVS_SVC_ATTR_FWMARK not in a


def test_service_wire_layout_v6_and_fwmark() -> None:
    a = attrs_of(c.set_service(V6, ServiceAttrs("sh", 0, 0, 64)), c.IPVS_CMD_ATTR_SERVICE)
    assert a[c.IPVS_SVC_ATTR_ADDR] == socket.inet_pton(socket.AF_INET6, "2001:db8::10")
    assert a[c.IPVS_SVC_ATTR_NETMASK] == struct.pack("=I", 64)  # v6: prefix length, host order
    f = attrs_of(c.del_service(FW4), c.IPVS_CMD_ATTR_SERVICE)
    assert f == {
        c.IPVS_SVC_ATTR_AF: struct.pack("=H", AF_INET),
        c.IPVS_SVC_ATTR_FWMARK: struct.pack("=I", 10),
    }


def test_user_flags_mask_is_sent() -> None:
    a = attrs_of(
        c.set_service(V4, ServiceAttrs("rr", SVC_F_ONEPACKET), flags_mask=0x5), c.IPVS_CMD_ATTR_SERVICE
    )
    assert a[c.IPVS_SVC_ATTR_FLAGS] == struct.pack("=II", SVC_F_ONEPACKET, 0x5)
    masked = c.set_service(V4, ServiceAttrs("rr", SVC_F_ONEPACKET | SVC_F_PERSISTENT, 60), flags_mask=0x1)
    assert c.decode_service(masked).attrs.flags == SVC_F_PERSISTENT  # only bits under the mask count


def test_dest_wire_layout_tunnel() -> None:
    p = c.new_dest(V4, DestKey("198.51.100.7", 8080), None, DestAttrs(FWD_TUNNEL, 5, 100, 10, 1, 6080, 2))
    assert p[0] == c.IPVS_CMD_NEW_DEST
    svc = attrs_of(p, c.IPVS_CMD_ATTR_SERVICE)
    assert c.IPVS_SVC_ATTR_SCHED_NAME not in svc  # key only
    d = attrs_of(p, c.IPVS_CMD_ATTR_DEST)
    assert d[c.IPVS_DEST_ATTR_PORT] == b"\x1f\x90"
    assert d[c.IPVS_DEST_ATTR_ADDR_FAMILY] == struct.pack("=H", AF_INET)
    assert d[c.IPVS_DEST_ATTR_TUN_TYPE] == b"\x01"
    assert d[c.IPVS_DEST_ATTR_TUN_PORT] == b"\x17\xc0"  # big-endian 6080
    assert d[c.IPVS_DEST_ATTR_TUN_FLAGS] == struct.pack("=H", 2)
    assert d[c.IPVS_DEST_ATTR_WEIGHT] == struct.pack("=I", 5)
    assert d[c.IPVS_DEST_ATTR_U_THRESH] == struct.pack("=I", 100)
    assert d[c.IPVS_DEST_ATTR_L_THRESH] == struct.pack("=I", 10)


def test_del_dest_carries_identity_only() -> None:
    d = attrs_of(c.del_dest(V6, DestKey("2001:db8::1", 53)), c.IPVS_CMD_ATTR_DEST)
    assert set(d) == {c.IPVS_DEST_ATTR_ADDR, c.IPVS_DEST_ATTR_PORT, c.IPVS_DEST_ATTR_ADDR_FAMILY}
    assert d[c.IPVS_DEST_ATTR_ADDR_FAMILY] == struct.pack("=H", AF_INET6)


def test_nested_attrs_are_flagged_and_aligned() -> None:
    p = c.new_service(V4, ServiceAttrs("rr"))
    n, kind = struct.unpack_from("=HH", p, 4)
    assert kind == c.IPVS_CMD_ATTR_SERVICE | c.NLA_F_NESTED
    assert len(p) % 4 == 0 and 4 + n == len(p)


def test_dump_requests() -> None:
    assert c.get_services() == genlhdr(c.IPVS_CMD_GET_SERVICE)
    assert c.get_daemons() == genlhdr(c.IPVS_CMD_GET_DAEMON)
    assert c.get_info() == genlhdr(c.IPVS_CMD_GET_INFO)
    assert c.get_config() == genlhdr(c.IPVS_CMD_GET_CONFIG)
    assert set(attrs_of(c.get_dests(FW6), c.IPVS_CMD_ATTR_SERVICE)) == {
        c.IPVS_SVC_ATTR_AF,
        c.IPVS_SVC_ATTR_FWMARK,
    }


# --- round trips: a request decodes like a dump reply -----------------------------------------


@pytest.mark.parametrize("key", [V4, V6, FW4, FW6], ids=str)
@pytest.mark.parametrize(
    "attrs",
    [
        ServiceAttrs("wlc"),
        ServiceAttrs("rr", SVC_F_PERSISTENT, 3600, 24, "sip"),
        ServiceAttrs("sh", SVC_F_SCHED1 | SVC_F_SCHED2 | SVC_F_ONEPACKET),
        ServiceAttrs("mh", SVC_F_PERSISTENT | SVC_F_SCHED2, 1, 0),
    ],
)
def test_service_round_trip(key: ServiceKey, attrs: ServiceAttrs) -> None:
    if key.family == AF_INET6 and attrs.netmask == 24:
        attrs = ServiceAttrs(attrs.scheduler, attrs.flags, attrs.timeout, 112, attrs.pe_name)
    for build in (c.new_service, c.set_service):
        got = c.decode_service(build(key, attrs))
        assert got.key == key
        assert got.attrs == attrs.normalised(key.family)
        assert got.dests == {}


def test_non_persistent_service_is_normalised() -> None:
    got = c.decode_service(c.new_service(V6, ServiceAttrs("rr", 0, 300, 32)))
    assert got.attrs == ServiceAttrs("rr", 0, 0, 128, "")


@pytest.mark.parametrize(
    ("svc", "dest", "family", "attrs"),
    [
        (V4, DestKey("198.51.100.1", 80), AF_INET, DestAttrs(FWD_MASQ, 1)),
        (V4, DestKey("198.51.100.255", 65535), None, DestAttrs(FWD_DROUTE, 0, 0xFFFFFFFF, 7)),
        (V6, DestKey("2001:db8::ff", 0), AF_INET6, DestAttrs(FWD_TUNNEL, 3, 0, 0, 2, 0, 1)),
        (V6, DestKey("198.51.100.2", 53), AF_INET, DestAttrs(FWD_TUNNEL, 9, 0, 0, 1, 6080, 2)),
        (FW4, DestKey("203.0.113.9", 0), None, DestAttrs(FWD_TUNNEL, 2, 5, 1, 0, 0, 0)),
    ],
)
def test_dest_round_trip(svc: ServiceKey, dest: DestKey, family: int | None, attrs: DestAttrs) -> None:
    for build in (c.new_dest, c.set_dest):
        got = c.decode_dest(build(svc, dest, family, attrs))
        assert got.key == dest
        assert got.family == (family or (AF_INET6 if ":" in dest.address else AF_INET))
        assert got.attrs == attrs
        assert got.stats == DestStats()


def test_dest_tunnel_fields_dropped_unless_tunnel() -> None:
    got = c.decode_dest(
        c.new_dest(V4, DestKey("198.51.100.1", 80), None, DestAttrs(FWD_MASQ, 1, 0, 0, 1, 99, 2))
    )
    assert got.attrs == DestAttrs(FWD_MASQ, 1)


def test_address_text_is_canonical() -> None:
    key = ServiceKey(AF_INET6, 6, "2001:0db8:0000:0000:0000:0000:0000:0001", 443)
    assert c.decode_service(c.new_service(key, ServiceAttrs())).key.address == "2001:db8::1"


def test_daemon_round_trip() -> None:
    d = SyncDaemon("backup", "eth0", 200)
    assert c.decode_daemon(c.new_daemon(d)) == d
    a = attrs_of(c.del_daemon(d), c.IPVS_CMD_ATTR_DAEMON)
    assert a == {c.IPVS_DAEMON_ATTR_STATE: struct.pack("=I", c.IP_VS_STATE_BACKUP)}


def test_config_round_trip_and_partial() -> None:
    assert c.decode_config(c.set_config(900, 120, 300)) == (900, 120, 300)
    assert c.decode_config(c.set_config(udp=5)) == (0, 0, 5)


# --- decoding hand-built kernel replies ------------------------------------------------------


def kernel_service_reply(flags: int, stats64: bool = True) -> bytes:
    st32 = b"".join(nla(k, struct.pack("=Q" if k in (4, 5) else "=I", k * 11)) for k in range(1, 11))
    st64 = b"".join(nla(k, struct.pack("=Q", k * 1000 + (1 << 40))) for k in range(1, 11))
    svc = b"".join(
        [
            nla(c.IPVS_SVC_ATTR_AF, struct.pack("=H", AF_INET)),
            nla(c.IPVS_SVC_ATTR_PROTOCOL, struct.pack("=H", 6)),
            nla(c.IPVS_SVC_ATTR_ADDR, bytes([192, 0, 2, 1]) + b"\xaa" * 12),  # v4 = first 4 of 16 bytes
            nla(c.IPVS_SVC_ATTR_PORT, b"\x01\xbb"),
            nla(c.IPVS_SVC_ATTR_SCHED_NAME, b"wlc\0"),
            nla(c.IPVS_SVC_ATTR_FLAGS, struct.pack("=II", flags, 0xFFFFFFFF)),
            nla(c.IPVS_SVC_ATTR_TIMEOUT, struct.pack("=I", 360)),
            nla(c.IPVS_SVC_ATTR_NETMASK, b"\xff\xff\x00\x00"),
            nla(c.IPVS_SVC_ATTR_STATS, st32),
            *([nla(c.IPVS_SVC_ATTR_STATS64, st64)] if stats64 else []),
        ]
    )
    return genlhdr(c.IPVS_CMD_NEW_SERVICE) + nla(c.IPVS_CMD_ATTR_SERVICE | c.NLA_F_NESTED, svc)


def test_kernel_service_reply_strips_hashed_and_prefers_stats64() -> None:
    got = c.decode_service(kernel_service_reply(SVC_F_HASHED | SVC_F_PERSISTENT))
    assert got.key == ServiceKey(AF_INET, 6, "192.0.2.1", 443)
    assert got.attrs == ServiceAttrs("wlc", SVC_F_PERSISTENT, 360, 16, "")
    assert got.stats.conns == 1000 + (1 << 40)
    assert got.stats.outbps == 10000 + (1 << 40)


def test_kernel_service_reply_stats32_fallback() -> None:
    got = c.decode_service(kernel_service_reply(SVC_F_HASHED, stats64=False))
    assert got.attrs == ServiceAttrs("wlc", 0, 0, 32, "")
    assert (got.stats.conns, got.stats.inbytes, got.stats.outbytes, got.stats.outbps) == (11, 44, 55, 110)


def test_stats64_with_pad_attributes() -> None:
    """Arches without efficient unaligned access interleave IPVS_STATS_ATTR_PAD (11) attributes."""
    st64 = nla(11, b"") + b"".join(nla(k, struct.pack("=Q", 7 * k)) + nla(11, b"") for k in range(1, 11))
    svc = nla(c.IPVS_SVC_ATTR_AF, struct.pack("=H", AF_INET))
    svc += nla(c.IPVS_SVC_ATTR_FWMARK, struct.pack("=I", 3)) + nla(c.IPVS_SVC_ATTR_STATS64, st64)
    got = c.decode_service(genlhdr(c.IPVS_CMD_NEW_SERVICE) + nla(c.IPVS_CMD_ATTR_SERVICE, svc))
    assert got.key == ServiceKey(AF_INET, fwmark=3)
    assert got.stats == DestStats(0, 0, 0, *(7 * k for k in range(1, 11)))


def test_kernel_dest_reply_with_conns() -> None:
    dest = b"".join(
        [
            nla(c.IPVS_DEST_ATTR_ADDR, socket.inet_pton(socket.AF_INET6, "2001:db8::5")),
            nla(c.IPVS_DEST_ATTR_PORT, b"\x00\x35"),
            nla(c.IPVS_DEST_ATTR_FWD_METHOD, struct.pack("=I", FWD_DROUTE)),
            nla(c.IPVS_DEST_ATTR_WEIGHT, struct.pack("=I", 7)),
            nla(c.IPVS_DEST_ATTR_TUN_TYPE, b"\x00"),
            nla(c.IPVS_DEST_ATTR_TUN_PORT, b"\x00\x00"),
            nla(c.IPVS_DEST_ATTR_TUN_FLAGS, b"\x00\x00"),
            nla(c.IPVS_DEST_ATTR_U_THRESH, struct.pack("=I", 0)),
            nla(c.IPVS_DEST_ATTR_L_THRESH, struct.pack("=I", 0)),
            nla(c.IPVS_DEST_ATTR_ACTIVE_CONNS, struct.pack("=I", 3)),
            nla(c.IPVS_DEST_ATTR_INACT_CONNS, struct.pack("=I", 4)),
            nla(c.IPVS_DEST_ATTR_PERSIST_CONNS, struct.pack("=I", 5)),
            nla(c.IPVS_DEST_ATTR_ADDR_FAMILY, struct.pack("=H", AF_INET6)),
            nla(c.IPVS_DEST_ATTR_STATS64, nla(c.IPVS_STATS_ATTR_INPKTS, struct.pack("=Q", 2**63))),
        ]
    )
    got = c.decode_dest(genlhdr(c.IPVS_CMD_NEW_DEST) + nla(c.IPVS_CMD_ATTR_DEST, dest))
    assert got.key == DestKey("2001:db8::5", 53) and got.family == AF_INET6
    assert got.attrs == DestAttrs(FWD_DROUTE, 7)
    assert (got.stats.active, got.stats.inactive, got.stats.persistent) == (3, 4, 5)
    assert got.stats.inpkts == 2**63 and got.stats.conns == 0


def test_dest_without_family_needs_fallback() -> None:
    dest = nla(c.IPVS_DEST_ATTR_ADDR, bytes([198, 51, 100, 1]) + bytes(12)) + nla(
        c.IPVS_DEST_ATTR_PORT, b"\x00\x50"
    )
    payload = genlhdr(c.IPVS_CMD_NEW_DEST) + nla(c.IPVS_CMD_ATTR_DEST, dest)
    assert c.decode_dest(payload, AF_INET).key == DestKey("198.51.100.1", 80)
    with pytest.raises(c.CodecError, match="family"):
        c.decode_dest(payload)


def test_family_id_info_and_daemon_replies() -> None:
    ctrl = genlhdr(c.CTRL_CMD_NEWFAMILY) + nla(c.CTRL_ATTR_FAMILY_NAME, b"IPVS\0")
    assert c.decode_family_id(ctrl + nla(c.CTRL_ATTR_FAMILY_ID, struct.pack("=H", 33))) == 33
    info = (
        genlhdr(c.IPVS_CMD_SET_INFO) + nla(1, struct.pack("=I", 0x010201)) + nla(2, struct.pack("=I", 4096))
    )
    assert c.decode_info(info) == (0x010201, 4096)
    daemon = nla(c.IPVS_DAEMON_ATTR_STATE, struct.pack("=I", 1)) + nla(c.IPVS_DAEMON_ATTR_MCAST_IFN, b"d0\0")
    daemon += nla(c.IPVS_DAEMON_ATTR_SYNC_ID, struct.pack("=I", 5)) + nla(
        c.IPVS_DAEMON_ATTR_SYNC_MAXLEN, b"\xc0\x05"
    )
    assert c.decode_daemon(genlhdr(c.IPVS_CMD_NEW_DAEMON) + nla(3, daemon)) == SyncDaemon("master", "d0", 5)


# --- framing and acks ------------------------------------------------------------------------


def test_frame_header() -> None:
    b = c.frame(28, c.NLM_F_REQUEST | c.NLM_F_ACK, 7, c.get_info())
    assert struct.unpack_from("=IHHII", b) == (20, 28, 5, 7, 0)
    assert len(b) == 20


def test_iter_messages_multi_and_padding() -> None:
    buf = (
        nlmsg(28, c.NLM_F_MULTI, 1, b"abcde")  # payload length 5: padded to 24 bytes
        + nlmsg(28, c.NLM_F_MULTI | c.NLM_F_DUMP_INTR, 1, b"xy")
        + nlmsg(c.NLMSG_DONE, c.NLM_F_MULTI, 1, struct.pack("=i", 0))
    )
    msgs = list(c.iter_messages(memoryview(buf)))
    assert [(m.type, m.seq, m.pid, bytes(m.payload)) for m in msgs] == [
        (28, 1, 1234, b"abcde"),
        (28, 1, 1234, b"xy"),
        (c.NLMSG_DONE, 1, 1234, b"\0\0\0\0"),
    ]
    assert msgs[1].flags & c.NLM_F_DUMP_INTR
    assert c.decode_done(msgs[2].payload) == 0
    assert c.decode_done(struct.pack("=i", -errno.EINTR)) == errno.EINTR


def test_ack_and_error() -> None:
    req = c.frame(28, 5, 9, c.del_service(V4))
    ack = nlmsg(c.NLMSG_ERROR, c.NLM_F_CAPPED, 9, struct.pack("=i", 0) + req[:16])
    err = nlmsg(c.NLMSG_ERROR, 0, 10, struct.pack("=i", -errno.ESRCH) + req)  # uncapped: request echoed
    (m1, m2) = c.iter_messages(ack + err)
    assert c.decode_error(m1.payload, m1.flags) == c.Ack(0, "", None, 9)
    assert c.decode_error(m2.payload, m2.flags).errno == errno.ESRCH


@pytest.mark.parametrize("capped", [True, False])
def test_ext_ack_message(capped: bool) -> None:
    req = c.frame(28, 5, 3, c.new_service(V4, ServiceAttrs()))
    echoed = req[:16] if capped else req
    tlvs = nla(c.NLMSGERR_ATTR_MSG, b"Unknown scheduler\0") + nla(c.NLMSGERR_ATTR_OFFS, struct.pack("=I", 40))
    flags = c.NLM_F_ACK_TLVS | (c.NLM_F_CAPPED if capped else 0)
    (m,) = c.iter_messages(nlmsg(c.NLMSG_ERROR, flags, 3, struct.pack("=i", -errno.ENOENT) + echoed + tlvs))
    assert c.decode_error(m.payload, m.flags) == c.Ack(errno.ENOENT, "Unknown scheduler", 40, 3)


# --- malformed input -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "buf",
    [
        b"\x14\x00\x00",  # shorter than a header
        struct.pack("=IHHII", 40, 28, 0, 1, 0) + b"\0" * 8,  # claims 40, has 24
        struct.pack("=IHHII", 8, 28, 0, 1, 0),  # length below header size
    ],
)
def test_truncated_messages(buf: bytes) -> None:
    with pytest.raises(c.CodecError, match="truncated"):
        list(c.iter_messages(buf))


def test_truncated_attributes_and_values() -> None:
    whole = c.new_service(V4, ServiceAttrs("rr"))
    with pytest.raises(c.CodecError, match="truncated"):
        c.decode_service(whole[:-9])
    with pytest.raises(c.CodecError, match="truncated"):
        c.parse_attrs(b"\x08\x00\x01\x00\x00")
    short_port = nla(c.IPVS_SVC_ATTR_PORT, b"\x50")
    svc = nla(c.IPVS_SVC_ATTR_AF, struct.pack("=H", 2)) + nla(2, struct.pack("=H", 6)) + nla(3, bytes(16))
    with pytest.raises(c.CodecError, match="port"):
        c.decode_service(genlhdr(1) + nla(c.IPVS_CMD_ATTR_SERVICE, svc + short_port))
    with pytest.raises(c.CodecError, match="IPVS_SVC_ATTR_AF"):
        c.decode_service(genlhdr(1) + nla(c.IPVS_CMD_ATTR_SERVICE, short_port))
    with pytest.raises(c.CodecError, match="genetlink"):
        c.decode_info(b"\x0f")
    with pytest.raises(c.CodecError, match="NLMSG_ERROR"):
        c.decode_error(struct.pack("=i", 0))


def test_encoder_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="family"):
        c.new_service(ServiceKey(AF_INET, 6, "2001:db8::1", 80), ServiceAttrs())
    with pytest.raises(ValueError, match="port"):
        c.new_dest(V4, DestKey("198.51.100.1", 70000), None, DestAttrs())
    with pytest.raises(ValueError, match="too long"):
        c.new_service(V4, ServiceAttrs("x" * 16))
    with pytest.raises(ValueError, match="netmask"):
        c.new_service(V4, ServiceAttrs("rr", SVC_F_PERSISTENT, 60, 33))
    with pytest.raises(ValueError, match="role"):
        c.new_daemon(SyncDaemon("primary", "eth0"))


@pytest.mark.parametrize("text", ["0.0.0.0", "198.51.100.7", "255.255.255.255", "::", "::1", "2001:db8::1",
                                  "2001:db8:0:1:0:0:0:1", "2001:0:0:1::1", "1:0:0:2:0:0:0:3", "::ffff:1.2.3.4",
                                  "::1.2.3.4", "64:ff9b::192.0.2.33", "fe80::1:0:0:0"])
def test_address_text_matches_ipaddress(text: str) -> None:
    import ipaddress

    ip = ipaddress.ip_address(text)
    assert c._addr_str(ip.packed) == str(ip)
