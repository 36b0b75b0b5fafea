"""The validated configuration: what the user asked for, in kernel-shaped values plus provenance.

Rules of residence: frozen data only. Built by config/build.py, read by plan.py, the daemon and the
health layer. Every object knows the file, line and config path it came from (`Origin`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ipvsync.model import DestAttrs, DestKey, ServiceAttrs, ServiceKey, SyncDaemon

DEFAULT_DRAIN_TIMEOUT = 300.0
DEFAULT_RECONCILE_INTERVAL = 60.0


class Origin:
    """Where a desired object was declared: file, line and config path (given as text, or as the
    path's parts, which are spelled out only when asked for: 10,000 real servers rarely are)."""

    __slots__ = ("file", "line", "_path")

    def __init__(self, file: str, line: int, path: str | tuple[str | int, ...]) -> None:
        self.file = file
        self.line = line
        self._path = path

    @property
    def path(self) -> str:
        if not isinstance(self._path, str):
            from ipvsync.config.load import format_path

            self._path = format_path(self._path)
        return self._path

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Origin):
            return NotImplemented
        if self.file != other.file or self.line != other.line:
            return False
        return self._path == other._path if type(self._path) is type(other._path) else self.path == other.path

    def __hash__(self) -> int:
        return hash((self.file, self.line, self.path))

    def __repr__(self) -> str:
        return f"Origin({self.file!r}, {self.line!r}, {self.path!r})"

    def __str__(self) -> str:
        return f"{self.file}:{self.line} {self.path}"


@dataclass(frozen=True, slots=True)
class RealServer:
    key: DestKey
    family: int
    attrs: DestAttrs
    origin: Origin
    health: dict[str, Any] = field(default_factory=lambda: {"type": "none"}, compare=False, hash=False)

    @property
    def shorthand(self) -> str:
        return str(self.key)


@dataclass(frozen=True, slots=True)
class Service:
    name: str
    key: ServiceKey
    attrs: ServiceAttrs
    real_servers: tuple[RealServer, ...]
    origin: Origin
    vips: tuple[str, ...] = ()
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT
    slow_start: float = 0.0
    quorum: int = 0
    quorum_hysteresis: int = 0
    sorry_server: RealServer | None = None
    withdraw_vip: bool = False
    description: str = ""

    def real_server(self, key: DestKey) -> RealServer | None:
        for rs in self.real_servers:
            if rs.key == key:
                return rs
        return None


@dataclass(frozen=True, slots=True)
class SourceFile:
    """A file the config was read from, with the hash the daemon uses to skip unchanged reloads."""

    path: str
    sha256: str


@dataclass(frozen=True, slots=True)
class Config:
    file: str
    services: tuple[Service, ...]
    sources: tuple[SourceFile, ...] = ()
    include_dirs: tuple[str, ...] = ()
    vip_interface: str = "ipvsync0"
    vip_mode: str = "managed"
    external_state_file: str | None = None
    allow_empty: bool = False
    max_delete: int | str | None = None
    reconcile_interval: float = DEFAULT_RECONCILE_INTERVAL
    sysctls: dict[str, int] = field(default_factory=dict, compare=False, hash=False)
    ipvs_timeouts: tuple[int, int, int] | None = None  # tcp, tcpfin, udp seconds (0 = leave)
    metrics_listen: str | None = None
    sync_daemons: tuple[SyncDaemon, ...] = ()
    keyed: dict[ServiceKey, Service] = field(default_factory=dict, compare=False, hash=False, repr=False)

    def service(self, name: str) -> Service | None:
        for s in self.services:
            if s.name == name:
                return s
        return None

    def by_key(self) -> dict[ServiceKey, Service]:
        """Services by key (the loader's index when it matches; read it, do not change it)."""
        if len(self.keyed) == len(self.services):  # not a replace()d view with fewer services
            return self.keyed
        return {s.key: s for s in self.services}

    @property
    def digest(self) -> str:
        """Content hash of every file read: equal digests mean an identical config."""
        import hashlib

        h = hashlib.sha256()
        for s in self.sources:
            h.update(s.path.encode() + b"\0" + s.sha256.encode() + b"\n")
        return h.hexdigest()
