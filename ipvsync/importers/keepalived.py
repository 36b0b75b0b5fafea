"""keepalived.conf -> ipvsync YAML (`ipvsync import-keepalived FILE`).

Two layers: a parser for keepalived's real syntax (`{ }` blocks, `#`/`!` comments, quoted strings
with escapes, `include` globs relative to the including file, `$NAME=` parameters, `@id`
conditional lines) into a tree of `Node`s, and a converter of the LVS part (virtual_server,
virtual_server_group, real_server, checkers, track_file) into an ipvsync document whose kernel
state matches what keepalived 2.2 programs (`ipvsadm -Sn`). Everything not carried over is
reported as a "FILE:LINE: keyword — why" note; nothing is dropped silently.

Keepalived behaviours reproduced (from its check_parser.c / check_data.c and observed in a kernel):
no `protocol` means UDP for address services; default scheduler wlc, forwarding NAT, weight 1
(or the virtual server's `weight`); `persistence_timeout` without a value or implied by
`persistence_granularity` is 360s; DR/TUN real servers take the virtual port, and the port is
cleared for fwmark services; gue/gre tunnels get an explicit checksum mode (keepalived sends
`nocsum` unless told otherwise); a group expands into one service per address (ranges and
CIDR blocks inclusive of both ends); quorum is capped at the total weight and hysteresis at
quorum-1; a virtual server without real servers is ignored; duplicate real servers are dropped.
"""

from __future__ import annotations

import glob
import ipaddress
import os
import re
import shlex
from dataclasses import dataclass, field
from typing import Any

import yaml

from ipvsync.model import AF_INET, AF_INET6, PROTOCOLS, ServiceKey

__all__ = ["KeepalivedParseError", "Node", "convert_keepalived", "import_keepalived", "parse_keepalived",
           "render_keepalived"]

MAX_INCLUDE_DEPTH = 16
SCHEDULERS = ("rr", "wrr", "lc", "wlc", "lblc", "sh", "mh", "dh", "fo", "ovf", "lblcr", "sed", "nq", "twos")
INCLUDE_WORDS = ("include", "includer", "includem", "includew", "includeb", "includea", "includet")
SCHED1, SCHED2, SCHED3 = 1, 2, 4
CHECKERS = ("TCP_CHECK", "HTTP_GET", "SSL_GET", "DNS_CHECK", "MISC_CHECK", "FILE_CHECK", "UDP_CHECK",
            "SMTP_CHECK", "PING_CHECK", "BFD_CHECK")
# keepalived's per-checker default `retry` (check_*.c: default_retry)
DEFAULT_RETRY = {"TCP_CHECK": 1, "HTTP_GET": 1, "SSL_GET": 1, "DNS_CHECK": 3, "MISC_CHECK": 0, "UDP_CHECK": 1}
DEFAULT_DELAY_LOOP = 60.0
DEFAULT_CONNECT_TIMEOUT = 5.0
PERSISTENCE_DEFAULT = 360
TIMING_WORDS = ("delay_loop", "connect_timeout", "retry", "delay_before_retry", "warmup", "misc_timeout")
REGEX_OPTION_WORDS = ("regex_no_match", "regex_options", "regex_stack", "regex_min_offset",
                      "regex_max_offset")
