"""Removal drains: what leaves the config goes to weight 0 first and is deleted once idle.

Rules of residence: pure. Given the desired state, what the config still declares, the kernel's
view (with connection counts) and the drain records, returns the desired state with draining
objects kept at weight 0, plus the updated records. A real server leaving the config is deleted
when its active+inactive connections reach 0 or its deadline passes; UDP and SCTP go at once; a
whole service drains the same way and keeps its VIP until then. Re-adding restores in place.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ipvsync.config.spec import Origin
from ipvsync.desired import Desired, DesiredDest, DesiredService
from ipvsync.model import PROTOCOLS, ObservedService, ServiceKey, Vip
from ipvsync.plan import Observed, Owned
from ipvsync.plan import _unchanged as unchanged

Records = dict[str, dict[str, Any]]
_INSTANT = {PROTOCOLS["udp"], PROTOCOLS["sctp"]}
DRAIN_ORIGIN = Origin("", 0, "draining")


def _drains(key: ServiceKey) -> bool:
    return key.protocol not in _INSTANT


def _conns(svc: ObservedService) -> int:
    return sum(d.stats.active + d.stats.inactive for d in svc.dests.values())


def apply_drains(desired: Desired, declared: Desired, observed: Observed, owned: Owned, records: Records,
                 now: float, timeout_for: dict[ServiceKey, float], default_timeout: float = 300.0,
                 ) -> tuple[Desired, Records, list[str]]:
    """Keep draining objects in `desired` at weight 0. `declared` is the config before health.

    Returns (desired, new records, events). Events are human lines ("drained …", "drain timeout …").
    """
    new: Records = {}
    events: list[str] = []
    services = dict(desired.services)
    vips = dict(desired.vips)
    changed = False
    for key, have in observed.services.items():
        want = services.get(key)
        if want is not None:
            if unchanged(want, have):
                continue  # exactly as desired (the planner's memo knows): no real server to drain
            decl = declared.services.get(key)
            keep: dict = {}
            for dkey, hd in have.dests.items():
                if dkey in want.dests or (decl is not None and dkey in decl.dests):
                    continue  # still declared (health may have removed it: that is not a drain)
                rid = f"{key}|{dkey}"
                if not _drains(key):
                    continue
                rec = records.get(rid) or {"since": now, "deadline": now + timeout_for.get(key, default_timeout)}
                conns = hd.stats.active + hd.stats.inactive
                if conns == 0:
                    events.append(f"real server {dkey} of {key} drained (no connections left); deleting")
                    continue
                if now >= rec["deadline"]:
                    events.append(f"real server {dkey} of {key} drain timeout with {conns} connections; deleting")
                    continue
                if rid not in records:
                    events.append(f"real server {dkey} left the config: weight 0, draining {conns} connections")
                new[rid] = rec
                keep[dkey] = DesiredDest(dkey, hd.family, replace(hd.attrs.normalised(), weight=0), DRAIN_ORIGIN)
            if keep:
                services[key] = replace(want, dests={**want.dests, **keep})
                changed = True
            continue
        if key not in owned.services or not _drains(key):
            continue
        rid = str(key)
        rec = records.get(rid) or {"since": now, "deadline": now + timeout_for.get(key, default_timeout),
                                   "vips": sorted(v.address for v in owned.vips
                                                  if v in observed.addresses and v.address == key.address)}
        conns = _conns(have)
        if conns == 0:
            if rid in records:
                events.append(f"service {key} drained (no connections left); deleting")
            continue
        if now >= rec["deadline"]:
            events.append(f"service {key} drain timeout with {conns} connections; deleting")
            continue
        if rid not in records:
            events.append(f"service {key} left the config: weight 0, draining {conns} connections")
        new[rid] = rec
        dests = {dk: DesiredDest(dk, d.family, replace(d.attrs.normalised(), weight=0), DRAIN_ORIGIN)
                 for dk, d in have.dests.items()}
        services[key] = DesiredService(f"(draining) {key}", key, have.attrs.normalised(key.family), dests,
                                       DRAIN_ORIGIN, ())
        for addr in rec.get("vips", []):
            vips.setdefault(Vip(addr, desired.vip_interface), DRAIN_ORIGIN)
        changed = True
    if not changed:
        return desired, new, events
    return replace(desired, services=services, vips=vips), new, events
