"""diff(desired, observed, owned) -> an ordered, make-before-break list of small frozen operations.

Rules of residence: knows the model only; never imports the kernel layer, time or files. Every
operation carries the config line it came from (`origin`) and can be printed, serialised and
inverted (`inverse()`, used by apply.py to roll back).

Order: link -> services added/edited -> real servers added/edited -> VIPs bound -> real servers
deleted -> VIPs unbound -> services deleted. So traffic always has somewhere to go: a service and
its real servers exist before its VIP answers, and a VIP stops answering before its service goes.
"""

from __future__ import annotations

import ipaddress
import operator
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ipvsync.config.spec import Origin
from ipvsync.desired import Desired
from ipvsync.model import (
    AF_INET6,
    FORWARD_NAMES,
    FWD_TUNNEL,
    SVC_F_ONEPACKET,
    SVC_F_PERSISTENT,
    SVC_F_SCHED1,
    SVC_F_SCHED2,
    TUN_TYPE_NAMES,
    DestAttrs,
    DestKey,
    ObservedService,
    ServiceAttrs,
    ServiceKey,
    SyncDaemon,
    Vip,
)

NO_ORIGIN = Origin("", 0, "")
# sort keys giving the dataclasses' own order (order=True compares the field tuples), built once per item
SERVICE_ORDER = operator.attrgetter("family", "protocol", "address", "port", "fwmark")
DEST_ORDER = operator.attrgetter("address", "port")
VIP_ORDER = operator.attrgetter("address", "interface")


def describe_service_attrs(key: ServiceKey, a: ServiceAttrs) -> str:
    out = [f"scheduler {a.scheduler}"]
    if a.flags & (SVC_F_SCHED1 | SVC_F_SCHED2):
        names = []
        if a.flags & SVC_F_SCHED1:
            names.append(f"{a.scheduler}-fallback")
        if a.flags & SVC_F_SCHED2:
            names.append(f"{a.scheduler}-port")
        out.append("flags " + ",".join(names))
    if a.flags & SVC_F_PERSISTENT:
        if key.family == AF_INET6:
            mask = f"/{a.netmask}"
        else:
            mask = str(ipaddress.IPv4Network(f"0.0.0.0/{a.netmask}").netmask)
        out.append(f"persistent {a.timeout}s netmask {mask}")
        if a.pe_name:
            out.append(f"pe {a.pe_name}")
    if a.flags & SVC_F_ONEPACKET:
        out.append("one-packet")
    return " ".join(out)


def describe_dest_attrs(a: DestAttrs) -> str:
    out = [FORWARD_NAMES.get(a.forward, str(a.forward)), f"weight {a.weight}"]
    if a.u_threshold or a.l_threshold:
        out.append(f"thresholds {a.l_threshold}-{a.u_threshold}")
    if a.forward == FWD_TUNNEL and (a.tun_type or a.tun_port or a.tun_flags):
        out.append(f"tunnel {TUN_TYPE_NAMES.get(a.tun_type, a.tun_type)}")
        if a.tun_port:
            out.append(f"port {a.tun_port}")
    return " ".join(out)


def _diff_words(old: Any, new: Any) -> str:
    changes = []
    for k, v in asdict(new).items():
        ov = getattr(old, k)
        if ov != v:
            changes.append(f"{k} {ov}->{v}")
    return ", ".join(changes)


@dataclass(frozen=True)
class Op:
    """Base of every planned operation."""

    origin: Origin = field(default=NO_ORIGIN, kw_only=True, compare=False)
    kind = "op"
    sign = " "

    def inverse(self) -> list[Op]:
        raise NotImplementedError

    def text(self) -> str:
        raise NotImplementedError

    def __str__(self) -> str:
        where = f"  # {self.origin}" if self.origin.file else ""
        return f"{self.sign} {self.text()}{where}"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"op": self.kind, "text": self.text()}
        if self.origin.file:
            out["file"], out["line"], out["path"] = self.origin.file, self.origin.line, self.origin.path
        return out

    @property
    def is_ipvs(self) -> bool:
        return True


@dataclass(frozen=True)
class AddService(Op):
    key: ServiceKey
    attrs: ServiceAttrs
    kind = "add_service"
    sign = "+"

    def inverse(self) -> list[Op]:
        return [DelService(self.key, self.attrs, (), origin=self.origin)]

    def text(self) -> str:
        return f"add service {self.key} {describe_service_attrs(self.key, self.attrs)}"


