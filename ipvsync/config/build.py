"""Files on disk -> a validated `Config`: includes, schema, inheritance and semantic checks.

Rules of residence: pure apart from reading the config files themselves. Collects *every* error
(with FILE:LINE:COL and the config path) and raises them together as `ConfigInvalid`.
"""

from __future__ import annotations

import glob
import hashlib
import ipaddress
import json
import os
import re
import socket
import stat
from collections.abc import Collection
from typing import Any

from ipvsync.config.chunks import parse_services_incrementally
from ipvsync.config.load import ConfigError, ConfigInvalid, Document, Path, parse
from ipvsync.config.schema import content_key, validate
from ipvsync.config.spec import DEFAULT_DRAIN_TIMEOUT, Config, Origin, RealServer, Service, SourceFile
from ipvsync.model import (
    AF_INET,
    AF_INET6,
    FAMILIES,
    FORWARD_METHODS,
    FWD_DROUTE,
    FWD_MASQ,
    FWD_TUNNEL,
    PROTOCOLS,
    SCHEDULER_FLAGS,
    SVC_F_ONEPACKET,
    SVC_F_PERSISTENT,
    TUN_F_CSUM,
    TUN_F_NOCSUM,
    TUN_F_REMCSUM,
    TUN_TYPES,
    DestAttrs,
    DestKey,
    ServiceAttrs,
    ServiceKey,
    SyncDaemon,
)


def address_kind(text: str) -> tuple[str, int, str]:
    """(canonical text, IP version, "" or "unspecified"/"multicast"); ValueError if not an address.

    Dotted-quad IPv4 goes through inet_pton(3), which accepts exactly what ipaddress accepts (four
    decimal octets, no leading zeros) at a tenth of the cost (10,000 real servers); the rest through
    ipaddress. Not memoised: the daemon reuses unchanged services whole (config.chunks)."""
    if ":" not in text and text[-1:].isdigit():
        try:
            packed = socket.inet_pton(socket.AF_INET, text)
        except OSError:
            raise ValueError(f"{text!r} does not appear to be an IPv4 or IPv6 address") from None
        bad = "unspecified" if packed == b"\0\0\0\0" else "multicast" if 224 <= packed[0] <= 239 else ""
        return text, 4, bad  # what inet_pton accepts is already canonical (no second string per address)
    ip = ipaddress.ip_address(text)
    bad = "unspecified" if ip.is_unspecified else "multicast" if ip.is_multicast else ""
    return str(ip), ip.version, bad


NO_HEALTH: dict[str, Any] = {"type": "none"}  # shared by every real server without checks: never mutate
# (forward, weight, upper, lower, tunnel) -> the one DestAttrs with those values
_SHARED_ATTRS: dict[tuple[Any, ...], DestAttrs] = {}
_NO_KEYS: dict[str, Any] = {}  # the keys of a shorthand real server: none (never mutate)

BUILTIN_DEFAULTS: dict[str, Any] = {"protocol": "tcp", "scheduler": "wlc", "forward": "nat", "weight": 1}
_DURATION = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)?$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
HEALTH_KEYS_BY_TYPE: dict[str, set[str]] = {
    "none": set(),
    "tcp": set(),
    "http": {"method", "path", "host", "status", "body_regex", "body_max"},
    "https": {"method", "path", "host", "status", "body_regex", "body_max", "tls_verify", "ca_file", "sni"},
    "udp": {"payload", "expect"},
    "dns": {"query_name", "query_type"},
    "exec": {"command", "user"},
    "file": {"path"},
}
HEALTH_COMMON = {"type", "interval", "timeout", "rise", "fall", "initial", "on_failure", "connect_ip",
                 "connect_port", "source_address", "fwmark"}


