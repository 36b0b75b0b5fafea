"""Effective weights: health verdicts, operator drains, file switches, slow start and quorum applied to a
Desired.

Rules of residence: pure. Inputs are never mutated; changed objects are new (`dataclasses.replace`),
unchanged ones are shared. Precedence per real server, first match wins:

    drain (weight 0, kept)  >  file check (weight from the file, 0 = down)
    >  health (down: weight 0, or removed with on_failure: remove)  >  slow_start ramp  >  configured

Quorum is two steps so that both stay pure: `quorum_step(prev, ...)` decides which services are below
quorum (with hysteresis, only once their first round of checks is done) and `adjust(...)` applies that
decision: a service below quorum with a sorry_server gets it as an extra dest (weight 1) while its real
servers go to weight 0 (or are removed with on_failure: remove); a VIP is withdrawn while every service
using it is below quorum and at least one of them asks for withdraw_vip. `evaluate` does both.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, replace

from ipvsync.config.spec import Config, RealServer, Service
from ipvsync.desired import Desired, DesiredDest
from ipvsync.health.machine import RsHealth
from ipvsync.model import DestKey

RsId = tuple[str, DestKey]
MIN_REPLAN = 0.5  # seconds between slow_start re-plans at most this often


@dataclass(frozen=True)
class QuorumState:
    """Names of the services currently below quorum."""

    below: frozenset[str] = frozenset()


def ramp_weight(weight: int, start: float, duration: float, now: float) -> int:
    """Linear slow-start ramp from 1 at `start` to `weight` at `start + duration`."""
    if weight <= 0 or duration <= 0 or now >= start + duration:
        return weight
    frac = max(0.0, (now - start) / duration)
    return max(1, min(weight, math.ceil(weight * frac)))


def _on_failure(rs: RealServer | None) -> str:
    return rs.health.get("on_failure", "inhibit") if rs is not None else "inhibit"


def dest_weight(svc: Service, rs: RealServer | None, key: DestKey, configured: int,
                verdicts: Mapping[RsId, RsHealth], drains: Collection[RsId], file_weights: Mapping[RsId, int],
                now: float, ramp: bool = True) -> int | None:
    """The effective weight of one real server, or None when it is to be removed."""
    rid = (svc.name, key)
    if rid in drains:
        return 0
    fw = file_weights.get(rid)
    if fw is not None:
        return fw
    v = verdicts.get(rid)
    if v is None:
        return configured
    if not v.is_up:
        return None if _on_failure(rs) == "remove" else 0
    if ramp and v.ramp_from is not None and svc.slow_start > 0:
        return ramp_weight(configured, v.ramp_from, svc.slow_start, now)
    return configured


def healthy_weights(config: Config, verdicts: Mapping[RsId, RsHealth], drains: Collection[RsId],
                    file_weights: Mapping[RsId, int]) -> dict[str, int]:
    """Total weight of the real servers that are up, per service (drained count 0; no ramps)."""
    out = {}
    for svc in config.services:
        total = 0
        for rs in svc.real_servers:
            w = dest_weight(svc, rs, rs.key, rs.attrs.weight, verdicts, drains, file_weights, 0.0, ramp=False)
            total += w or 0
        out[svc.name] = total
    return out


def quorum_step(prev: QuorumState, config: Config, weights: Mapping[str, int],
                ready: Callable[[str], bool] | Collection[str]) -> QuorumState:
    """Enter below-quorum when weight < quorum; leave only at weight >= quorum + quorum_hysteresis.
    A service whose first round of checks is not done (`ready`) keeps its previous state."""
    is_ready = ready if callable(ready) else ready.__contains__
    below = set()
    for svc in config.services:
        if svc.quorum <= 0:
            continue
        was = svc.name in prev.below
        if not is_ready(svc.name):
            if was:
                below.add(svc.name)
            continue
        w = weights.get(svc.name, 0)
        if (was and w < svc.quorum + svc.quorum_hysteresis) or (not was and w < svc.quorum):
            below.add(svc.name)
    return QuorumState(frozenset(below))


def adjust(desired: Desired, config: Config, verdicts: Mapping[RsId, RsHealth], drains: Collection[RsId],
           file_weights: Mapping[RsId, int], now: float, quorum_state: QuorumState) -> Desired:
    """A copy of `desired` with effective weights, removals, sorry servers and withdrawn VIPs."""
    by_name = {s.name: s for s in config.services}
    services: dict = {}
    any_change = False
    for skey, ds in desired.services.items():
        svc = by_name.get(ds.name)
        if svc is None:
            services[skey] = ds
            continue
        sorry = svc.sorry_server if ds.name in quorum_state.below else None
        rs_by_key = {rs.key: rs for rs in svc.real_servers}
        dests: dict[DestKey, DesiredDest] = {}
        changed = False
        for dkey, dd in ds.dests.items():
            rs = rs_by_key.get(dkey)
            w = dest_weight(svc, rs, dkey, dd.attrs.weight, verdicts, drains, file_weights, now)
            if sorry is not None and w is not None:
                w = None if _on_failure(rs) == "remove" and (svc.name, dkey) not in drains else 0
            if w is None:
                changed = True
                continue
            if w != dd.attrs.weight:
                dd = replace(dd, attrs=replace(dd.attrs, weight=w))
                changed = True
            dests[dkey] = dd
        if sorry is not None and sorry.key not in dests:
            attrs = sorry.attrs if sorry.attrs.weight > 0 else replace(sorry.attrs, weight=1)
            dests[sorry.key] = DesiredDest(sorry.key, sorry.family, attrs, sorry.origin)
            changed = True
        if changed:
            any_change = True
            ds = replace(ds, dests=dests)
        services[skey] = ds
    vips = desired.vips
    if quorum_state.below and vips:
        withdrawn = withdrawn_vips(config, quorum_state)
        if withdrawn:
            vips = {v: o for v, o in vips.items() if v.address not in withdrawn}
    if not any_change and vips is desired.vips:
        return desired
    return replace(desired, services=services if any_change else desired.services, vips=vips)


def withdrawn_vips(config: Config, quorum_state: QuorumState) -> set[str]:
    """VIP addresses whose every service is below quorum, with withdraw_vip on at least one of them."""
    users: dict[str, list[Service]] = {}
    for svc in config.services:
        for addr in svc.vips:
            users.setdefault(addr, []).append(svc)
    return {addr for addr, svcs in users.items()
            if any(s.withdraw_vip for s in svcs) and all(s.name in quorum_state.below for s in svcs)}


def evaluate(desired: Desired, config: Config, verdicts: Mapping[RsId, RsHealth], drains: Collection[RsId],
             file_weights: Mapping[RsId, int], now: float, prev: QuorumState,
             ready: Callable[[str], bool] | Collection[str]) -> tuple[Desired, QuorumState]:
    """quorum_step then adjust: what the daemon calls on every (re)plan."""
    qs = quorum_step(prev, config, healthy_weights(config, verdicts, drains, file_weights), ready)
    return adjust(desired, config, verdicts, drains, file_weights, now, qs), qs


def next_deadline(config: Config, verdicts: Mapping[RsId, RsHealth], now: float) -> float | None:
    """The next time a slow_start ramp changes a weight (same clock as the verdicts), or None."""
    best: float | None = None
    for svc in config.services:
        d = svc.slow_start
        if d <= 0:
            continue
        for rs in svc.real_servers:
            v = verdicts.get((svc.name, rs.key))
            if v is None or not v.is_up or v.ramp_from is None:
                continue
            end = v.ramp_from + d
            w = rs.attrs.weight
            if now >= end or w <= 0:
                continue
            k = ramp_weight(w, v.ramp_from, d, now)
            t = v.ramp_from + d * k / w + 1e-3  # weight k+1 is reached just after this
            t = min(max(t, now + MIN_REPLAN), end)
            if best is None or t < best:
                best = t
    return best