@dataclass(frozen=True)
class EditService(Op):
    key: ServiceKey
    old: ServiceAttrs
    new: ServiceAttrs
    kind = "edit_service"
    sign = "~"

    def inverse(self) -> list[Op]:
        return [EditService(self.key, self.new, self.old, origin=self.origin)]

    def text(self) -> str:
        return f"edit service {self.key}: {_diff_words(self.old, self.new)}"


@dataclass(frozen=True)
class DelService(Op):
    key: ServiceKey
    attrs: ServiceAttrs
    dests: tuple[tuple[DestKey, int, DestAttrs], ...] = ()  # what the kernel deletes with it
    kind = "del_service"
    sign = "-"

    def inverse(self) -> list[Op]:
        ops: list[Op] = [AddService(self.key, self.attrs, origin=self.origin)]
        ops += [AddDest(self.key, dk, fam, da, origin=self.origin) for dk, fam, da in self.dests]
        return ops

    def text(self) -> str:
        return f"delete service {self.key}" + (f" and its {len(self.dests)} real servers" if self.dests else "")


@dataclass(frozen=True)
class AddDest(Op):
    service: ServiceKey
    key: DestKey
    family: int
    attrs: DestAttrs
    kind = "add_dest"
    sign = "+"

    def inverse(self) -> list[Op]:
        return [DelDest(self.service, self.key, self.family, self.attrs, origin=self.origin)]

    def text(self) -> str:
        return f"add real server {self.key} to {self.service} {describe_dest_attrs(self.attrs)}"


@dataclass(frozen=True)
class EditDest(Op):
    service: ServiceKey
    key: DestKey
    family: int
    old: DestAttrs
    new: DestAttrs
    kind = "edit_dest"
    sign = "~"

    def inverse(self) -> list[Op]:
        return [EditDest(self.service, self.key, self.family, self.new, self.old, origin=self.origin)]

    def text(self) -> str:
        return f"edit real server {self.key} of {self.service}: {_diff_words(self.old, self.new)}"


@dataclass(frozen=True)
class DelDest(Op):
    service: ServiceKey
    key: DestKey
    family: int
    attrs: DestAttrs
    kind = "del_dest"
    sign = "-"

    def inverse(self) -> list[Op]:
        return [AddDest(self.service, self.key, self.family, self.attrs, origin=self.origin)]

    def text(self) -> str:
        return f"delete real server {self.key} from {self.service}"


@dataclass(frozen=True)
class AddDaemon(Op):
    daemon: SyncDaemon
    kind = "add_sync_daemon"
    sign = "+"

    def inverse(self) -> list[Op]:
        return [DelDaemon(self.daemon, origin=self.origin)]

    def text(self) -> str:
        return f"start sync daemon {self.daemon.role} on {self.daemon.interface} syncid {self.daemon.syncid}"


@dataclass(frozen=True)
class DelDaemon(Op):
    daemon: SyncDaemon
    kind = "del_sync_daemon"
    sign = "-"

    def inverse(self) -> list[Op]:
        return [AddDaemon(self.daemon, origin=self.origin)]

    def text(self) -> str:
        return f"stop sync daemon {self.daemon.role} on {self.daemon.interface}"


@dataclass(frozen=True)
class SetTimeouts(Op):
    old: tuple[int, int, int]
    new: tuple[int, int, int]
    kind = "set_timeouts"
    sign = "~"

    def inverse(self) -> list[Op]:
        return [SetTimeouts(self.new, self.old, origin=self.origin)]

    def text(self) -> str:
        return f"set IPVS timeouts tcp/tcpfin/udp {'/'.join(map(str, self.old))} -> {'/'.join(map(str, self.new))}"


@dataclass(frozen=True)
class CreateLink(Op):
    name: str
    kind = "create_link"
    sign = "+"

    def inverse(self) -> list[Op]:
        return [DeleteLink(self.name, origin=self.origin)]

    def text(self) -> str:
        return f"create dummy interface {self.name}"

    @property
    def is_ipvs(self) -> bool:
        return False


@dataclass(frozen=True)
class DeleteLink(Op):
    name: str
    kind = "delete_link"
    sign = "-"

    def inverse(self) -> list[Op]:
        return [CreateLink(self.name, origin=self.origin)]

    def text(self) -> str:
        return f"delete interface {self.name}"

    @property
    def is_ipvs(self) -> bool:
        return False