def parse_duration(value: Any) -> float:
    """'1.5s' / '200ms' / '5m' / '1h' / 30 -> seconds. Raises ValueError."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"{value!r} is negative")
        return float(value)
    m = _DURATION.match(str(value).strip())
    if not m:
        raise ValueError(f"{value!r} is not a duration; expected N[.N] with ms, s, m or h (e.g. 300s, 1.5m)")
    return float(m.group(1)) * _UNITS[m.group(2)]


def split_real_server(text: str, default_port: int) -> tuple[str, int]:
    """'198.51.100.1:8080' / '[2001:db8::1]:80' / '2001:db8::1' / '198.51.100.1' -> (address, port)."""
    canon, port, _version, _bad = _split_real_server(text, default_port)
    return canon, port


def _split_real_server(text: str, default_port: int) -> tuple[str, int, int, str]:
    """split_real_server, plus the address's IP version and what is wrong with it ("" if nothing)."""
    text = text.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"{text!r}: missing ']' after an IPv6 address")
        addr, rest = text[1:end], text[end + 1:]
        if rest and not rest.startswith(":"):
            raise ValueError(f"{text!r}: expected ':PORT' after ']'")
        port_text = rest[1:] if rest else ""
    elif text.count(":") == 1:
        addr, port_text = text.split(":")
    else:
        addr, port_text = text, ""
    try:
        canon, version, bad = address_kind(addr)
    except ValueError:
        raise ValueError(f"{addr!r} is not an IPv4 or IPv6 address") from None
    if port_text == "":
        return canon, default_port, version, bad
    port = _PORTS.get(port_text)
    if port is None:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise ValueError(f"port {port_text!r} must be a number from 1 to 65535")
        port = _PORTS.setdefault(port_text, int(port_text)) if len(_PORTS) < 4096 else int(port_text)
    return canon, port, version, bad


_PORTS: dict[str, int] = {}  # "8080" -> one int object for all 10,000 real servers on that port


