"""IpvsSocket's transport logic against a fake netlink peer (no kernel): the dump memo and batch acks."""

from __future__ import annotations

import collections
import errno
import socket
import struct

import pytest

from ipvsync.kernel import ipvs as ipvs_mod
from ipvsync.kernel import ipvs_codec as c
from ipvsync.kernel.ipvs import IpvsSocket
from ipvsync.model import AF_INET, FWD_MASQ, DestAttrs, DestKey, ServiceAttrs, ServiceKey, SyncDaemon

FAMILY = 42
SVC = ServiceKey(AF_INET, 6, "192.0.2.10", 80)


def nla(kind: int, data: bytes) -> bytes:
    n = 4 + len(data)
    return struct.pack("=HH", n, kind) + data + b"\0" * (-n & 3)


def nlmsg(kind: int, flags: int, seq: int, payload: bytes) -> bytes:
    n = 16 + len(payload)
    return struct.pack("=IHHII", n, kind, flags, seq, 1) + payload + b"\0" * (-n & 3)


def dest_reply(addr: str, weight: int, active: int = 0) -> bytes:
    """A kernel-shaped IPVS_CMD_NEW_DEST message payload (attribute order as ip_vs_genl_fill_dest)."""
    stats = b"".join(nla(k, struct.pack("=Q", 0)) for k in range(1, 11))
    dest = b"".join([
        nla(c.IPVS_DEST_ATTR_ADDR, socket.inet_pton(socket.AF_INET, addr) + bytes(12)),
        nla(c.IPVS_DEST_ATTR_PORT, struct.pack("!H", 8080)),
        nla(c.IPVS_DEST_ATTR_FWD_METHOD, struct.pack("=I", FWD_MASQ)),
        nla(c.IPVS_DEST_ATTR_WEIGHT, struct.pack("=I", weight)),
        nla(c.IPVS_DEST_ATTR_TUN_TYPE, b"\0"),
        nla(c.IPVS_DEST_ATTR_TUN_PORT, b"\0\0"),
        nla(c.IPVS_DEST_ATTR_TUN_FLAGS, b"\0\0"),
        nla(c.IPVS_DEST_ATTR_U_THRESH, struct.pack("=I", 0)),
        nla(c.IPVS_DEST_ATTR_L_THRESH, struct.pack("=I", 0)),
        nla(c.IPVS_DEST_ATTR_ACTIVE_CONNS, struct.pack("=I", active)),
        nla(c.IPVS_DEST_ATTR_INACT_CONNS, struct.pack("=I", 0)),
        nla(c.IPVS_DEST_ATTR_PERSIST_CONNS, struct.pack("=I", 0)),
        nla(c.IPVS_DEST_ATTR_ADDR_FAMILY, struct.pack("=H", AF_INET)),
        nla(c.IPVS_DEST_ATTR_STATS64 | c.NLA_F_NESTED, stats),
    ])
    return struct.pack("=BBH", c.IPVS_CMD_NEW_DEST, 1, 0) + nla(c.IPVS_CMD_ATTR_DEST | c.NLA_F_NESTED, dest)


class FakeKernel:
    """Answers dumps with `self.dests` / `self.services`, and writes per `self.fail` (cmd -> errno)."""

    def __init__(self) -> None:
        self.queue: collections.deque[bytes] = collections.deque()
        self.dests: list[bytes] = []
        self.services: list[bytes] = []
        self.fail: dict[int, int] = {}
        self.no_ack: set[int] = set()
        self.sent_flags: list[tuple[int, int]] = []  # (genl cmd, nlmsg flags) of every request

    def fileno(self) -> int:
        return -1

    def send(self, data: bytes) -> int:
        for m in c.iter_messages(data):
            if m.type == c.NLMSG_NOOP:
                self.queue.append(nlmsg(c.NLMSG_ERROR, 0, m.seq, struct.pack("=i", 0) + bytes(16)))
                continue
            cmd = m.payload[0]
            self.sent_flags.append((cmd, m.flags))
            if m.flags & c.NLM_F_DUMP:
                parts = self.dests if cmd == c.IPVS_CMD_GET_DEST else self.services
                self.queue.append(b"".join(nlmsg(FAMILY, c.NLM_F_MULTI, m.seq, p) for p in parts))
                self.queue.append(nlmsg(c.NLMSG_DONE, c.NLM_F_MULTI, m.seq, struct.pack("=i", 0)))
                continue
            err = self.fail.get(cmd, 0)
            if cmd in self.no_ack:
                continue
            if err or m.flags & c.NLM_F_ACK:
                self.queue.append(nlmsg(c.NLMSG_ERROR, c.NLM_F_CAPPED, m.seq, struct.pack("=i", -err) + bytes(16)))
        return len(data)

    def recv_into(self, buf: bytearray, nbytes: int = 0, flags: int = 0) -> int:
        if not self.queue:
            raise BlockingIOError(errno.EAGAIN, "empty")
        data = self.queue.popleft()
        buf[: len(data)] = data
        return len(data)