@dataclass(frozen=True)
class SetLinkUp(Op):
    name: str
    up: bool = True
    kind = "set_link"
    sign = "~"

    def inverse(self) -> list[Op]:
        return [SetLinkUp(self.name, not self.up, origin=self.origin)]

    def text(self) -> str:
        return f"set interface {self.name} {'up' if self.up else 'down'}"

    @property
    def is_ipvs(self) -> bool:
        return False


@dataclass(frozen=True)
class BindVip(Op):
    vip: Vip
    kind = "bind_vip"
    sign = "+"

    def inverse(self) -> list[Op]:
        return [UnbindVip(self.vip, origin=self.origin)]

    def text(self) -> str:
        return f"bind {self.vip}"

    @property
    def is_ipvs(self) -> bool:
        return False


@dataclass(frozen=True)
class UnbindVip(Op):
    vip: Vip
    kind = "unbind_vip"
    sign = "-"

    def inverse(self) -> list[Op]:
        return [BindVip(self.vip, origin=self.origin)]

    def text(self) -> str:
        return f"unbind {self.vip}"

    @property
    def is_ipvs(self) -> bool:
        return False


@dataclass(frozen=True)
class Observed:
    """What the kernel has right now (read by the kernel layer, passed in by the caller)."""

    services: dict[ServiceKey, ObservedService]
    addresses: frozenset[Vip] = frozenset()  # addresses present on the VIP interface
    link_exists: bool = True
    link_up: bool = True
    daemons: tuple[SyncDaemon, ...] = ()
    timeouts: tuple[int, int, int] | None = None


