"""A tiny DNS wire codec for the dns health check: one question out, header and answers back.

Rules of residence: pure, stdlib only. Enough of RFC 1035 to ask one question over UDP and to walk a
reply (name compression included) without trusting it: every read is bounds-checked and a malformed
reply raises `DnsError`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

QTYPES = {"A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "PTR": 12, "MX": 15, "TXT": 16, "AAAA": 28, "SRV": 33}
CLASS_IN = 1
RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}


class DnsError(ValueError):
    """A name that cannot be encoded, or a reply that cannot be decoded."""


def encode_name(name: str) -> bytes:
    """'www.example.org' / 'example.org.' / '.' -> wire labels."""
    name = name.rstrip(".")
    out = bytearray()
    if name:
        for label in name.split("."):
            raw = label.encode("idna") if not label.isascii() else label.encode()
            if not 0 < len(raw) < 64:
                raise DnsError(f"bad label {label!r} in {name!r}")
            out += bytes([len(raw)]) + raw
    out += b"\0"
    if len(out) > 255:
        raise DnsError(f"name {name!r} is longer than 255 bytes")
    return bytes(out)


def question(name: str, qtype: str) -> bytes:
    """The question section: name, type, class IN."""
    return encode_name(name) + struct.pack("!HH", QTYPES[qtype], CLASS_IN)


def encode_query(qid: int, name: str, qtype: str, recursion: bool = True) -> bytes:
    """A standard query with one question."""
    flags = 0x0100 if recursion else 0
    return struct.pack("!HHHHHH", qid, flags, 1, 0, 0, 0) + question(name, qtype)


@dataclass(frozen=True)
class Record:
    name: str
    type: int
    cls: int
    ttl: int
    rdata: bytes


@dataclass(frozen=True)
class Reply:
    id: int
    flags: int
    rcode: int
    question: bytes  # raw question section as sent back
    answers: tuple[Record, ...]

    @property
    def is_response(self) -> bool:
        return bool(self.flags & 0x8000)

    @property
    def truncated(self) -> bool:
        return bool(self.flags & 0x0200)

    @property
    def rcode_name(self) -> str:
        return RCODES.get(self.rcode, f"RCODE{self.rcode}")


def _name(buf: bytes, off: int) -> tuple[str, int]:
    """Decode a (possibly compressed) name at `off`; return it and the offset after it."""
    labels: list[str] = []
    end = -1
    jumps = 0
    while True:
        if off >= len(buf):
            raise DnsError("name runs past the end of the message")
        n = buf[off]
        if n & 0xC0 == 0xC0:
            if off + 1 >= len(buf):
                raise DnsError("truncated compression pointer")
            if end < 0:
                end = off + 2
            off = ((n & 0x3F) << 8) | buf[off + 1]
            jumps += 1
            if jumps > 64:
                raise DnsError("compression loop")
            continue
        if n & 0xC0:
            raise DnsError(f"unsupported label type 0x{n:02x}")
        off += 1
        if n == 0:
            break
        if off + n > len(buf):
            raise DnsError("label runs past the end of the message")
        labels.append(buf[off:off + n].decode("ascii", "replace"))
        off += n
    return ".".join(labels) + ".", (end if end >= 0 else off)


def decode_reply(buf: bytes) -> Reply:
    """Header, raw question section and the answer records of a reply."""
    if len(buf) < 12:
        raise DnsError(f"reply of {len(buf)} bytes is shorter than a DNS header")
    qid, flags, qd, an, _ns, _ar = struct.unpack_from("!HHHHHH", buf)
    off = 12
    for _ in range(qd):
        _, off = _name(buf, off)
        off += 4
        if off > len(buf):
            raise DnsError("question runs past the end of the message")
    qsection = buf[12:off]
    answers = []
    for _ in range(an):
        name, off = _name(buf, off)
        if off + 10 > len(buf):
            raise DnsError("answer header runs past the end of the message")
        rtype, rcls, ttl, rdlen = struct.unpack_from("!HHIH", buf, off)
        off += 10
        if off + rdlen > len(buf):
            raise DnsError("answer data runs past the end of the message")
        answers.append(Record(name, rtype, rcls, ttl, buf[off:off + rdlen]))
        off += rdlen
    return Reply(qid, flags, flags & 0xF, qsection, tuple(answers))
