"""The desired kernel state: what the planner compares with what the kernel has.

Rules of residence: pure. `from_config` turns a Config into kernel-shaped desired objects; the
health, drain and quorum layers return modified copies (weights, removed servers, sorry servers,
withdrawn VIPs) with `dataclasses.replace`; the planner only ever sees a `Desired`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ipvsync.config.spec import Config, Origin, Service
from ipvsync.model import DestAttrs, DestKey, ServiceAttrs, ServiceKey, Vip


@dataclass(frozen=True)
class DesiredDest:
    key: DestKey
    family: int
    attrs: DestAttrs
    origin: Origin


@dataclass(frozen=True)
class DesiredService:
    name: str
    key: ServiceKey
    attrs: ServiceAttrs
    dests: dict[DestKey, DesiredDest]
    origin: Origin
    vips: tuple[str, ...] = ()


@dataclass(frozen=True)
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


def from_config(config: Config) -> Desired:
    """The kernel state the config asks for, before health, drain and quorum adjust it.

    The result is shared: callers derive modified copies, they never mutate it."""
    global _LAST
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
    return Desired(services, vips, config.vip_interface, manage)