@dataclass(frozen=True)
class Owned:
    """What ipvsync created (state file): the only foreign-looking objects it may delete."""

    services: frozenset[ServiceKey] = frozenset()
    vips: frozenset[Vip] = frozenset()
    links: frozenset[str] = frozenset()
    daemons: frozenset[SyncDaemon] = frozenset()

    def after(self, op: Op) -> Owned:
        """Ownership once `op` has taken effect."""
        if type(op) in _OWNERSHIP_NEUTRAL:  # real-server ops: 10 of every 11 in a big apply
            return self
        if isinstance(op, AddService):
            return Owned(self.services | {op.key}, self.vips, self.links, self.daemons)
        if isinstance(op, DelService):
            return Owned(self.services - {op.key}, self.vips, self.links, self.daemons)
        if isinstance(op, BindVip):
            return Owned(self.services, self.vips | {op.vip}, self.links, self.daemons)
        if isinstance(op, UnbindVip):
            return Owned(self.services, self.vips - {op.vip}, self.links, self.daemons)
        if isinstance(op, CreateLink):
            return Owned(self.services, self.vips, self.links | {op.name}, self.daemons)
        if isinstance(op, DeleteLink):
            return Owned(self.services, self.vips, self.links - {op.name}, self.daemons)
        if isinstance(op, AddDaemon):
            return Owned(self.services, self.vips, self.links, self.daemons | {op.daemon})
        if isinstance(op, DelDaemon):
            return Owned(self.services, self.vips, self.links, self.daemons - {op.daemon})
        return self

    def after_all(self, ops: Iterable[Op]) -> Owned:
        """Ownership once every op has taken effect, in order (after() folded, one copy per set)."""
        sets: tuple[set[Any], ...] | None = None
        for op in ops:
            kind = type(op)
            if kind in _OWNERSHIP_NEUTRAL:
                continue
            if sets is None:
                sets = (set(self.services), set(self.vips), set(self.links), set(self.daemons))
            services, vips, links, daemons = sets
            if isinstance(op, AddService):
                services.add(op.key)
            elif isinstance(op, DelService):
                services.discard(op.key)
            elif isinstance(op, BindVip):
                vips.add(op.vip)
            elif isinstance(op, UnbindVip):
                vips.discard(op.vip)
            elif isinstance(op, CreateLink):
                links.add(op.name)
            elif isinstance(op, DeleteLink):
                links.discard(op.name)
            elif isinstance(op, AddDaemon):
                daemons.add(op.daemon)
            elif isinstance(op, DelDaemon):
                daemons.discard(op.daemon)
        if sets is None:
            return self
        return Owned(*(frozenset(x) for x in sets))

    def to_json(self) -> dict[str, Any]:
        # _flat(x) == asdict(x) for these flat dataclasses of ints and strings, without its deep copies
        return {
            "services": [_flat(k) for k in sorted(self.services, key=SERVICE_ORDER)],
            "vips": [_flat(v) for v in sorted(self.vips, key=VIP_ORDER)],
            "links": sorted(self.links),
            "sync_daemons": [_flat(d) for d in sorted(self.daemons, key=lambda d: (d.role, d.interface))],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Owned:
        return cls(
            frozenset(ServiceKey(**k) for k in data.get("services", [])),
            frozenset(Vip(**v) for v in data.get("vips", [])),
            frozenset(data.get("links", [])),
            frozenset(SyncDaemon(**d) for d in data.get("sync_daemons", [])),
        )


_OWNERSHIP_NEUTRAL = frozenset({AddDest, EditDest, DelDest, EditService, SetTimeouts, SetLinkUp})
_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _flat(obj: Any) -> dict[str, Any]:
    """asdict() of a dataclass whose fields are all scalars (ServiceKey, Vip, SyncDaemon)."""
    names = _FIELD_NAMES.get(type(obj))
    if names is None:
        names = _FIELD_NAMES[type(obj)] = tuple(f.name for f in fields(obj))
    out = {n: getattr(obj, n) for n in names}
    if any(not isinstance(v, int | str | float | bool | None) for v in out.values()):
        return asdict(obj)  # not flat after all: keep asdict's deep copy
    return out


@dataclass(frozen=True)
class Plan:
    ops: tuple[Op, ...]
    names: dict[ServiceKey, str] = field(default_factory=dict, compare=False)

    def __bool__(self) -> bool:
        return bool(self.ops)

    def __len__(self) -> int:
        return len(self.ops)

    def text(self) -> str:
        if not self.ops:
            return "No changes."
        lines = [str(op) for op in self.ops]
        counts: dict[str, int] = {}
        for op in self.ops:
            counts[op.sign] = counts.get(op.sign, 0) + 1
        lines.append(f"Plan: {counts.get('+', 0)} to add, {counts.get('~', 0)} to change, "
                     f"{counts.get('-', 0)} to delete.")
        return "\n".join(lines)

    def to_json(self) -> list[dict[str, Any]]:
        return [op.to_json() for op in self.ops]

    def deleted_services(self) -> list[ServiceKey]:
        return [op.key for op in self.ops if isinstance(op, DelService)]


class _PairMemo:
    """Pairs already found equal, by identity: id(anchor) -> (a, b), in two generations of `limit`.

    A memo of a pure function of values that are never mutated (frozen; the dests dicts of observed
    and desired services are not changed after they are built); an entry keeps both alive, so the
    ids stay theirs. The anchor is the side that is stable across re-plans, so that a new object on
    the other side replaces its entry instead of adding one.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.now: dict[int, tuple[object, object]] = {}
        self.before: dict[int, tuple[object, object]] = {}

    def known(self, anchor: object, a: object, b: object) -> bool:
        m = self.now.get(id(anchor))
        if m is not None and m[0] is a and m[1] is b:
            return True
        m = self.before.get(id(anchor))
        if m is not None and m[0] is a and m[1] is b:
            self.remember(anchor, a, b)
            return True
        return False

    def remember(self, anchor: object, a: object, b: object) -> None:
        if len(self.now) >= self.limit:
            self.before, self.now = self.now, {}
        self.now[id(anchor)] = (a, b)


# The kernel layer returns the identical objects for an unchanged kernel object (and keeps a real
# server's key and attrs objects while only its counters move), the config layer its identical
# objects for an unchanged declaration: a no-drift re-plan is one lookup per service.
_ATTRS = _PairMemo(1 << 15)  # anchored on the observed attrs (the config shares its DestAttrs)
_SERVICES = _PairMemo(1 << 16)  # anchored on the desired service: one entry per declared service


def _same(have: ServiceAttrs | DestAttrs, want: ServiceAttrs | DestAttrs, family: int) -> bool:
    """have.normalised() == want.normalised() (family is ignored for DestAttrs)."""
    if _ATTRS.known(have, have, want):
        return True
    if isinstance(want, ServiceAttrs):
        if have.normalised(family) != want.normalised(family):  # type: ignore[call-arg]
            return False
    elif have.normalised() != want.normalised():  # type: ignore[call-arg]
        return False
    _ATTRS.remember(have, have, want)
    return True


def _unchanged(want: Any, have: ObservedService | None) -> bool:
    """True when the service and every real server of it already are as desired (no operation)."""
    if have is None:
        return False
    if _SERVICES.known(want, want, have):
        return True
    if not _same(have.attrs, want.attrs, want.key.family):
        return False
    hd = have.dests
    wd = want.dests
    if len(hd) != len(wd):
        return False
    for dkey, w in wd.items():
        h = hd.get(dkey)
        if h is None or not _same(h.attrs, w.attrs, 0):
            return False
    _SERVICES.remember(want, want, have)  # as many observed as desired, all desired present: no deletions
    return True


def plan(desired: Desired, observed: Observed, owned: Owned, *, sync_daemons: tuple[SyncDaemon, ...] = (),
         timeouts: tuple[int, int, int] | None = None) -> Plan:
    """The ordered operations that take the kernel from `observed` to `desired`."""
    add_svc: list[Op] = []
    add_dst: list[Op] = []
    del_dst: list[Op] = []
    del_svc: list[Op] = []
    link_ops: list[Op] = []
    vip_bind: list[Op] = []
    vip_unbind: list[Op] = []
    daemon_ops: list[Op] = []

    observed_services = observed.services
    changed = [k for k, want in desired.services.items() if not _unchanged(want, observed_services.get(k))]
    for key in sorted(changed, key=SERVICE_ORDER):
        want = desired.services[key]
        have = observed_services.get(key)
        wattrs = want.attrs.normalised(key.family)
        if have is None:
            add_svc.append(AddService(key, wattrs, origin=want.origin))
            current_dests: dict = {}
        else:
            hattrs = have.attrs.normalised(key.family)
            if hattrs != wattrs:
                add_svc.append(EditService(key, hattrs, wattrs, origin=want.origin))
            current_dests = have.dests
        for dkey in sorted(want.dests, key=DEST_ORDER):
            wd = want.dests[dkey]
            hd = current_dests.get(dkey)
            wda = wd.attrs.normalised()
            if hd is None:
                add_dst.append(AddDest(key, dkey, wd.family, wda, origin=wd.origin))
            else:
                hda = hd.attrs.normalised()
                if hda != wda:
                    add_dst.append(EditDest(key, dkey, wd.family, hda, wda, origin=wd.origin))
        for dkey in sorted(current_dests, key=DEST_ORDER):
            if dkey not in want.dests:
                hd = current_dests[dkey]
                del_dst.append(DelDest(key, dkey, hd.family, hd.attrs.normalised(), origin=want.origin))

    # intersections walk the smaller side: a scoped converge observes a few of 1000 owned services
    for key in sorted((k for k in observed_services if k in owned.services and k not in desired.services),
                      key=SERVICE_ORDER):
        have = observed.services[key]
        dests = tuple((dk, d.family, d.attrs.normalised()) for dk, d in sorted(have.dests.items()))
        del_svc.append(DelService(key, have.attrs.normalised(key.family), dests))

    if desired.manage_vips:
        iface = desired.vip_interface
        if desired.vips or iface in owned.links:
            if not observed.link_exists:
                link_ops.append(CreateLink(iface))
            elif not observed.link_up:
                link_ops.append(SetLinkUp(iface, True))
        for vip in sorted((v for v in desired.vips if v not in observed.addresses), key=VIP_ORDER):
            vip_bind.append(BindVip(vip, origin=desired.vips[vip]))
    for vip in sorted((v for v in observed.addresses if v in owned.vips and v not in desired.vips), key=VIP_ORDER):
        vip_unbind.append(UnbindVip(vip))

    want_daemons = set(sync_daemons)
    have_daemons = set(observed.daemons)
    for d in sorted(want_daemons - have_daemons, key=lambda d: d.role):
        # the kernel runs one daemon per role: replace a different one of the same role
        for old in have_daemons:
            if old.role == d.role:
                daemon_ops.append(DelDaemon(old))
        daemon_ops.append(AddDaemon(d))
    for d in sorted(have_daemons - want_daemons, key=lambda d: d.role):
        if d in owned.daemons and not any(w.role == d.role for w in want_daemons):
            daemon_ops.append(DelDaemon(d))
    if timeouts is not None and observed.timeouts is not None:
        new = tuple(n if n else o for n, o in zip(timeouts, observed.timeouts))
        if new != observed.timeouts:
            daemon_ops.append(SetTimeouts(observed.timeouts, new))  # type: ignore[arg-type]

    ops = link_ops + add_svc + add_dst + vip_bind + del_dst + vip_unbind + del_svc + daemon_ops
    return Plan(tuple(ops), desired.names())