class _Builder:
    """Turns validated documents into a Config, accumulating semantic errors."""

    def __init__(self) -> None:
        self.errors: list[ConfigError] = []

    def err(self, doc: Document, path: Path, msg: str) -> None:
        self.errors.append(doc.error(path, msg))

    def origin(self, doc: Document, path: Path) -> Origin:
        return Origin(doc.file, doc.line_of(path), path)  # the path is spelled out when printed

    def duration(self, doc: Document, path: Path, value: Any, default: float) -> float:
        if value is None:
            return default
        try:
            return parse_duration(value)
        except ValueError as exc:
            self.err(doc, path, str(exc))
            return default

    def address(self, doc: Document, path: Path, text: Any) -> str | None:
        try:
            canon, _version, bad = address_kind(str(text))
        except ValueError:
            self.err(doc, path, f"{text!r} is not an IPv4 or IPv6 address")
            return None
        if bad:
            self.err(doc, path, f"{text} is {bad}; a unicast address is required")
            return None
        return canon

    def health(self, doc: Document, path: Path, block: dict[str, Any]) -> dict[str, Any]:
        kind = block.get("type", "none")
        allowed = HEALTH_COMMON | HEALTH_KEYS_BY_TYPE.get(kind, set())
        for key in block:
            if key not in allowed:
                self.err(doc, path + (key,), f"{key!r} does not apply to a {kind} check; "
                                             f"{kind} takes: {', '.join(sorted(allowed))}")
        for key in ("interval", "timeout"):
            if key in block:
                secs = self.duration(doc, path + (key,), block[key], 0)
                if secs <= 0:
                    self.err(doc, path + (key,), f"{key} must be greater than 0")
        if kind == "exec" and "command" not in block:
            self.err(doc, path, "an exec check needs 'command: [program, args...]'")
        if kind == "file" and "path" not in block:
            self.err(doc, path, "a file check needs 'path:'")
        for key in ("body_regex", "expect"):
            if key in block:
                try:
                    re.compile(block[key])
                except re.error as exc:
                    self.err(doc, path + (key,), f"invalid regular expression: {exc}")
        for i, st in enumerate(block.get("status", [])):
            if isinstance(st, str) and "-" in st:
                lo, hi = (int(x) for x in st.split("-"))
                if lo > hi:
                    self.err(doc, path + ("status", i), f"range {st!r} is empty (start > end)")
        return dict(block)

    def service(self, doc: Document, name: str, raw: dict[str, Any], defaults: dict[str, Any],
                defaults_doc: Document) -> Service | None:
        path: Path = ("services", name)
        n_err = len(self.errors)
        eff = {**BUILTIN_DEFAULTS, **defaults, **raw}
        fwmark = raw.get("fwmark")
        scheduler = eff["scheduler"]
        forward = FORWARD_METHODS[eff["forward"]]
        if fwmark is not None:
            for key in ("vip", "port", "protocol"):
                if key in raw:
                    self.err(doc, path + (key,), f"{key!r} cannot be used with 'fwmark' (a fwmark service is keyed "
                                                 "on the mark and family only)")
            family = FAMILIES[raw.get("family", "inet")]
            vips: list[str] = []
            for i, v in enumerate(raw.get("vips", [])):
                a = self.address(doc, path + ("vips", i), v)
                if a is not None:
                    if (AF_INET6 if ":" in a else AF_INET) != family:
                        self.err(doc, path + ("vips", i), f"{a} is not an {raw.get('family', 'inet')} address "
                                                          "(the service's family)")
                    vips.append(a)
            key = ServiceKey(family=family, fwmark=fwmark)
            svc_port = 0
        else:
            if "family" in raw:
                self.err(doc, path + ("family",), "'family' only applies to fwmark services (a VIP has its own)")
            if "vips" in raw:
                self.err(doc, path + ("vips",), "'vips' only applies to fwmark services; use 'vip'")
            if "vip" not in raw:
                self.err(doc, path, "a service needs 'vip' and 'port' (or 'fwmark')")
                return None
            if "port" not in raw:
                self.err(doc, path, "a service needs 'port' (the virtual port, 1-65535)")
                return None
            vip = self.address(doc, path + ("vip",), raw["vip"])
            if vip is None:
                return None
            family = AF_INET6 if ":" in vip else AF_INET
            key = ServiceKey(family=family, protocol=PROTOCOLS[eff["protocol"]], address=vip, port=raw["port"])
            vips = [vip]
            svc_port = raw["port"]

        flags = 0
        for i, fl in enumerate(eff.get("scheduler_flags", [])):
            need, bit = SCHEDULER_FLAGS[fl]
            if need != scheduler:
                where = path + ("scheduler_flags", i) if "scheduler_flags" in raw else ("defaults", "scheduler_flags")
                self.err(doc if "scheduler_flags" in raw else defaults_doc, where,
                         f"{fl!r} is a flag of the {need} scheduler, but the scheduler is {scheduler!r}")
            flags |= bit
        if eff.get("one_packet"):
            if key.protocol != PROTOCOLS["udp"] and not key.fwmark:
                self.err(doc, path + ("one_packet",), "one_packet (--ops) only applies to UDP services")
            flags |= SVC_F_ONEPACKET
        timeout = 0
        full = 128 if family == AF_INET6 else 32
        netmask = full
        pe_name = ""
        pers = eff.get("persistence")
        if pers is not None:
            ppath = path + ("persistence",) if "persistence" in raw else ("defaults", "persistence")
            pdoc = doc if "persistence" in raw else defaults_doc
            flags |= SVC_F_PERSISTENT
            t = self.duration(pdoc, ppath + ("timeout",), pers.get("timeout"), 300.0)
            if t != int(t) or t < 1:
                self.err(pdoc, ppath + ("timeout",), f"persistence timeout must be whole seconds >= 1, got {t:g}s")
            timeout = max(1, int(t))
            if "netmask" in pers:
                netmask = self.netmask(pdoc, ppath + ("netmask",), str(pers["netmask"]), family)
            pe_name = pers.get("engine", "")
            if pe_name == "sip" and key.protocol != PROTOCOLS["udp"]:
                self.err(pdoc, ppath + ("engine",), "the sip persistence engine needs a UDP service")
        attrs = ServiceAttrs(scheduler=scheduler, flags=flags, timeout=timeout, netmask=netmask, pe_name=pe_name)

        tunnel = eff.get("tunnel")
        tun_type = tun_port = tun_flags = 0
        if tunnel is not None:
            tpath = path + ("tunnel",) if "tunnel" in raw else ("defaults", "tunnel")
            tdoc = doc if "tunnel" in raw else defaults_doc
            if forward != FWD_TUNNEL and "tunnel" in raw:
                self.err(tdoc, tpath, "'tunnel' only applies to 'forward: tun'")
            tun_type = TUN_TYPES[tunnel["type"]]
            if tunnel["type"] == "gue":
                if "port" not in tunnel:
                    self.err(tdoc, tpath, "a gue tunnel needs 'port' (the GUE UDP port)")
                tun_port = tunnel.get("port", 0)
            elif "port" in tunnel:
                self.err(tdoc, tpath + ("port",), "'port' only applies to gue tunnels")
            cs = tunnel.get("checksum")
            if cs is not None:
                if tunnel["type"] == "ipip":
                    self.err(tdoc, tpath + ("checksum",), "'checksum' only applies to gue and gre tunnels")
                if cs == "remote" and tunnel["type"] != "gue":
                    self.err(tdoc, tpath + ("checksum",), "checksum 'remote' is only supported by gue")
                tun_flags = {"none": TUN_F_NOCSUM, "checksum": TUN_F_CSUM, "remote": TUN_F_REMCSUM}[cs]

        real_servers: list[RealServer] = []
        seen: dict[DestKey, int] = {}
        svc_health = raw.get("health", defaults.get("health"))
        for i, item in enumerate(raw.get("real_servers", [])):
            rpath = path + ("real_servers", i)
            rs = self.real_server(doc, rpath, item, eff, svc_port, family, forward, (tun_type, tun_port, tun_flags),
                                  key, svc_health)
            if rs is None:
                continue
            if rs.key in seen:
                self.err(doc, rpath, f"duplicate real server {rs.key} (already real_servers[{seen[rs.key]}])")
                continue
            seen[rs.key] = i
            real_servers.append(rs)

        sorry = None
        if "sorry_server" in eff:
            spath = path + ("sorry_server",) if "sorry_server" in raw else ("defaults", "sorry_server")
            sorry = self.real_server(doc if "sorry_server" in raw else defaults_doc, spath, eff["sorry_server"],
                                     {**eff, "weight": 1}, svc_port, family, forward,
                                     (tun_type, tun_port, tun_flags), key, {"type": "none"})
            if sorry is not None and sorry.key in seen:
                self.err(doc, spath, f"the sorry server {sorry.key} is also a real server of this service")
        if eff.get("withdraw_vip") and not eff.get("quorum"):
            self.err(doc, path + ("withdraw_vip",), "withdraw_vip needs 'quorum' (the weight below which the VIP "
                                                    "is withdrawn)")
        drain = self.duration(doc, path + ("drain_timeout",), eff.get("drain_timeout"), DEFAULT_DRAIN_TIMEOUT)
        slow = self.duration(doc, path + ("slow_start",), eff.get("slow_start"), 0.0)
        if len(self.errors) != n_err:
            return None
        return Service(
            name=name, key=key, attrs=attrs, real_servers=tuple(real_servers), origin=self.origin(doc, path),
            vips=tuple(vips), drain_timeout=drain, slow_start=slow, quorum=eff.get("quorum", 0),
            quorum_hysteresis=eff.get("quorum_hysteresis", 0), sorry_server=sorry,
            withdraw_vip=bool(eff.get("withdraw_vip", False)), description=raw.get("description", ""))

    def netmask(self, doc: Document, path: Path, text: str, family: int) -> int:
        full = 128 if family == AF_INET6 else 32
        try:
            if text.startswith("/"):
                n = int(text[1:])
                if not 1 <= n <= full:
                    raise ValueError
                return n
            if family == AF_INET6:
                raise ValueError
            return ipaddress.IPv4Network(f"0.0.0.0/{text}").prefixlen
        except ValueError:
            allowed = ("a prefix length /1 to /128" if family == AF_INET6
                       else "a netmask like 255.255.255.0 or /1 to /32")
            self.err(doc, path, f"{text!r} is not a valid persistence netmask; expected {allowed}")
            return full

    def real_server(self, doc: Document, path: Path, item: Any, eff: dict[str, Any], svc_port: int, family: int,
                    forward: int, tun: tuple[int, int, int], skey: ServiceKey,
                    inherited_health: dict[str, Any] | None) -> RealServer | None:
        if isinstance(item, str):
            try:
                addr, port, version, bad = _split_real_server(item, svc_port)
            except ValueError as exc:
                self.err(doc, path, str(exc))
                return None
            if bad:
                self.err(doc, path, f"{addr} is not a unicast address")
                return None
            raw: dict[str, Any] = _NO_KEYS
            port_given = port != svc_port
        else:
            a = self.address(doc, path + ("address",), item["address"])  # a unicast address, or None
            if a is None:
                return None
            addr = a
            version = 6 if ":" in a else 4
            raw = item
            port = item.get("port", svc_port)
            port_given = "port" in item
        rs_family = AF_INET6 if version == 6 else AF_INET
        fwd = FORWARD_METHODS[raw["forward"]] if "forward" in raw else forward
        if rs_family != family and fwd != FWD_TUNNEL:
            svc_fam = "IPv6" if family == AF_INET6 else "IPv4"
            self.err(doc, path, f"{addr} is IPv{version} but the service is {svc_fam}; the kernel only allows "
                                "mixed families with 'forward: tun'")
            return None
        if fwd in (FWD_DROUTE, FWD_TUNNEL) and port_given and port != svc_port and svc_port:
            method = "dr" if fwd == FWD_DROUTE else "tun"
            self.err(doc, path + (("port",) if raw else ()),
                     f"forward {method} cannot remap ports: real server port {port} differs from the service port "
                     f"{svc_port}; use 'forward: nat' or the same port")
            return None
        if skey.fwmark and fwd != FWD_MASQ:
            port = 0 if not port_given else port
        weight = raw.get("weight", eff.get("weight", 1))
        upper = raw.get("upper_threshold", eff.get("upper_threshold", 0))
        lower = raw.get("lower_threshold", eff.get("lower_threshold", 0))
        if upper and lower > upper:
            self.err(doc, path, f"lower_threshold {lower} is greater than upper_threshold {upper}")
        if tun[0] and fwd != FWD_TUNNEL:
            tun = (0, 0, 0)
        values = (fwd, weight, upper, lower, tun)
        attrs = _SHARED_ATTRS.get(values)  # 10k real servers, a handful of distinct values
        if attrs is None:
            attrs = DestAttrs(forward=fwd, weight=weight, u_threshold=upper, l_threshold=lower,
                              tun_type=tun[0] if fwd == FWD_TUNNEL else 0,
                              tun_port=tun[1] if fwd == FWD_TUNNEL else 0,
                              tun_flags=tun[2] if fwd == FWD_TUNNEL else 0)
            if type(weight) is int and type(upper) is int and type(lower) is int:  # 3.0 == 3: keep types exact
                _SHARED_ATTRS[values] = attrs
        health_block = raw.get("health", inherited_health) or NO_HEALTH
        return RealServer(key=DestKey(addr, port), family=rs_family, attrs=attrs, origin=self.origin(doc, path),
                          health=health_block)


