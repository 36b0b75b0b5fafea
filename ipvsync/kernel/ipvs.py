"""The IPVS netlink socket: family lookup, dumps and batched requests, each request's outcome known.

Thin I/O around ipvs_codec: all bytes are built and parsed there. One receive buffer is
allocated per socket and reused for every recv (the dump of 10k real servers makes that matter).
The socket is non-blocking and waits (poll, with the timeout) only when the kernel has nothing
queued yet: a timeout on the socket itself would cost a poll() before every send and recv, and
a full observe of 1000 services is ~3000 of them (syscalls are expensive under UML and VMs).

Dump replies are decoded through a memo keyed by each message's bytes (decoding is a pure
function of them): an unchanged kernel object decodes to the identical cached Python object,
so a no-drift reconcile re-reads the live kernel but skips decoding, and the planner can skip
comparing objects it has compared before. The memo holds what the last full dump returned.
"""

from __future__ import annotations

import errno as errno_mod
import operator
import os
import select
import socket
from collections.abc import Callable, Sequence
from typing import Self, TypeVar

from ipvsync.kernel import ipvs_codec as c
from ipvsync.model import DestKey, ObservedDest, ObservedService, ServiceKey, SyncDaemon

T = TypeVar("T")

NETLINK_GENERIC = 16
SO_RCVBUFFORCE = 33  # not exported by the socket module
RECV_BUFFER = 256 << 10  # also caps the kernel's dump skb size (it follows our largest recv, <= 32 KiB)
SEND_BATCH_BYTES = 64 << 10
MAX_BATCH = 1024  # requests per send
ACK_TRUESIZE = 2048  # generous kernel memory charge per queued ack, to size batches to SO_RCVBUF
DUMP_RETRIES = 5
MEMO_MIN = 4096  # partial reads between full dumps keep at most max(this, 2 x the last full dump) messages
# service and real-server writes: sent without NLM_F_ACK (an error still gets its own NLMSG_ERROR)
SILENT_CMDS = frozenset({c.IPVS_CMD_NEW_SERVICE, c.IPVS_CMD_SET_SERVICE, c.IPVS_CMD_DEL_SERVICE,
                         c.IPVS_CMD_NEW_DEST, c.IPVS_CMD_SET_DEST, c.IPVS_CMD_DEL_DEST})
OK = c.Ack(0)


class IpvsError(OSError):
    """A netlink request failed: errno (positive) and a message (with the kernel's ext-ack text)."""

    def __init__(self, err: int, message: str = "") -> None:
        super().__init__(err, message or os.strerror(err))


class IpvsUnavailable(IpvsError):
    """The running kernel has no IPVS generic-netlink family (module not loaded / not built)."""

    exit_code = 4

    def __init__(self) -> None:
        super().__init__(errno_mod.ENOENT, "no IPVS in this kernel: modprobe ip_vs")


