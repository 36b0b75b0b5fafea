"""The IPVS netlink socket: family lookup, dumps and batched requests with per-request acks.

Thin I/O around ipvs_codec: all bytes are built and parsed there. One receive buffer is
allocated per socket and reused for every recv (the dump of 10k real servers makes that matter).
"""

from __future__ import annotations

import errno as errno_mod
import os
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
        s.settimeout(timeout)
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

    def _recv(self) -> memoryview:
        """One datagram into the shared buffer; the view is valid until the next call."""
        try:
            n = self._sock.recv_into(self._buf, 0, socket.MSG_TRUNC)
        except TimeoutError:
            raise IpvsError(errno_mod.ETIMEDOUT, "no reply from the kernel") from None
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
        self._sock.send(c.frame(family, c.NLM_F_REQUEST | c.NLM_F_ACK, seq, payload))
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

    def _dump(self, payload: bytes, decode: Callable[[memoryview], T]) -> list[T]:
        """One dump request, all its parts decoded; restarted if the kernel flags it interrupted.

        A socket runs one dump at a time (a second request while one runs gets EBUSY), and the
        kernel finishes a non-empty dump only on our next recv, so dumps are not pipelined.
        """
        for _ in range(DUMP_RETRIES):
            seq = self._next_seq()
            self._sock.send(c.frame(self.family_id, c.NLM_F_REQUEST | c.NLM_F_DUMP, seq, payload))
            results: list[T] = []
            interrupted = False
            done = False
            failure: c.CodecError | None = None  # keep reading to DONE so the socket stays usable
            while not done:
                for msg in c.iter_messages(self._recv()):
                    if msg.seq != seq:
                        continue
                    if msg.type == c.NLMSG_DONE or msg.type == c.NLMSG_ERROR:
                        err = (
                            c.decode_done(msg.payload)
                            if msg.type == c.NLMSG_DONE
                            else c.decode_error(msg.payload, msg.flags).errno
                        )
                        if err:
                            raise IpvsError(err, "IPVS dump failed")
                        done = True
                    elif msg.type >= 0x10 and failure is None:
                        interrupted = interrupted or bool(msg.flags & c.NLM_F_DUMP_INTR)
                        try:
                            results.append(decode(msg.payload))
                        except c.CodecError as e:
                            failure = e
            if failure is not None:
                raise failure
            if not interrupted:
                return results
        raise IpvsError(errno_mod.EINTR, "IPVS dump kept being interrupted")

    # --- queries -----------------------------------------------------------------------------

    def _resolve_family(self) -> int:
        try:
            return self._request(c.GENL_ID_CTRL, c.get_family(), c.decode_family_id)
        except IpvsError as e:
            if e.errno == errno_mod.ENOENT:
                raise IpvsUnavailable() from None
            raise

    def services(self) -> list[ObservedService]:
        """All virtual services (without their real servers)."""
        return self._dump(c.get_services(), c.decode_service)

    def dests(self, key: ServiceKey) -> dict[DestKey, ObservedDest]:
        """Real servers of one service (empty if the service does not exist)."""
        return {d.key: d for d in self._dump(c.get_dests(key), c.decode_dest)}

    def dump(self) -> dict[ServiceKey, ObservedService]:
        """Every service with its real servers."""
        services = self.services()
        dests = [self._dump(c.get_dests(s.key), c.decode_dest) for s in services]
        return {
            s.key: ObservedService(s.key, s.attrs, {d.key: d for d in ds}, s.stats)
            for s, ds in zip(services, dests, strict=True)
        }

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

        The kernel processes every message of a send even after one fails, so each request's
        own ack says whether it took effect. With stop_on_error no batch is sent after a batch
        that had an error. Each batch ends with an NLMSG_NOOP barrier whose ack proves all
        earlier messages were processed: a request the kernel answered with no ack at all (a
        handler returning -EINTR, e.g. DEL_DAEMON racing its thread's start) gets EINTR, which
        means "outcome unknown, re-read the state".
        """
        acks: list[c.Ack | None] = [None] * len(payloads)
        start = 0
        flags = c.NLM_F_REQUEST | c.NLM_F_ACK
        while start < len(payloads):
            by_seq: dict[int, int] = {}
            out = bytearray()
            i = start
            while i < len(payloads) and len(by_seq) < self.max_batch:
                seq = self._next_seq()
                msg = c.frame(self.family_id, flags, seq, payloads[i])
                if by_seq and len(out) + len(msg) > SEND_BATCH_BYTES:
                    break
                by_seq[seq] = i
                out += msg
                i += 1
            barrier = self._next_seq()
            out += c.frame(c.NLMSG_NOOP, flags, barrier, b"")
            self._sock.send(out)
            failed = False
            waiting = True
            while waiting:
                for msg in c.iter_messages(self._recv()):
                    if msg.type != c.NLMSG_ERROR:
                        continue
                    if msg.seq == barrier:
                        waiting = False
                        continue
                    ack = c.decode_error(msg.payload, msg.flags)
                    j = by_seq.pop(msg.seq, None)
                    if j is not None:
                        acks[j] = ack
                        failed = failed or ack.errno != 0
            for seq, j in by_seq.items():
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