DNS_TYPES = ("A", "AAAA", "SOA", "NS", "MX", "TXT", "CNAME", "PTR", "SRV")
_SHELL_SYNTAX = re.compile(r"[|&;<>()$`*?\[\]~]|\n")
_PARAM_DEF = re.compile(r"^\s*\$([A-Za-z_][A-Za-z0-9_]*)=(.*)$")
_PARAM_USE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)(?=\s|$)")
_ESCAPES = {"a": "\a", "b": "\b", "E": "\x1b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}

VRRP_WHY = ("VRRP is out of scope for ipvsync; keep keepalived for VRRP only (keepalived -P) and set "
            "vip_mode: external (optionally external_state_file written by a notify script)")
TOP_LEVEL_WHY = {
    "global_defs": "global daemon settings (router_id, notification e-mail, SNMP, scripts) have no ipvsync "
                   "equivalent",
    "static_ipaddress": "static addresses are not managed by ipvsync; configure them with the OS",
    "static_routes": "static routes are not managed by ipvsync; configure them with the OS",
    "static_rules": "static rules are not managed by ipvsync; configure them with the OS",
    "linkbeat_interfaces": "no ipvsync equivalent",
    "bfd_instance": "BFD is not supported by ipvsync",
    "SSL": "SSL_GET client certificate/CA settings have no ipvsync equivalent (https checks use tls_verify)",
    "net_namespace": "run ipvsync inside the namespace instead",
}


class KeepalivedParseError(Exception):
    """A keepalived.conf syntax error, with the FILE:LINE where it was found."""

    def __init__(self, file: str, line: int, message: str):
        super().__init__(f"{file}:{line}: {message}")
        self.file = file
        self.line = line
        self.message = message


@dataclass
class Node:
    """One keepalived statement: `name args...`, optionally with a `{ }` block of child statements."""

    name: str
    args: list[str]
    raw_args: list[str]
    file: str
    line: int
    block: list[Node] | None = None

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass
class _Tok:
    kind: str  # "w" word, "{", "}", "nl"
    text: str
    raw: str
    file: str
    line: int


# ---------------------------------------------------------------------------------------------- parser


def _brace_expand(pattern: str) -> list[str]:
    """csh-style `{a,b}` expansion (keepalived's glob uses GLOB_BRACE)."""
    depth, start = 0, -1
    for i, c in enumerate(pattern):
        if c == "{":
            if depth == 0:
                start = i
            depth += 1
        elif c == "}" and depth:
            depth -= 1
            if depth == 0:
                inner, parts, d, last = pattern[start + 1:i], [], 0, 0
                for j, ch in enumerate(inner):
                    d += ch == "{"
                    d -= ch == "}"
                    if ch == "," and d == 0:
                        parts.append(inner[last:j])
                        last = j + 1
                parts.append(inner[last:])
                if len(parts) == 1:
                    continue
                out: list[str] = []
                for p in parts:
                    out.extend(_brace_expand(pattern[:start] + p + pattern[i + 1:]))
                return out
    return [pattern]


class _Reader:
    """Turns files into tokens: comments, quoting, includes, parameters and conditional lines."""

    def __init__(self, config_id: str | None, notes: list[str]):
        self.config_id = config_id
        self.notes = notes
        self.params: dict[str, str] = {}
        self.stack: list[str] = []

    def read(self, path: str, out: list[_Tok], where: tuple[str, int] | None = None) -> None:
        real = os.path.realpath(path)
        if real in self.stack:
            raise KeepalivedParseError(where[0] if where else path, where[1] if where else 0,
                                       f"include loop: {path} includes itself")
        if len(self.stack) >= MAX_INCLUDE_DEPTH:
            raise KeepalivedParseError(where[0] if where else path, where[1] if where else 0,
                                       f"includes nested deeper than {MAX_INCLUDE_DEPTH}")
        try:
            with open(path, encoding="utf-8", errors="surrogateescape") as fh:
                lines = fh.read().split("\n")
        except OSError as exc:
            if where is None:
                raise
            raise KeepalivedParseError(where[0], where[1], f"cannot read {path}: {exc.strerror}") from None
        self.stack.append(real)
        try:
            self._lines(path, lines, out)
        finally:
            self.stack.pop()

    def _lines(self, path: str, lines: list[str], out: list[_Tok]) -> None:
        skip_depth = 0
        i = 0
        while i < len(lines):
            lineno, text = i + 1, lines[i]
            i += 1
            stripped = text.strip()
            if skip_depth:
                toks = self._split(text, path, lineno)
                skip_depth += sum(t.kind == "{" for t in toks) - sum(t.kind == "}" for t in toks)
                skip_depth = max(skip_depth, 0)
                continue
            if not stripped or stripped[0] in "#!":
                continue
            m = _PARAM_DEF.match(text)
            if m:
                value = m.group(2)
                if value.rstrip().endswith("\\"):
                    first = lineno
                    while i < len(lines) and lines[i - 1].rstrip().endswith("\\"):
                        i += 1
                    self.notes.append(f"{path}:{first}: ${m.group(1)}= — multi-line parameter definitions "
                                      "are not supported; expand them before importing (definition ignored)")
                    continue
                self.params[m.group(1)] = value.strip()
                continue
            if stripped.startswith("~SEQ") or stripped.startswith("~LST"):
                self.notes.append(f"{path}:{lineno}: {stripped.split('(')[0]} — sequence/list blocks are not "
                                  "supported; expand them before importing (line ignored)")
                continue
            text = self._substitute(text, path, lineno)
            stripped = text.strip()
            if stripped.startswith("@"):
                word, _, rest = stripped.partition(" ")
                negate = word.startswith("@^")
                cond = word[2:] if negate else word[1:]
                if self.config_id is None:
                    toks = self._split(rest, path, lineno)
                    skip_depth = max(sum(t.kind == "{" for t in toks) - sum(t.kind == "}" for t in toks), 0)
                    first = toks[0].text if toks else ""
                    what = "line and its block" if skip_depth else "line"
                    self.notes.append(f"{path}:{lineno}: {word} {first} — conditional configuration {what} "
                                      "skipped (no config id given; pass config_id to evaluate it)")
                    continue
                if (cond == self.config_id) == negate:
                    toks = self._split(rest, path, lineno)
                    skip_depth = max(sum(t.kind == "{" for t in toks) - sum(t.kind == "}" for t in toks), 0)
                    continue
                text = rest
            first_word = text.split(None, 1)[0] if text.strip() else ""
            if first_word in INCLUDE_WORDS:  # keepalived reads include lines raw: braces are glob syntax
                names = re.split(r"[#!]", text, maxsplit=1)[0].split()[1:]
                self._include(path, lineno, first_word, names, out)
                continue
            toks = self._split(text, path, lineno)
            out.extend(toks)
            out.append(_Tok("nl", "", "", path, lineno))

    def _substitute(self, text: str, path: str, lineno: int) -> str:
        if not self.params or "$" not in text:
            return text
        for _ in range(32):
            new = _PARAM_USE.sub(lambda m: self.params.get(m.group(1) or m.group(2), m.group(0)), text)
            if new == text:
                return new
            text = new
        raise KeepalivedParseError(path, lineno, "parameter substitution does not terminate (recursive "
                                                 "definition)")

    def _include(self, path: str, lineno: int, word: str, names: list[str], out: list[_Tok]) -> None:
        base = os.path.dirname(os.path.abspath(path))
        if not names:
            raise KeepalivedParseError(path, lineno, f"'{word}' needs a file name")
        for name in names:
            name = name.strip("\"'")
            pattern = name if os.path.isabs(name) else os.path.join(base, name)
            matches = sorted({m for p in _brace_expand(pattern) for m in glob.glob(p)})
            files = [m for m in matches if os.path.isfile(m)]
            if not files:
                self.notes.append(f"{path}:{lineno}: {word} — no file matches {name!r} "
                                  "(keepalived ignores it too)")
            for f in files:
                self.read(f, out, (path, lineno))

    @staticmethod
    def _split(text: str, path: str, lineno: int) -> list[_Tok]:
        toks: list[_Tok] = []
        i, n = 0, len(text)
        while i < n:
            c = text[i]
            if c.isspace():
                i += 1
                continue
            if c in "#!":
                break
            if c in "{}":
                toks.append(_Tok(c, c, c, path, lineno))
                i += 1
                continue
            start, buf = i, []
            while i < n and not text[i].isspace() and text[i] not in "{}#!":
                c = text[i]
                if c in "\"'":
                    i += 1
                    while i < n and text[i] != c:
                        if text[i] == "\\" and i + 1 < n:
                            i, ch = _unescape(text, i + 1)
                            buf.append(ch)
                            continue
                        buf.append(text[i])
                        i += 1
                    if i >= n:
                        raise KeepalivedParseError(path, lineno, f"unterminated {c}quoted string{c}")
                    i += 1
                    continue
                buf.append(c)
                i += 1
            toks.append(_Tok("w", "".join(buf), text[start:i], path, lineno))
        return toks


def _unescape(text: str, i: int) -> tuple[int, str]:
    """Decode the escape after a backslash at text[i]; return (next index, character)."""
    c = text[i]
    if c in _ESCAPES:
        return i + 1, _ESCAPES[c]
    if c == "x":
        m = re.match(r"[0-9a-fA-F]+", text[i + 1:])
        if m:
            return i + 1 + len(m.group(0)), chr(int(m.group(0), 16) & 0xFF)
    if c in "01234567":
        m = re.match(r"[0-7]{1,3}", text[i:])
        assert m is not None
        return i + len(m.group(0)), chr(int(m.group(0), 8) & 0xFF)
    if c == "c" and i + 1 < len(text):
        return i + 2, chr(ord(text[i + 1].upper()) ^ 0x40)
    return i + 1, c


def _build_tree(tokens: list[_Tok], top_file: str) -> list[Node]:
    root: list[Node] = []
    stack: list[tuple[list[Node], Node | None]] = [(root, None)]
    pending: list[_Tok] = []

    def flush() -> Node | None:
        if not pending:
            return None
        first = pending[0]
        rest = pending[1:]
        node = Node(first.text, [t.text for t in rest], [t.raw for t in rest], first.file, first.line)
        stack[-1][0].append(node)
        pending.clear()
        return node

    for tok in tokens:
        if tok.kind == "w":
            pending.append(tok)
        elif tok.kind == "nl":
            flush()
        elif tok.kind == "{":
            node = flush()
            if node is None:
                siblings = stack[-1][0]
                if not siblings or siblings[-1].block is not None:
                    raise KeepalivedParseError(tok.file, tok.line, "'{' without a keyword before it")
                node = siblings[-1]
            node.block = []
            stack.append((node.block, node))
        else:
            flush()
            if len(stack) == 1:
                raise KeepalivedParseError(tok.file, tok.line, "unexpected '}' (no block is open)")
            stack.pop()
    flush()
    if len(stack) > 1:
        opener = stack[-1][1]
        assert opener is not None
        raise KeepalivedParseError(opener.file, opener.line,
                                   f"'{opener.name}' block opened here is never closed (missing '}}')")
    return root


def parse_keepalived(path: str, config_id: str | None = None,
                     notes: list[str] | None = None) -> list[Node]:
    """Parse keepalived.conf (and its includes) into a tree. Raises KeepalivedParseError or OSError."""
    notes = notes if notes is not None else []
    tokens: list[_Tok] = []
    _Reader(config_id, notes).read(path, tokens)
    return _build_tree(tokens, path)


def render_keepalived(nodes: list[Node], drop: tuple[str, ...] = (), indent: int = 0) -> str:
    """Write a tree back as keepalived.conf text (includes inlined), leaving out blocks named in `drop`."""
    out: list[str] = []
    for n in nodes:
        if n.name in drop:
            continue
        words = " ".join([n.name, *n.raw_args])
        if n.block is None:
            out.append(" " * indent + words)
        else:
            out.append(" " * indent + words + " {")
            out.append(render_keepalived(n.block, drop, indent + 4).rstrip("\n"))
            out.append(" " * indent + "}")
    return "\n".join(line for line in out if line) + "\n"


# ---------------------------------------------------------------------------------------------- converter


def _secs(text: str) -> float | None:
    try:
        v = float(text)
    except ValueError:
        return None
    return v if v >= 0 else None


def _dur(secs: float) -> str:
    return f"{int(secs)}s" if secs == int(secs) else f"{round(secs * 1000)}ms"


def _bool(node: Node) -> bool | None:
    if not node.args:
        return True
    word = node.args[0].lower()
    return True if word in ("on", "true", "yes") else False if word in ("off", "false", "no") else None


def _int(text: str, lo: int = 0, hi: int = 2**32 - 1) -> int | None:
    if not re.fullmatch(r"[0-9]+", text or ""):
        return None
    v = int(text)
    return v if lo <= v <= hi else None


def _addr(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.split("%")[0])
    except ValueError:
        return None


@dataclass
class _Forward:
    method: str = ""  # nat | dr | tun | "" (unset)
    tun_type: str = "ipip"
    tun_port: int = 0
    csum: str = "none"


@dataclass
class _Check:
    """The keepalived settings that feed one real server's health block."""

    node: Node
    kind: str
    opts: dict[str, Any] = field(default_factory=dict)


@dataclass
class _RS:
    node: Node
    addr: ipaddress.IPv4Address | ipaddress.IPv6Address
    port: int
    weight: int | None = None
    fwd: _Forward | None = None
    upper: int = 0
    lower: int = 0
    inhibit: bool | None = None
    alpha: bool | None = None
    timing: dict[str, float] = field(default_factory=dict)
    virtualhost: str | None = None
    checks: list[_Check] = field(default_factory=list)


@dataclass
class _VS:
    node: Node
    kind: str  # "addr" | "fwmark" | "group"
    addr: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    port: int = 0
    fwmark: int = 0
    group: str = ""
    sched: str = ""
    flags: int = 0
    fwd: _Forward = field(default_factory=_Forward)
    persistence: int = 0
    granularity: str | None = None
    engine: str = ""
    protocol: str = ""
    ops: bool = False
    alpha: bool = False
    inhibit: bool = False
    quorum: int = 1
    quorum_given: Node | None = None
    hysteresis: int = 0
    weight: int = 1
    family: int = 0
    sorry: tuple[Node, ipaddress.IPv4Address | ipaddress.IPv6Address, int] | None = None
    sorry_fwd: _Forward | None = None
    timing: dict[str, float] = field(default_factory=dict)
    virtualhost: str | None = None
    rs: list[_RS] = field(default_factory=list)
    kw: dict[str, Node] = field(default_factory=dict)  # keyword -> its last statement, for notes

    def at(self, keyword: str) -> Node:
        return self.kw.get(keyword, self.node)


class _Converter:
    def __init__(self, notes: list[str]):
        self.notes = notes
        self.track_files: dict[str, dict[str, Any]] = {}
        self.groups: dict[str, list[tuple[Node, str, Any]]] = {}
        self.services: dict[str, dict[str, Any]] = {}
        self.keys: dict[ServiceKey, str] = {}
        self.has_vrrp = False

    def note(self, node: Node, why: str, keyword: str | None = None) -> None:
        self.notes.append(f"{node.where}: {keyword or node.name} — {why}")

    def note_block(self, node: Node, why: str) -> None:
        """Note a statement; if it has a block, note every keyword inside too (nothing silent)."""
        self.note(node, why)
        for child in node.block or []:
            self.note_block(child, f"inside {node.name}, not carried over")

    # -------------------------------------------------------------- top level

    def run(self, tree: list[Node]) -> dict[str, Any]:
        for node in tree:
            if node.name == "track_file" and node.block is not None:
                self.track_file(node)
            elif node.name == "virtual_server_group" and node.block is not None:
                self.group(node)
        for node in tree:
            if node.name in ("track_file", "virtual_server_group") and node.block is not None:
                continue
            if node.name == "virtual_server" and node.block is not None:
                vs = self.virtual_server(node)
                if vs is not None:
                    self.emit(vs)
            elif node.name.startswith("vrrp_") or node.name in ("garp_group", "track_group"):
                self.has_vrrp = self.has_vrrp or node.name in ("vrrp_instance", "vrrp_sync_group")
                self.note_block(node, VRRP_WHY)
            elif node.name in TOP_LEVEL_WHY:
                self.note_block(node, TOP_LEVEL_WHY[node.name])
            else:
                self.note_block(node, "unknown or unsupported top-level keyword")
        doc: dict[str, Any] = {"version": 1, "vip_mode": "external", "services": self.services}
        return doc

    def track_file(self, node: Node) -> None:
        name = node.args[0] if node.args else ""
        tf: dict[str, Any] = {"node": node, "file": None, "weight": 1, "reverse": False}
        for c in node.block or []:
            if c.name == "file" and c.args:
                tf["file"] = c.args[0]
            elif c.name == "weight" and c.args:
                tf["weight"] = int(c.args[0]) if re.fullmatch(r"-?[0-9]+", c.args[0]) else 1
                tf["reverse"] = "reverse" in c.args[1:]
                self.note(c, "approximated: keepalived multiplies the number in the file by this weight; "
                             "ipvsync's file check only switches the server up or down")
            else:
                self.note(c, "track_file option not carried over")
        self.track_files[name] = tf

    def group(self, node: Node) -> None:
        name = node.args[0] if node.args else ""
        members: list[tuple[Node, str, Any]] = []
        for c in node.block or []:
            words = [c.name, *c.args]
            if c.name == "fwmark":
                mark = _int(c.args[0], 1) if c.args else None
                if mark is None:
                    self.note(c, "invalid fwmark in virtual_server_group; ignored (as keepalived does)")
                    continue
                fam = {"inet": AF_INET, "inet6": AF_INET6}.get(c.args[1], 0) if len(c.args) > 1 else 0
                members.append((c, "fwmark", (mark, fam)))
                continue
            addrs = self.expand_range(c, words[0])
            if addrs is None:
                continue
            port = 0
            if len(words) > 1:
                p = _int(words[1], 0, 65535)
                if p is None:
                    self.note(c, f"invalid port {words[1]!r}; member ignored")
                    continue
                port = p
            for a in addrs:
                members.append((c, "addr", (a, port)))
        if not members:
            self.note(node, "virtual server group has no usable entries; keepalived removes it")
        self.groups[name] = members

    def expand_range(self, node: Node, text: str) -> list[Any] | None:
        """'10.0.0.1', '10.0.0.3-10', '10.0.0.250-10.0.1.5', '10.0.0.8/29', v6 equivalents -> addresses."""
        try:
            if "/" in text:
                net = ipaddress.ip_network(text, strict=False)
                if net.num_addresses > 65536:
                    raise ValueError("range too large")
                return list(net)
            if "-" in text:
                lo_text, hi_text = text.split("-", 1)
                lo = ipaddress.ip_address(lo_text)
                if _addr(hi_text) is not None:
                    hi = ipaddress.ip_address(hi_text)
                elif lo.version == 4:
                    hi = ipaddress.ip_address(lo_text.rsplit(".", 1)[0] + "." + hi_text)
                else:
                    hi = ipaddress.ip_address(int(lo) & ~0xFFFF | int(hi_text, 16))
                if hi.version != lo.version or hi < lo or int(hi) - int(lo) > 65535:
                    raise ValueError("bad range")
                return [ipaddress.ip_address(int(lo) + k) for k in range(int(hi) - int(lo) + 1)]
            a = _addr(text)
            if a is None:
                raise ValueError("bad address")
            return [a]
        except ValueError:
            self.note(node, f"{text!r} is not an address, range or prefix; entry ignored", node.name)
            return None

    # -------------------------------------------------------------- virtual_server

    def forward(self, node: Node) -> _Forward | None:
        method = {"NAT": "nat", "DR": "dr", "TUN": "tun"}.get(node.args[0] if node.args else "")
        if method is None:
            self.note(node, f"unknown forwarding method {' '.join(node.args)!r}; ignored (as keepalived)")
            return None
        fwd = _Forward(method)
        csum_given = False
        words = node.args[1:]
        i = 0
        while i < len(words):
            w = words[i]
            if w == "type" and i + 1 < len(words) and words[i + 1] in ("ipip", "gue", "gre"):
                fwd.tun_type = words[i + 1]
                i += 2
            elif w == "port" and i + 1 < len(words) and _int(words[i + 1], 1, 65535):
                fwd.tun_port = int(words[i + 1])
                i += 2
            elif w in ("nocsum", "csum", "remcsum"):
                fwd.csum = {"nocsum": "none", "csum": "checksum", "remcsum": "remote"}[w]
                csum_given = True
                i += 1
            else:
                self.note(node, f"invalid tunnel option {w!r}; keepalived rejects the tunnel settings")
                return _Forward(method)
        if (fwd.tun_type == "gue") != bool(fwd.tun_port) or (fwd.tun_type == "ipip" and csum_given
                                                              and fwd.csum != "none") \
                or (fwd.tun_type == "gre" and fwd.csum == "remote"):
            self.note(node, "inconsistent tunnel options (gue needs a port, ipip takes no checksum, gre no "
                            "remcsum); keepalived keeps the previous tunnel settings")
            return _Forward(method)
        return fwd

    def timing(self, node: Node, target: dict[str, float]) -> bool:
        """Timing keywords (delay_loop, connect_timeout, retry, delay_before_retry, ...); True if handled."""
        name = "retry" if node.name == "nb_get_retry" else node.name
        if name not in TIMING_WORDS:
            return False
        arg = node.args[0] if node.args else ""
        v = _int(arg) if name == "retry" else _secs(arg)
        if v is None:
            self.note(node, "invalid value; ignored (keepalived ignores it too)")
            return True
        target[name] = float(v)
        if name == "delay_before_retry":
            self.note(node, "approximated: ipvsync re-probes a failing server at the normal interval; "
                            "keepalived retries after delay_before_retry (fall = retry + 1 is kept)")
        elif name == "warmup":
            self.note(node, "no ipvsync equivalent (random delay before the first check); not carried over")
        return True

    def virtual_server(self, node: Node) -> _VS | None:
        a = node.args
        if a and a[0] == "fwmark":
            mark = _int(a[1], 1) if len(a) > 1 else None
            if mark is None:
                self.note_block(node, "invalid fwmark; keepalived ignores this virtual server")
                return None
            vs = _VS(node, "fwmark", fwmark=mark)
        elif a and a[0] == "group":
            if len(a) < 2 or a[1] not in self.groups:
                self.note_block(node, f"unknown virtual_server_group {a[1] if len(a) > 1 else ''!r}; ignored")
                return None
            vs = _VS(node, "group", group=a[1])
        else:
            addr = _addr(a[0]) if a else None
            port = _int(a[1], 0, 65535) if len(a) > 1 else 0
            if addr is None or port is None:
                self.note_block(node, f"invalid virtual server address {' '.join(a)!r}; ignored")
                return None
            vs = _VS(node, "addr", addr=addr, port=port, family=AF_INET6 if addr.version == 6 else AF_INET)
        for c in node.block or []:
            self.vs_keyword(vs, c)
        return vs

    def vs_keyword(self, vs: _VS, c: Node) -> None:
        n, a = c.name, c.args
        arg = a[0] if a else ""
        vs.kw[n] = c
        if n in ("sh-port", "sh-fallback", "mh-port", "mh-fallback", "flag-1", "flag-2"):
            vs.kw["flags"] = c
        if self.timing(c, vs.timing):
            return
        if n in ("lb_algo", "lvs_sched"):
            if arg in SCHEDULERS:
                vs.sched = arg
            else:
                self.note(c, f"invalid scheduler {arg!r}; ignored (keepalived ignores it too)")
        elif n in ("sh-port", "sh-fallback", "mh-port", "mh-fallback"):
            # keepalived only honours these if the matching scheduler was set *before* the flag
            if vs.sched == n[:2]:
                vs.flags |= SCHED2 if n.endswith("port") else SCHED1
            elif vs.sched in ("sh", "mh"):
                self.note(c, f"ignored by keepalived: {n} does not apply to the {vs.sched} scheduler")
            else:
                self.note(c, f"ignored by keepalived: {n} only counts after 'lvs_sched {n[:2]}'")
        elif n in ("flag-1", "flag-2", "flag-3"):
            vs.flags |= {"flag-1": SCHED1, "flag-2": SCHED2, "flag-3": SCHED3}[n]
        elif n == "hashed":
            self.note(c, "no equivalent: HASHED is a kernel-internal flag (keepalived 2.x ignores it too)")
        elif n == "ops":
            vs.ops = True
        elif n in ("lb_kind", "lvs_method"):
            fwd = self.forward(c)
            if fwd is not None:
                vs.fwd = fwd
        elif n == "persistence_timeout":
            if not a:
                vs.persistence = PERSISTENCE_DEFAULT
            elif (t := _int(arg, 1)) is not None:
                vs.persistence = t
            else:
                self.note(c, "invalid persistence_timeout; ignored")
        elif n == "persistence_granularity":
            vs.granularity = arg
            vs.persistence = vs.persistence or PERSISTENCE_DEFAULT
        elif n == "persistence_engine":
            if arg == "sip":
                vs.engine = arg
            else:
                self.note(c, f"persistence engine {arg!r} not supported by ipvsync (only sip)")
        elif n == "protocol":
            if arg.upper() in ("TCP", "UDP", "SCTP"):
                vs.protocol = arg.lower()
            else:
                self.note(c, f"unknown protocol {arg!r}; ignored")
        elif n == "ha_suspend":
            self.note(c, "no exact equivalent: with vip_mode: external, set external_state_file (a notify "
                         "script writing MASTER/BACKUP) to pause health-check side effects while not master")
        elif n == "alpha":
            vs.alpha = True
        elif n == "inhibit_on_failure":
            vs.inhibit = True
        elif n == "quorum":
            q = _int(arg, 1)
            vs.quorum = q if q is not None else 1
            vs.quorum_given = c
        elif n == "hysteresis":
            h = _int(arg)
            if h is None:
                self.note(c, "invalid hysteresis; ignored")
            else:
                vs.hysteresis = h
        elif n == "weight":
            w = _int(arg, 1, 65535)
            if w is None:
                self.note(c, "invalid virtual server weight; ignored")
            else:
                vs.weight = w
        elif n == "ip_family":
            if arg in ("inet", "inet6"):
                vs.family = AF_INET if arg == "inet" else AF_INET6
            else:
                self.note(c, f"unknown address family {arg!r}; ignored")
        elif n == "sorry_server":
            addr = _addr(arg)
            port = _int(a[1], 0, 65535) if len(a) > 1 else 0
            if addr is None or port is None:
                self.note(c, "invalid sorry server; ignored")
            else:
                vs.sorry = (c, addr, port)
        elif n == "sorry_server_lvs_method":
            if vs.sorry is None:
                self.note(c, "used without sorry_server; ignored (keepalived ignores it too)")
            else:
                vs.sorry_fwd = self.forward(c)
        elif n == "sorry_server_inhibit":
            self.note(c, "no equivalent: ipvsync removes the sorry server when quorum returns")
        elif n == "virtualhost":
            vs.virtualhost = arg
        elif n == "real_server":
            rs = self.real_server(vs, c)
            if rs is not None:
                vs.rs.append(rs)
        elif n in ("quorum_up", "quorum_down"):
            self.note(c, "scripts on quorum change are not supported by ipvsync")
        elif n == "omega":
            self.note(c, "no equivalent (runs down-notifiers at shutdown)")
        elif n in ("smtp_alert", "snmp_name"):
            self.note(c, "e-mail alerts / SNMP names are not supported by ipvsync")
        else:
            self.note_block(c, "unknown virtual_server keyword; not carried over")

    # -------------------------------------------------------------- real_server

    def real_server(self, vs: _VS, node: Node) -> _RS | None:
        addr = _addr(node.args[0]) if node.args else None
        port = _int(node.args[1], 0, 65535) if len(node.args) > 1 else 0
        if addr is None or port is None:
            self.note_block(node, f"invalid real server {' '.join(node.args)!r}; ignored")
            return None
        rs = _RS(node, addr, port)
        for c in node.block or []:
            n, arg = c.name, c.args[0] if c.args else ""
            if self.timing(c, rs.timing):
                continue
            if n == "weight":
                w = _int(arg, 0, 65535)
                if w is None:
                    self.note(c, "weight out of range 0-65535; ignored (keepalived ignores it too)")
                else:
                    rs.weight = w
            elif n == "lvs_method":
                rs.fwd = self.forward(c) or rs.fwd
            elif n in ("uthreshold", "lthreshold"):
                t = _int(arg)
                if t is None:
                    self.note(c, "invalid threshold; ignored")
                elif n == "uthreshold":
                    rs.upper = t
                else:
                    rs.lower = t
            elif n == "inhibit_on_failure":
                rs.inhibit = _bool(c)
            elif n == "alpha":
                rs.alpha = _bool(c)
            elif n == "virtualhost":
                rs.virtualhost = arg
            elif n in ("notify_up", "notify_down"):
                self.note(c, "notify scripts are not supported by ipvsync")
            elif n in ("smtp_alert", "snmp_name"):
                self.note(c, "e-mail alerts / SNMP names are not supported by ipvsync")
            elif n in CHECKERS:
                rs.checks.append(_Check(c, n))
            else:
                self.note_block(c, "unknown real_server keyword; not carried over")
        return rs

    # -------------------------------------------------------------- health

    def health(self, vs: _VS, rs: _RS) -> dict[str, Any] | None:
        """The ipvsync health block of a real server (keepalived semantics), or None for no check."""
        blocks: list[dict[str, Any]] = []
        for chk in rs.checks:
            h = self.checker(vs, rs, chk)
            if h is not None:
                blocks.append(h)
        if len(blocks) > 1:
            for chk in rs.checks[1:]:
                self.note(chk.node, f"ipvsync runs one check per real server; keepalived requires all "
                                    f"{len(rs.checks)} checkers to pass — only the first usable one is kept")
        return blocks[0] if blocks else None

    def checker(self, vs: _VS, rs: _RS, chk: _Check) -> dict[str, Any] | None:
        node = chk.node
        kind = node.name
        timing = {**vs.timing, **rs.timing}
        opts: dict[str, Any] = {}
        urls: list[Node] = []
        alpha = rs.alpha if rs.alpha is not None else vs.alpha
        host = rs.virtualhost or vs.virtualhost
        extra: dict[str, Any] = {}
        if kind in ("SMTP_CHECK", "PING_CHECK", "BFD_CHECK"):
            self.note_block(node, f"no ipvsync equivalent for {kind}; the real server is left without this "
                                  "check")
            return None
        for c in node.block or []:
            n, arg = c.name, c.args[0] if c.args else ""
            if kind not in ("MISC_CHECK", "FILE_CHECK") and n == "connect_ip" and _addr(arg):
                opts["connect_ip"] = str(_addr(arg))
            elif kind not in ("MISC_CHECK", "FILE_CHECK") and n == "connect_port" and _int(arg, 1, 65535):
                opts["connect_port"] = int(arg)
            elif kind not in ("MISC_CHECK", "FILE_CHECK") and n == "bindto" and _addr(arg):
                opts["source_address"] = str(_addr(arg))
            elif kind not in ("MISC_CHECK", "FILE_CHECK") and n == "fwmark" and _int(arg) is not None:
                opts["fwmark"] = int(arg)
            elif n == "alpha":
                alpha = bool(_bool(c))
            elif kind != "FILE_CHECK" and self.timing(c, timing):
                pass
            elif n in ("bind_if", "bind_port", "log_all_failures"):
                self.note(c, "no ipvsync equivalent; not carried over")
            elif kind in ("HTTP_GET", "SSL_GET") and n == "url" and c.block is not None:
                urls.append(c)
            elif kind in ("HTTP_GET", "SSL_GET") and n == "virtualhost":
                host = arg
            elif kind in ("HTTP_GET", "SSL_GET") and n in ("http_protocol", "fast_recovery"):
                self.note(c, "no ipvsync equivalent; not carried over")
            elif kind == "SSL_GET" and n == "enable_sni":
                extra["enable_sni"] = True
            elif kind == "DNS_CHECK" and n == "type":
                if arg.upper() in DNS_TYPES:
                    extra["query_type"] = arg.upper()
                else:
                    self.note(c, f"DNS query type {arg!r} not supported by ipvsync; default SOA used")
            elif kind == "DNS_CHECK" and n == "name":
                extra["query_name"] = arg
            elif kind == "MISC_CHECK" and n == "misc_path":
                extra["command"] = self.command(c)
            elif kind == "MISC_CHECK" and n == "misc_dynamic":
                self.note(c, "approximated: exit codes 2-255 set the weight in keepalived; ipvsync treats "
                             "exit 0 as up and anything else as down")
            elif kind == "MISC_CHECK" and n == "user":
                extra["user"] = arg
                if len(c.args) > 1:
                    self.note(c, "the group is not carried over (ipvsync runs the check as the user's group)",
                              "user GROUP")
            elif kind == "FILE_CHECK" and n == "track_file":
                extra["track_file"] = (c, arg)
            elif kind == "FILE_CHECK" and n in ("weight", "dynamic"):
                self.note(c, "approximated: keepalived scales the weight by the number in the file; "
                             "ipvsync's file check only switches the server up or down")
            elif kind == "UDP_CHECK" and n == "payload":
                data = bytes.fromhex(_hex_pairs(" ".join(c.args)))
                extra["payload"] = "".join(f"\\x{b:02x}" for b in data)
            elif kind == "UDP_CHECK" and n == "require_reply":
                extra["expect"] = _reply_regex(" ".join(c.args))
                self.note(c, "approximated: ipvsync matches the reply against a regular expression built "
                             "from the hex string")
            elif kind == "UDP_CHECK" and n in ("min_reply_length", "max_reply_length"):
                self.note(c, "no ipvsync equivalent; not carried over")
            else:
                self.note_block(c, f"unknown or unsupported {kind} keyword; not carried over")
        inhibit = rs.inhibit if rs.inhibit is not None else vs.inhibit
        h: dict[str, Any] = {"type": {"TCP_CHECK": "tcp", "HTTP_GET": "http", "SSL_GET": "https",
                                      "DNS_CHECK": "dns", "MISC_CHECK": "exec", "FILE_CHECK": "file",
                                      "UDP_CHECK": "udp"}[kind]}
        delay = timing.get("delay_loop", DEFAULT_DELAY_LOOP)
        if kind != "FILE_CHECK":
            h["interval"] = _dur(delay)
            if kind == "MISC_CHECK":
                h["timeout"] = _dur(timing.get("misc_timeout", delay))
            else:
                h["timeout"] = _dur(timing.get("connect_timeout", DEFAULT_CONNECT_TIMEOUT))
            h["rise"] = 1
            retry = int(timing.get("retry", DEFAULT_RETRY.get(kind, 1)))
            h["fall"] = min(retry + 1, 1000)
        h["initial"] = "down" if alpha else "up"
        h["on_failure"] = "inhibit" if inhibit else "remove"
        h.update(opts)
        if kind in ("HTTP_GET", "SSL_GET"):
            if not urls:
                self.note(node, "no url block: keepalived never marks this server up; imported as a check "
                                "of /")
            for i, u in enumerate(urls):
                if i == 0:
                    host = self.url(u, h) or host
                else:
                    self.note_block(u, "ipvsync checks one URL; keepalived requires every url to pass — "
                                       "only the first is kept")
            if host:
                h["host"] = host
            if kind == "SSL_GET":
                h["tls_verify"] = False
                if extra.get("enable_sni") and host:
                    h["sni"] = host
        elif kind == "DNS_CHECK":
            h["query_type"] = extra.get("query_type", "SOA")
            h["query_name"] = extra.get("query_name", ".")
        elif kind == "MISC_CHECK":
            if "command" not in extra:
                self.note(node, "MISC_CHECK without misc_path; check dropped")
                return None
            h["command"] = extra["command"]
            if "user" in extra:
                h["user"] = extra["user"]
        elif kind == "FILE_CHECK":
            tf_node, tf_name = extra.get("track_file", (node, ""))
            tf = self.track_files.get(tf_name)
            if tf is None or not tf["file"] or not str(tf["file"]).startswith("/"):
                self.note(tf_node, f"track_file {tf_name!r} is not defined (or its file is not an absolute "
                                   "path); check dropped", "track_file")
                return None
            h["path"] = tf["file"]
            self.note(node, "approximated: keepalived reads a number from the file (weight × value, 0 = "
                            "down, negative/reverse semantics); ipvsync's file check only switches up/down")
        elif kind == "UDP_CHECK":
            for k in ("payload", "expect"):
                if k in extra:
                    h[k] = extra[k]
        return h

    def url(self, u: Node, h: dict[str, Any]) -> str | None:
        host = None
        status: list[Any] = []
        for c in u.block or []:
            n, arg = c.name, c.args[0] if c.args else ""
            if n == "path":
                h["path"] = arg if arg.startswith("/") else "/" + arg
            elif n == "status_code":
                for s in c.args:
                    m = re.fullmatch(r"([0-9]{3})(?:-([0-9]{3}))?", s)
                    if not m or not all(100 <= int(x) <= 599 for x in m.groups() if x):
                        self.note(c, f"status code {s!r} outside 100-599; not carried over")
                    elif m.group(2):
                        status.append(s)
                    else:
                        status.append(int(s))
            elif n == "digest":
                self.note(c, "body digests (genhash MD5) are not supported by ipvsync; use regex/body_regex "
                             "or the status code instead")
            elif n == "regex":
                try:
                    re.compile(arg)
                    h["body_regex"] = arg
                except re.error:
                    self.note(c, "PCRE pattern is not a valid Python regular expression; not carried over")
            elif n == "virtualhost":
                host = arg
            elif n in REGEX_OPTION_WORDS:
                self.note(c, "no ipvsync equivalent; not carried over")
            else:
                self.note_block(c, "unknown url keyword; not carried over")
        h["status"] = status or ["200-299"]
        return host

    def command(self, c: Node) -> list[str]:
        text = c.args[0] if len(c.raw_args) == 1 and c.raw_args[0][:1] in "\"'" else " ".join(c.raw_args)
        try:
            argv = shlex.split(text)
        except ValueError:
            argv = []
        if not argv or _SHELL_SYNTAX.search(text.replace("'", "").replace('"', "")):
            self.note(c, "the command uses shell syntax; imported as /bin/sh -c (ipvsync runs commands "
                         "without a shell)")
            return ["/bin/sh", "-c", text]
        return argv

    # -------------------------------------------------------------- emission

    def emit(self, vs: _VS) -> None:
        node = vs.node
        if not vs.rs:
            self.note(node, "virtual server has no real servers; keepalived ignores it", "virtual_server")
            return
        members: list[tuple[str, Any, Node]] = []
        if vs.kind == "group":
            for mnode, kind, val in self.groups[vs.group]:
                members.append((kind, val, mnode))
        elif vs.kind == "fwmark":
            members.append(("fwmark", (vs.fwmark, vs.family), node))
        else:
            members.append(("addr", (vs.addr, vs.port), node))
        protocol = vs.protocol
        if any(k == "addr" for k, _, _ in members) and not protocol:
            self.note(node, "no protocol: keepalived 2.x defaults to UDP; imported as protocol: udp",
                      "virtual_server")
            protocol = "udp"
        if vs.protocol and all(k == "fwmark" for k, _, _ in members):
            protocol = ""
        # real server family / duplicates / weights (check_data.c validate_check_config)
        fwd_default = vs.fwd.method or "nat"
        rs_list: list[_RS] = []
        seen: set[tuple[str, int]] = set()
        for rs in vs.rs:
            fam = AF_INET6 if rs.addr.version == 6 else AF_INET
            rs_fwd = (rs.fwd.method if rs.fwd else "") or fwd_default
            if rs_fwd != "tun":
                if not vs.family:
                    vs.family = fam
                elif vs.family != fam:
                    self.note(rs.node, "address family differs from the virtual server's; keepalived skips "
                                       "this real server", "real_server")
                    continue
            k = (str(rs.addr), rs.port)
            if k in seen:
                self.note(rs.node, "duplicate real server; keepalived removes the second", "real_server")
                continue
            seen.add(k)
            rs_list.append(rs)
        if not rs_list:
            self.note(node, "no usable real servers; keepalived ignores it", "virtual_server")
            return
        weight_sum = sum(rs.weight if rs.weight is not None else vs.weight for rs in rs_list)
        healths = [self.health(vs, rs) for rs in rs_list]
        shared = healths[0] if healths[0] is not None and all(h == healths[0] for h in healths) else None
        for kind, val, mnode in members:
            if kind == "fwmark":
                mark, fam = val
                family = fam or vs.family or AF_INET
                key = ServiceKey(family=family, fwmark=mark)
                svc: dict[str, Any] = {"fwmark": mark}
                if family == AF_INET6:
                    svc["family"] = "inet6"
                port = 0
            else:
                addr, port = val
                family = AF_INET6 if addr.version == 6 else AF_INET
                if port == 0:
                    self.note(mnode, f"{addr} without a port: keepalived makes a persistent port-0 service; "
                                     "ipvsync services need a port (1-65535) — not carried over", mnode.name)
                    continue
                key = ServiceKey(family=family, protocol=PROTOCOLS[protocol], address=str(addr), port=port)
                svc = {"vip": str(addr), "port": port}
                if protocol != "tcp":
                    svc["protocol"] = protocol
            if vs.family and family != vs.family and any(
                    ((rs.fwd.method if rs.fwd else "") or fwd_default) != "tun" for rs in rs_list):
                self.note(mnode, "address family differs from the real servers'; not carried over",
                          mnode.name)
                continue
            name = key.default_name
            if key in self.keys:
                self.note(mnode, f"duplicate virtual service {key} (already imported as {self.keys[key]!r}); "
                                 "skipped", mnode.name)
                continue
            self.keys[key] = name
            self.fill_service(vs, svc, key, family, port, rs_list, healths, shared, weight_sum)
            if vs.kind == "group":
                svc = {"description": f"keepalived virtual_server group {vs.group} ({mnode.where})", **svc}
            self.services[name] = svc

    def fill_service(self, vs: _VS, svc: dict[str, Any], key: ServiceKey, family: int, port: int,
                     rs_list: list[_RS], healths: list[dict[str, Any] | None], shared: dict[str, Any] | None,
                     weight_sum: int) -> None:
        node = vs.node
        if vs.sched and vs.sched != "wlc":
            svc["scheduler"] = vs.sched
        flags: list[str] = []
        if vs.flags & (SCHED1 | SCHED2):
            if vs.sched in ("sh", "mh"):
                if vs.flags & SCHED1:
                    flags.append(f"{vs.sched}-fallback")
                if vs.flags & SCHED2:
                    flags.append(f"{vs.sched}-port")
            else:
                why = (f"scheduler flag bits set for the {vs.sched or 'wlc'} scheduler, which ignores them; "
                       "ipvsync only sets sh-*/mh-* flags — not carried over")
                self.note(vs.at("flags"), why, "flag-1/flag-2")
        if vs.flags & SCHED3:
            self.note(vs.at("flag-3"), "flag-3 has no ipvsync equivalent; not carried over", "flag-3")
        if flags:
            svc["scheduler_flags"] = flags
        fwd = vs.fwd.method or "nat"
        if fwd != "nat":
            svc["forward"] = fwd
        if fwd == "tun":
            svc["tunnel"] = _tunnel(vs.fwd)
        if vs.ops:
            if key.fwmark or key.protocol == PROTOCOLS["udp"]:
                svc["one_packet"] = True
            else:
                self.note(vs.at("ops"), "one packet scheduling requires UDP; keepalived resets it", "ops")
        if vs.persistence:
            pers: dict[str, Any] = {"timeout": f"{vs.persistence}s"}
            if vs.granularity is not None:
                nm = _netmask(vs.granularity, family)
                if nm is None:
                    self.note(vs.at("persistence_granularity"), f"persistence_granularity {vs.granularity!r} "
                                    "is not a valid netmask for "
                                    "this family; not carried over", "persistence_granularity")
                elif nm != (128 if family == AF_INET6 else 32):
                    pers["netmask"] = vs.granularity if family == AF_INET else f"/{nm}"
            if vs.engine:
                if key.protocol == PROTOCOLS["udp"]:
                    pers["engine"] = vs.engine
                else:
                    self.note(vs.at("persistence_engine"), "the sip persistence engine needs a UDP service; "
                                                           "not carried over",
                              "persistence_engine")
            svc["persistence"] = pers
        if vs.weight != 1:
            svc["weight"] = vs.weight
        if shared is not None:
            svc["health"] = shared
        # sorry server and quorum
        if vs.sorry is not None:
            snode, saddr, sport = vs.sorry
            sfwd = (vs.sorry_fwd.method if vs.sorry_fwd else "") or fwd
            if sfwd != fwd:
                self.note(snode, f"the sorry server's forwarding ({sfwd}) differs from the service's "
                                 f"({fwd}); ipvsync uses the service's", "sorry_server_lvs_method")
            sfam = AF_INET6 if saddr.version == 6 else AF_INET
            if sfam != family and sfwd != "tun":
                self.note(snode, "address family differs from the virtual server's; keepalived skips the "
                                 "sorry server")
            else:
                if sfwd == "nat":
                    if key.fwmark:
                        sp = sport
                    elif sport == 0:
                        self.note(snode, "no port on a NAT sorry server: keepalived programs port 0; "
                                         "imported with the virtual port", "sorry_server")
                        sp = port
                    else:
                        sp = sport
                else:
                    sp = 0 if key.fwmark else port
                svc["sorry_server"] = _hostport(saddr, sp if sp else None)
                quorum = min(vs.quorum, weight_sum)
                hyst = min(vs.hysteresis, max(quorum - 1, 0))
                if quorum < vs.quorum:
                    self.note(vs.quorum_given or node, f"quorum {vs.quorum} exceeds the total weight "
                                                       f"{weight_sum}; keepalived reduces it to {quorum}",
                              "quorum")
                # keepalived: lost below quorum-hysteresis, regained at quorum+hysteresis
                svc["quorum"] = max(quorum - hyst, 0)
                if hyst:
                    svc["quorum_hysteresis"] = 2 * hyst
        elif vs.quorum_given is not None:
            self.note(vs.quorum_given, "without a sorry_server keepalived's quorum only runs quorum_up/down "
                                       "scripts; not carried over", "quorum")
        # real servers
        out: list[Any] = []
        for rs, h in zip(rs_list, healths, strict=True):
            rfwd = rs.fwd or _Forward(fwd, vs.fwd.tun_type, vs.fwd.tun_port, vs.fwd.csum)
            method = rfwd.method or fwd
            if method == "nat":
                rport = rs.port if (rs.port or key.fwmark) else (0 if vs.kind == "group" else port)
                if rport == 0 and not key.fwmark:
                    self.note(rs.node, "no port on a NAT real server of a group: keepalived programs port 0; "
                                       "imported with the virtual port", "real_server")
                    rport = port
            else:
                if not key.fwmark and rs.port and rs.port != port:
                    self.note(rs.node, f"{method.upper()} cannot remap ports: keepalived resets port "
                                       f"{rs.port} to the virtual port {port}", "real_server")
                rport = 0 if key.fwmark else port
            item: dict[str, Any] = {"address": str(rs.addr)}
            if rport != port:
                item["port"] = rport
            if rs.weight is not None and rs.weight != vs.weight:
                item["weight"] = rs.weight
            if method != fwd:
                item["forward"] = method
            if method == "tun" and (fwd != "tun" or _tunnel(rfwd) != _tunnel(vs.fwd)):
                self.note(rs.node, "per-real-server tunnel settings differ from the service's; ipvsync takes "
                                   "the tunnel from the service", "lvs_method")
            if rs.upper:
                item["upper_threshold"] = rs.upper
            if rs.lower:
                item["lower_threshold"] = rs.lower
            if h is not None and shared is None:
                item["health"] = h
            if set(item) == {"address"}:
                out.append(str(rs.addr))
            elif set(item) == {"address", "port"}:
                out.append(_hostport(rs.addr, item["port"]))
            else:
                out.append(item)
        svc["real_servers"] = out


def _tunnel(fwd: _Forward) -> dict[str, Any]:
    t: dict[str, Any] = {"type": fwd.tun_type}
    if fwd.tun_type == "gue":
        t["port"] = fwd.tun_port
    if fwd.tun_type in ("gue", "gre"):
        t["checksum"] = fwd.csum  # keepalived always sends a checksum mode (nocsum by default)
    return t


def _hostport(addr: Any, port: int | None) -> str:
    if port is None:
        return str(addr)
    return f"[{addr}]:{port}" if addr.version == 6 else f"{addr}:{port}"


def _netmask(text: str, family: int) -> int | None:
    try:
        if family == AF_INET6:
            n = int(text.lstrip("/"))
            return n if 1 <= n <= 128 else None
        if text.startswith("/"):
            n = int(text[1:])
            return n if 1 <= n <= 32 else None
        return ipaddress.IPv4Network(f"0.0.0.0/{text}").prefixlen
    except ValueError:
        return None


def _hex_pairs(text: str) -> str:
    """keepalived's free-form HEX_STR ('Ab12f 3 456') -> an even-length hex string ('ab120f03...')."""
    out = []
    for chunk in text.split():
        if len(chunk) % 2:
            chunk = chunk[:-1] + "0" + chunk[-1]
        out.append(chunk)
    return "".join(out)


def _reply_regex(text: str) -> str:
    if not text.strip():
        return "(?s)^."
    pairs = _hex_pairs(text.replace("X", "x"))
    parts = []
    for i in range(0, len(pairs), 2):
        b = pairs[i:i + 2]
        parts.append("." if "x" in b.lower() else f"\\x{b.lower()}")
    return "(?s)^" + "".join(parts)


# ---------------------------------------------------------------------------------------------- API


def convert_keepalived(path: str, config_id: str | None = None) -> tuple[dict[str, Any], list[str]]:
    """Parse and convert; returns (ipvsync document as a dict, notes). Raises KeepalivedParseError."""
    notes: list[str] = []
    tree = parse_keepalived(path, config_id, notes)
    conv = _Converter(notes)
    doc = conv.run(tree)
    order = {f: i for i, f in enumerate(dict.fromkeys(n.split(":", 1)[0] for n in notes))}

    def key(n: str) -> tuple[int, int]:
        f, line, _ = n.split(":", 2)
        return order[f], int(line) if line.isdigit() else 0

    return doc, sorted(dict.fromkeys(notes), key=key)


def render_yaml(doc: dict[str, Any], notes: list[str], source: str) -> str:
    """The YAML text: a header naming the source and listing every note, then the document."""
    head = [
        f"# Imported from keepalived configuration {source} by `ipvsync import-keepalived`.",
        "# vip_mode: external — keepalived's checker never binds VIPs; they belong to VRRP or the OS.",
        "# Health checks follow keepalived: rise 1, fall = retry + 1, initial up unless `alpha`,",
        "# on_failure remove unless `inhibit_on_failure`. Quorum with hysteresis H is written as",
        "# quorum - H and quorum_hysteresis 2H (keepalived: lost below quorum-H, regained at quorum+H).",
    ]
    if notes:
        head.append("#")
        head.append(f"# Not carried over or approximated ({len(notes)}):")
        head.extend(f"#   {n}" for n in notes)
    body = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=110, default_flow_style=False)
    return "\n".join(head) + "\n" + body


def import_keepalived(path: str, config_id: str | None = None) -> tuple[str, list[str]]:
    """keepalived.conf -> (ipvsync YAML text, ["FILE:LINE: keyword — why not carried over", ...]).

    Raises KeepalivedParseError (with .file/.line) on syntax errors, OSError if `path` is unreadable.
    """
    doc, notes = convert_keepalived(path, config_id)
    return render_yaml(doc, notes, path), notes