class IpvsSocket:
    """A generic-netlink socket bound to the IPVS family of the current network namespace."""

    def __init__(self, *, rcvbuf: int = 8 << 20, timeout: float | None = 30.0) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC)
        try:
            self._setup(rcvbuf, timeout)
            self._buf = bytearray(RECV_BUFFER)
            self._view = memoryview(self._buf)
            self._seq = 0
            self._memo: dict[bytes, object] = {}  # message bytes -> decoded value, this generation
            self._memo_old: dict[bytes, object] = {}  # ... the previous generation (one full dump)
            self._last_dump: dict[ServiceKey, ObservedService] = {}
            self._memo_cap = MEMO_MIN
            self._full_dumps = 0
            self.family_id = 0
            self.family_id = self._resolve_family()
        except BaseException:
            self._sock.close()
            raise

    def _setup(self, rcvbuf: int, timeout: float | None) -> None:
        s = self._sock
        for opt in (SO_RCVBUFFORCE, socket.SO_RCVBUF):  # FORCE needs CAP_NET_ADMIN
            try:
                s.setsockopt(socket.SOL_SOCKET, opt, rcvbuf)
                break
            except OSError:
                continue
        for opt in (c.NETLINK_CAP_ACK, c.NETLINK_EXT_ACK):  # absent on old kernels: harmless
            try:
                s.setsockopt(c.SOL_NETLINK, opt, 1)
            except OSError:
                pass
        s.setblocking(False)
        self.timeout = timeout
        s.bind((0, 0))
        self.rcvbuf = s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        self.max_batch = max(1, min(MAX_BATCH, self.rcvbuf // ACK_TRUESIZE))

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()

    def fileno(self) -> int:
        return self._sock.fileno()

    # --- transport ---------------------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF or 1
        return self._seq

    def _wait(self, events: int) -> None:
        """Block until the socket is ready for `events`, at most the timeout."""
        p = select.poll()
        p.register(self._sock.fileno(), events)
        if not p.poll(None if self.timeout is None else max(0, int(self.timeout * 1000))):
            raise IpvsError(errno_mod.ETIMEDOUT, "no reply from the kernel")

    def _send(self, data: bytes) -> None:
        while True:
            try:
                self._sock.send(data)
                return
            except BlockingIOError:
                self._wait(select.POLLOUT)

    def _recv(self) -> memoryview:
        """One datagram into the shared buffer; the view is valid until the next call."""
        while True:
            try:
                n = self._sock.recv_into(self._buf, 0, socket.MSG_TRUNC)
                break
            except BlockingIOError:
                self._wait(select.POLLIN)
            except OSError as e:
                if e.errno == errno_mod.ENOBUFS:
                    raise IpvsError(e.errno, "netlink receive buffer overrun: replies lost") from None
                raise
        if n > len(self._buf):
            raise IpvsError(errno_mod.EMSGSIZE, f"netlink message of {n} bytes exceeds receive buffer")
        return self._view[:n]

    def _request(self, family: int, payload: bytes, decode: Callable[[memoryview], T]) -> T:
        """One doit request; returns the decoded single reply."""
        seq = self._next_seq()
        self._send(c.frame(family, c.NLM_F_REQUEST | c.NLM_F_ACK, seq, payload))
        result: list[T] = []
        while True:
            for msg in c.iter_messages(self._recv()):
                if msg.seq != seq:
                    continue
                if msg.type == c.NLMSG_ERROR:
                    ack = c.decode_error(msg.payload, msg.flags)
                    if ack.errno:
                        raise IpvsError(ack.errno, ack.message)
                    if not result:
                        raise IpvsError(errno_mod.ENODATA, "kernel acked without a reply")
                    return result[0]
                if msg.type >= 0x10:
                    result.append(decode(msg.payload))

    def _dump(self, payload: bytes, decode: Callable[[memoryview], T], memo: bool = False) -> list[T]:
        """One dump request, all its parts decoded; restarted if the kernel flags it interrupted.

        A socket runs one dump at a time (a second request while one runs gets EBUSY), and the
        kernel finishes a non-empty dump only on our next recv, so dumps are not pipelined. With
        `memo`, each message is decoded through the memo (see the module docstring).
        """
        hdr = c.NLMSG_HDRLEN
        unpack = c.NLMSG_HEADER.unpack_from
        for _ in range(DUMP_RETRIES):
            seq = self._next_seq()
            self._send(c.frame(self.family_id, c.NLM_F_REQUEST | c.NLM_F_DUMP, seq, payload))
            results: list[T] = []
            interrupted = False
            done = False
            failure: c.CodecError | None = None  # keep reading to DONE so the socket stays usable
            new, old = self._memo, self._memo_old
            while not done:
                view = self._recv()
                end = len(view)
                off = 0
                while off < end:  # c.iter_messages, inlined: this loop runs for every real server
                    if end - off < hdr:
                        raise c.CodecError(f"truncated netlink header: {end - off} bytes at offset {off}")
                    length, kind, flags, mseq, _ = unpack(view, off)
                    if length < hdr or off + length > end:
                        raise c.CodecError(f"truncated netlink message: length {length}, {end - off} bytes left")
                    if mseq != seq:
                        pass
                    elif kind >= 0x10:
                        if failure is None:
                            if flags & c.NLM_F_DUMP_INTR:
                                interrupted = True
                            try:
                                if memo:
                                    raw = bytes(view[off + hdr : off + length])
                                    value = new.get(raw)
                                    if value is None:
                                        value = old.get(raw)
                                        if value is None:
                                            value = decode(memoryview(raw))
                                        new[raw] = value
                                    results.append(value)  # type: ignore[arg-type]
                                else:
                                    results.append(decode(view[off + hdr : off + length]))
                            except c.CodecError as e:
                                failure = e
                    elif kind == c.NLMSG_DONE or kind == c.NLMSG_ERROR:
                        body = view[off + hdr : off + length]
                        err = c.decode_done(body) if kind == c.NLMSG_DONE else c.decode_error(body, flags).errno
                        if err:
                            raise IpvsError(err, "IPVS dump failed")
                        done = True
                    off += (length + 3) & ~3
            if failure is not None:
                raise failure
            if not interrupted:
                return results
        raise IpvsError(errno_mod.EINTR, "IPVS dump kept being interrupted")

    def _memo_turn(self) -> None:
        """End a memo generation: keep what the last full dump saw, drop the rest."""
        self._memo_old = self._memo
        self._memo = {}

    # --- queries -----------------------------------------------------------------------------

    def _resolve_family(self) -> int:
        try:
            return self._request(c.GENL_ID_CTRL, c.get_family(), c.decode_family_id)
        except IpvsError as e:
            if e.errno == errno_mod.ENOENT:
                raise IpvsUnavailable() from None
            raise

    def service(self, key: ServiceKey) -> ObservedService | None:
        """One virtual service (without its real servers), or None when the kernel has none such."""
        try:
            return self._request(self.family_id, c.get_service(key), c.decode_service)
        except IpvsError as e:
            if e.errno in (errno_mod.ESRCH, errno_mod.ENOENT):
                return None
            raise

    def services(self, *, memo: bool = True) -> list[ObservedService]:
        """All virtual services (without their real servers; do not mutate their `dests`)."""
        return self._dump(c.get_services(), c.decode_service, memo=memo)

    def dests(self, key: ServiceKey) -> dict[DestKey, ObservedDest]:
        """Real servers of one service (empty if the service does not exist)."""
        if len(self._memo) > self._memo_cap:
            self._memo_turn()
        return {d.key: d for d in self._dump(c.get_dests(key), c.decode_dest, memo=True)}

    def dump(self) -> dict[ServiceKey, ObservedService]:
        """Every service with its real servers (treat the values as frozen, their `dests` too).

        A service whose dump decoded to the same objects as in the last full dump is returned as
        that dump's identical ObservedService (no new objects for an unchanged service). A socket's
        first full dump does not fill the memo: a one-shot command (plan, export) reads the table
        once and would only pay for it (memory is slow to grow under UML and in small VMs).
        """
        memo = self._full_dumps > 0
        self._full_dumps += 1
        self._memo_turn()
        services = self.services(memo=memo)
        last = self._last_dump
        out: dict[ServiceKey, ObservedService] = {}
        get_dests, decode_dest, same = c.get_dests, c.decode_dest, operator.is_
        for s in services:
            key = s.key
            ds = self._dump(get_dests(key), decode_dest, memo=memo)
            o = last.get(key)
            if (o is None or o.attrs is not s.attrs or o.stats is not s.stats or len(o.dests) != len(ds)
                    or not all(map(same, o.dests.values(), ds))):
                o = ObservedService(key, s.attrs, {d.key: d for d in ds}, s.stats)
            out[key] = o
        self._last_dump = out
        self._memo_old = {}  # everything still in the kernel moved into the current generation
        self._memo_cap = max(MEMO_MIN, 2 * len(self._memo))
        return out

    def daemons(self) -> list[SyncDaemon]:
        return self._dump(c.get_daemons(), c.decode_daemon)

    def config(self) -> tuple[int, int, int]:
        """(tcp, tcpfin, udp) timeouts in seconds."""
        return self._request(self.family_id, c.get_config(), c.decode_config)

    def info(self) -> tuple[int, int]:
        """(IPVS version code, connection hash table size)."""
        return self._request(self.family_id, c.get_info(), c.decode_info)

    # --- changes -----------------------------------------------------------------------------

    def execute_acks(self, payloads: Sequence[bytes], *, stop_on_error: bool = False) -> list[c.Ack | None]:
        """Send requests in batches; one Ack per request in order (None = not attempted).

        The kernel processes every message of a send even after one fails, and answers a failed
        request with an NLMSG_ERROR of its own (its seq) whether or not it asked for an ack. With
        stop_on_error no batch is sent after a batch that had an error. Each batch ends with an
        NLMSG_NOOP barrier whose ack proves all earlier messages were processed. Service and
        real-server writes are sent without NLM_F_ACK (their handlers never return -EINTR, so
        silence before the barrier is success: one recv per batch instead of one per request);
        every other request asks for its ack, and one the kernel answered with no ack at all (a
        handler returning -EINTR, e.g. DEL_DAEMON racing its thread's start) gets EINTR, which
        means "outcome unknown, re-read the state".
        """
        acks: list[c.Ack | None] = [None] * len(payloads)
        start = 0
        n = len(payloads)
        acked = c.NLM_F_REQUEST | c.NLM_F_ACK
        frame = c.frame
        family = self.family_id
        while start < n:
            by_seq: dict[int, int] = {}  # every request of the batch: seq -> index
            silent: list[int] = []  # indexes of requests sent without NLM_F_ACK
            parts: list[bytes] = []
            size = 0
            i = start
            while i < n and i - start < self.max_batch:
                payload = payloads[i]
                quiet = payload[0] in SILENT_CMDS
                seq = self._next_seq()
                msg = frame(family, c.NLM_F_REQUEST if quiet else acked, seq, payload)
                if parts and size + len(msg) > SEND_BATCH_BYTES:
                    break
                by_seq[seq] = i
                if quiet:
                    silent.append(i)
                parts.append(msg)
                size += len(msg)
                i += 1
            barrier = self._next_seq()
            parts.append(frame(c.NLMSG_NOOP, acked, barrier, b""))
            self._send(b"".join(parts))
            failed = False
            waiting = True
            while waiting:
                for msg in c.iter_messages(self._recv()):
                    if msg.type != c.NLMSG_ERROR:
                        continue
                    if msg.seq == barrier:
                        waiting = False
                        continue
                    j = by_seq.pop(msg.seq, None)
                    if j is not None:
                        ack = c.decode_error(msg.payload, msg.flags)
                        acks[j] = ack
                        failed = failed or ack.errno != 0
            for j in silent:
                if acks[j] is None:
                    acks[j] = OK
            for seq, j in by_seq.items():
                if acks[j] is None:
                    acks[j] = c.Ack(errno_mod.EINTR, "no ack from the kernel: outcome unknown", None, seq)
                    failed = True
            start = i
            if failed and stop_on_error:
                break
        return acks

    def execute(self, payloads: Sequence[bytes], *, stop_on_error: bool = False) -> list[int | None]:
        """Like execute_acks, as errnos: 0 = done, >0 = failed, None = not attempted."""
        acks = self.execute_acks(payloads, stop_on_error=stop_on_error)
        return [a.errno if a is not None else None for a in acks]