def _line_col(data: bytes, offset: int) -> tuple[int, int]:
    """1-based line and column (in bytes) of a byte offset, for errors found before YAML parsing."""
    return data.count(b"\n", 0, offset) + 1, offset - (data.rfind(b"\n", 0, offset) + 1) + 1


_SERVICE_CACHE: dict[tuple[str, int, str, bytes, str], Service] = {}
# file -> (its Document, the defaults it was built with, its (name, line, Service)s), from the last good load
_LAST_DOCS: dict[str, tuple[Document, str, list[tuple[str, int, Service]]]] = {}
# included file -> (its Document, its schema errors): an unchanged include is not validated again
_VALIDATED: dict[str, tuple[Document, list[ConfigError]]] = {}
# per file: id(raw service value) -> (that value, (line, name, defaults), Service), from the last good load
_LAST_SEEN: dict[str, dict[int, tuple[Any, tuple[int, str, str], Service]]] = {}


MAX_CONFIG_BYTES = 64 << 20


def _read(path: str, cache: dict[str, tuple[str, Document]] | None,
          unchanged: Collection[str] = ()) -> tuple[Document, str]:
    if cache is not None and path in unchanged and path in cache:
        return cache[path][1], cache[path][0]  # the caller vouches that the file did not change
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO must not block us
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigInvalid([ConfigError(path, 0, 0, "", "not a regular file; expected a YAML file")])
        data = fh.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        too_big = f"larger than {MAX_CONFIG_BYTES >> 20} MiB; refusing to parse"
        raise ConfigInvalid([ConfigError(path, 0, 0, "", too_big)])
    digest = hashlib.sha256(data).hexdigest()
    if cache is not None and path in cache and cache[path][0] == digest:
        return cache[path][1], digest
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line, col = _line_col(data, exc.start)
        msg = f"not UTF-8 text ({exc.reason} at byte {exc.start})"
        raise ConfigInvalid([ConfigError(path, line, col, "", msg)]) from None
    if "\0" in text:
        line, col = _line_col(data, data.index(b"\0"))
        msg = "the file contains NUL bytes; expected YAML text"
        raise ConfigInvalid([ConfigError(path, line, col, "", msg)])
    # service by service (reusing the previous parse's unchanged services); anything unusual: in full
    doc = parse_services_incrementally(text, path, cache[path][1].chunks if cache and path in cache else {})
    if doc is None:
        doc = parse(text, path)
    if cache is not None:
        cache[path] = (digest, doc)
    return doc, digest