def fake_socket(kernel: FakeKernel) -> IpvsSocket:
    s = IpvsSocket.__new__(IpvsSocket)
    s._sock = kernel  # type: ignore[assignment]
    s._buf = bytearray(ipvs_mod.RECV_BUFFER)
    s._view = memoryview(s._buf)
    s._seq = 0
    s._memo, s._memo_old, s._last_dump, s._memo_cap, s._full_dumps = {}, {}, {}, ipvs_mod.MEMO_MIN, 0
    s.family_id = FAMILY
    s.timeout = 0.01
    s.max_batch = 4
    return s


def test_unchanged_kernel_objects_decode_to_the_identical_objects() -> None:
    k = FakeKernel()
    k.dests = [dest_reply("198.51.100.1", 1), dest_reply("198.51.100.2", 1)]
    s = fake_socket(k)
    first = s.dests(SVC)
    again = s.dests(SVC)
    assert list(first) == [DestKey("198.51.100.1", 8080), DestKey("198.51.100.2", 8080)]
    assert all(first[d] is again[d] for d in first)
    k.dests = [dest_reply("198.51.100.1", 5), dest_reply("198.51.100.2", 1, active=3)]
    changed = s.dests(SVC)
    a, b = changed.values()
    assert a.attrs == DestAttrs(FWD_MASQ, 5) and a is not first[a.key]
    assert b.stats.active == 3 and b is not first[b.key]  # counters are read live too
    assert b.attrs is first[b.key].attrs  # ... but the unchanged settings are the identical object


def test_full_dump_keeps_only_what_it_saw() -> None:
    k = FakeKernel()
    svc = c.new_service(SVC, ServiceAttrs("wlc"))  # a request decodes like a dump reply
    k.services = [svc]
    k.dests = [dest_reply("198.51.100.1", 1)]
    s = fake_socket(k)
    s.dump()
    assert not s._memo  # a socket's first full dump (a one-shot command's only one) keeps nothing
    one = s.dump()
    k.dests = [dest_reply("198.51.100.9", 1)]
    two = s.dump()
    assert list(two[SVC].dests) == [DestKey("198.51.100.9", 8080)]
    assert len(s._memo) == 2 and not s._memo_old  # the service and the one real server now there
    assert two[SVC].attrs is one[SVC].attrs
    three = s.dump()
    assert three[SVC] is two[SVC]  # nothing changed: the identical service object, dests and all
    k.dests.append(dest_reply("198.51.100.10", 1))
    four = s.dump()
    assert four[SVC] is not three[SVC] and len(four[SVC].dests) == 2 and len(three[SVC].dests) == 1


def test_service_and_dest_writes_go_without_acks_and_errors_still_arrive() -> None:
    k = FakeKernel()
    k.fail = {c.IPVS_CMD_DEL_DEST: errno.ENOENT}
    s = fake_socket(k)
    reqs = [c.new_service(SVC, ServiceAttrs("wlc"))]
    reqs += [c.new_dest(SVC, DestKey(f"198.51.100.{i}", 80), None, DestAttrs()) for i in range(1, 7)]
    reqs += [c.del_dest(SVC, DestKey("198.51.100.99", 80)), c.set_config(900, 0, 0)]
    acks = s.execute_acks(reqs)
    assert [a.errno if a else None for a in acks] == [0] * 7 + [errno.ENOENT, 0]
    flags = dict(k.sent_flags)
    assert not flags[c.IPVS_CMD_NEW_DEST] & c.NLM_F_ACK and not flags[c.IPVS_CMD_NEW_SERVICE] & c.NLM_F_ACK
    assert flags[c.IPVS_CMD_SET_CONFIG] & c.NLM_F_ACK
    assert s.execute(reqs[:2] + reqs[7:8] + reqs[1:3], stop_on_error=True) == [0, 0, errno.ENOENT, 0, None]


def test_acked_request_without_ack_is_outcome_unknown() -> None:
    k = FakeKernel()
    k.no_ack = {c.IPVS_CMD_DEL_DAEMON}
    s = fake_socket(k)
    codes = s.execute([c.new_daemon(SyncDaemon("backup", "sync0", 3)), c.del_daemon(SyncDaemon("backup", "sync0"))])
    assert codes == [0, errno.EINTR]


def test_wait_times_out_when_the_kernel_says_nothing() -> None:
    k = FakeKernel()
    quiet, other = socket.socketpair()
    k.fileno = quiet.fileno  # type: ignore[method-assign]  # never readable: poll() times out
    try:
        with pytest.raises(ipvs_mod.IpvsError) as exc:
            fake_socket(k)._recv()
    finally:
        quiet.close()
        other.close()
    assert exc.value.errno == errno.ETIMEDOUT

