"""The desired kernel state: what the planner compares with what the kernel has.

Rules of residence: pure. `from_config` turns a Config into kernel-shaped desired objects; the
health, drain and quorum layers return modified copies (weights, removed servers, sorry servers,
withdrawn VIPs) with `dataclasses.replace`; the planner only ever sees a `Desired`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ipvsync.config.spec import Config, Origin, Service
from ipvsync.model import DestAttrs, DestKey, ServiceAttrs, ServiceKey, Vip


@dataclass(frozen=True, slots=True)
class DesiredDest:
    key: DestKey
    family: int
    attrs: DestAttrs
    origin: Origin


@dataclass(frozen=True, slots=True)
class DesiredService:
    name: str
    key: ServiceKey
    attrs: ServiceAttrs
    dests: dict[DestKey, DesiredDest]
    origin: Origin
    vips: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Desired:
    """Services by key, VIPs to bind (with the config line that asks for each), and the VIP link."""

    services: dict[ServiceKey, DesiredService]
    vips: dict[Vip, Origin] = field(default_factory=dict)
    vip_interface: str = "ipvsync0"
    manage_vips: bool = True

    def names(self) -> dict[ServiceKey, str]:
        return {k: s.name for k, s in self.services.items()}


# id(Service) -> (that Service, its DesiredService), from the last call: a reload or reconcile of
# 10,000 real servers rebuilds only the services whose declaration changed (the config builder
# hands back the identical Service object for an unchanged declaration)
_LAST: dict[int, tuple[Service, DesiredService]] = {}


def _service(svc: Service) -> DesiredService:
    hit = _LAST.get(id(svc))
    if hit is not None and hit[0] is svc:
        return hit[1]
    dests = {rs.key: DesiredDest(rs.key, rs.family, rs.attrs, rs.origin) for rs in svc.real_servers}
    return DesiredService(svc.name, svc.key, svc.attrs, dests, svc.origin, svc.vips)


_PREV: tuple[Config, Desired] | None = None


def _edited(config: Config) -> Desired | None:
    """The previous result with the services that changed in place swapped, when the config differs
    from the previous one only by edits (same services, same order, same VIPs and origins): a
    one-service reload costs that service, not 1000 dict inserts."""
    if _PREV is None:
        return None
    prev_config, prev = _PREV
    old = prev_config.services
    if len(old) != len(config.services) or (prev_config.vip_mode, prev_config.vip_interface) != (
            config.vip_mode, config.vip_interface):
        return None
    changed = [(a, b) for a, b in zip(old, config.services, strict=True) if a is not b]
    if len(changed) * 4 > len(old) or any(
            (a.key, a.name, a.vips, a.origin) != (b.key, b.name, b.vips, b.origin) for a, b in changed):
        return None
    services = dict(prev.services)  # a copy keeps the order and the stored hashes
    for a, b in changed:
        services[b.key] = ds = _service(b)
        _LAST.pop(id(a), None)
        _LAST[id(b)] = (b, ds)
    return Desired(services, prev.vips, prev.vip_interface, prev.manage_vips)


def from_config(config: Config) -> Desired:
    """The kernel state the config asks for, before health, drain and quorum adjust it.

    The result is shared: callers derive modified copies, they never mutate it."""
    global _LAST, _PREV
    if _PREV is not None and _PREV[0] is config:
        return _PREV[1]
    edited = _edited(config)
    if edited is not None:
        _PREV = (config, edited)
        return edited
    services: dict[ServiceKey, DesiredService] = {}
    vips: dict[Vip, Origin] = {}
    manage = config.vip_mode != "external"
    seen: dict[int, tuple[Service, DesiredService]] = {}
    for svc in config.services:
        services[svc.key] = ds = _service(svc)
        seen[id(svc)] = (svc, ds)
        if manage:
            for addr in svc.vips:
                vips.setdefault(Vip(addr, config.vip_interface), svc.origin)
    _LAST = seen
    _PREV = (config, Desired(services, vips, config.vip_interface, manage))
    return _PREV[1]