def load_config(path: str, cache: dict[str, tuple[str, Document]] | None = None,
                unchanged: Collection[str] = ()) -> Config:
    """Read, validate and build a Config from `path` and its includes. Raises ConfigInvalid or OSError.

    `unchanged`: files the caller knows did not change since they were cached (not read again)."""
    main, digest = _read(path, cache, unchanged)
    errors = validate(main)
    if errors:
        raise ConfigInvalid(errors)
    data = main.data
    sources = [SourceFile(path, digest)]
    docs: list[tuple[Document, dict[str, Any]]] = [(main, data.get("services") or {})]
    include_dirs: list[str] = []
    main_abs = os.path.abspath(path)
    base = os.path.dirname(main_abs)
    for i, pattern in enumerate(data.get("include", [])):
        full = os.path.join(base, pattern)
        include_dirs.append(os.path.dirname(full))
        for inc in sorted(glob.glob(full)):
            if os.path.abspath(inc) == main_abs or (inc not in unchanged and not os.path.isfile(inc)):
                continue  # (a file the caller vouches for was a regular file a moment ago)
            try:
                idoc, idigest = _read(inc, cache, unchanged)
            except ConfigInvalid as exc:
                errors.extend(exc.errors)
                continue
            except OSError as exc:
                errors.append(main.error(("include", i), f"cannot read {inc}: {exc.strerror}"))
                continue
            sources.append(SourceFile(inc, idigest))
            extra = [k for k in idoc.data if k != "services"]
            for k in extra:
                errors.append(idoc.error((k,), f"an included file holds only 'services:'; {k!r} belongs in {path}"))
            if extra:
                continue
            hit = _VALIDATED.get(inc)
            if hit is not None and hit[0] is idoc:
                ierrs = hit[1]  # the very document validated before (unchanged file, from the cache)
            else:
                ierrs = validate(Document(idoc.file, {"version": 1, **idoc.data}, idoc.marks,
                                          service_marks=idoc.service_marks))
                _VALIDATED[inc] = (idoc, ierrs)
            if ierrs:
                errors.extend(ierrs)
                continue
            docs.append((idoc, idoc.data.get("services") or {}))
    if errors:
        raise ConfigInvalid(errors)

    b = _Builder()
    defaults = data.get("defaults", {})
    if "health" in defaults:
        b.health(main, ("defaults", "health"), defaults["health"])
    defaults_json = json.dumps(defaults, sort_keys=True, default=str)
    services: list[Service] = []
    names: dict[str, tuple[str, int]] = {}
    keys: dict[ServiceKey, Service] = {}
    seen: dict[str, dict[int, tuple[Any, tuple[int, str, str], Service]]] = {}
    built: dict[str, tuple[Document, str, list[tuple[str, int, Service]]]] = {}
    for doc, svcs in docs:
        whole = _LAST_DOCS.get(doc.file)
        if (whole is not None and whole[0] is doc and whole[1] == defaults_json
                and not any(name in names or svc.key in keys for name, _line, svc in whole[2])):
            # the identical document as in the last good load (an unchanged include): its services
            # as they were. A duplicate with another file takes the long way, which words the error.
            for name, line, svc in whole[2]:
                names[name] = (doc.file, line)
                keys[svc.key] = svc
                services.append(svc)
            built[doc.file] = whole
            seen[doc.file] = _LAST_SEEN.get(doc.file, {})
            continue
        last = _LAST_SEEN.get(doc.file, {})
        mine: list[tuple[str, int, Service]] = []
        for name, raw in svcs.items():
            spath: Path = ("services", name)
            if name in names:
                b.err(doc, spath, f"duplicate service name {name!r} (first defined at {names[name][0]}:"
                                  f"{names[name][1]})")
                continue
            line = doc.line_of(spath)
            names[name] = (doc.file, line)
            hit = last.get(id(raw))
            if hit is not None and hit[0] is raw and hit[1] == (line, name, defaults_json):
                svc = hit[2]  # the very value parsed before (config.chunks reuse): no JSON key needed
                ckey = None
            else:
                ckey = (doc.file, line, name, content_key(raw), defaults_json)
                svc = _SERVICE_CACHE.get(ckey)
            if svc is None and ckey is not None:
                n_err = len(b.errors)
                if "health" in raw:
                    b.health(doc, spath + ("health",), raw["health"])
                for j, rs in enumerate(raw.get("real_servers", [])):
                    if isinstance(rs, dict) and "health" in rs:
                        b.health(doc, spath + ("real_servers", j, "health"), rs["health"])
                svc = b.service(doc, name, raw, defaults, main)
                if svc is not None and len(b.errors) == n_err:
                    if len(_SERVICE_CACHE) > 50_000:
                        _SERVICE_CACHE.clear()
                    _SERVICE_CACHE[ckey] = svc
            if svc is None:
                continue
            seen.setdefault(doc.file, {})[id(raw)] = (raw, (line, name, defaults_json), svc)
            if svc.key in keys:
                first = keys[svc.key]
                b.err(doc, spath, f"duplicate service {svc.key}: same key as service {first.name!r} "
                                  f"({first.origin.file}:{first.origin.line})")
                continue
            keys[svc.key] = svc
            services.append(svc)
            mine.append((name, line, svc))
        built[doc.file] = (doc, defaults_json, mine)
    if data.get("vip_mode") != "external" and "external_state_file" in data:
        b.err(main, ("external_state_file",), "external_state_file only applies with 'vip_mode: external'")
    reconcile = b.duration(main, ("reconcile_interval",), data.get("reconcile_interval"), 60.0)
    if reconcile < 1:
        b.err(main, ("reconcile_interval",), "reconcile_interval must be at least 1s")
    timeouts = None
    if "ipvs" in data and "timeouts" in data["ipvs"]:
        t = data["ipvs"]["timeouts"]
        vals = []
        for k in ("tcp", "tcpfin", "udp"):
            secs = b.duration(main, ("ipvs", "timeouts", k), t.get(k), 0)
            if secs and secs != int(secs):
                b.err(main, ("ipvs", "timeouts", k), "IPVS timeouts are whole seconds")
            vals.append(int(secs))
        timeouts = (vals[0], vals[1], vals[2])
    sync = []
    roles = set()
    for i, d in enumerate(data.get("sync_daemon", [])):
        if d["role"] in roles:
            b.err(main, ("sync_daemon", i, "role"), f"a {d['role']} sync daemon is already listed; one per role")
        roles.add(d["role"])
        sync.append(SyncDaemon(role=d["role"], interface=d["interface"], syncid=d.get("syncid", 0)))
    if not b.errors:
        _LAST_SEEN.clear()
        _LAST_SEEN.update(seen)
        _LAST_DOCS.clear()
        _LAST_DOCS.update(built)
    if b.errors:
        raise ConfigInvalid(sorted(b.errors, key=lambda e: (e.file != path, e.file, e.line, e.column)))
    return Config(
        file=path, services=tuple(services), sources=tuple(sources), include_dirs=tuple(dict.fromkeys(include_dirs)),
        vip_interface=data.get("vip_interface", "ipvsync0"), vip_mode=data.get("vip_mode", "managed"),
        external_state_file=data.get("external_state_file"), allow_empty=data.get("allow_empty", False),
        max_delete=data.get("max_delete"), reconcile_interval=reconcile, sysctls=dict(data.get("sysctls", {})),
        ipvs_timeouts=timeouts, metrics_listen=(data.get("metrics") or {}).get("listen"), sync_daemons=tuple(sync),
        keyed=keys)
