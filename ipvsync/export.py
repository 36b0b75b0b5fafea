"""The live kernel as a valid ipvsync YAML document (`ipvsync export`).

Rules of residence: pure: observed services in, YAML text out. Names follow ServiceKey.default_name
(tcp-192.0.2.10-80, udp-2001-db8--10-53, fwmark-10-inet6) so an export is stable across runs.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import yaml

from ipvsync.model import (
    AF_INET6,
    FAMILY_NAMES,
    FORWARD_NAMES,
    FWD_TUNNEL,
    PROTOCOL_NAMES,
    SVC_F_ONEPACKET,
    SVC_F_PERSISTENT,
    SVC_F_SCHED1,
    SVC_F_SCHED2,
    TUN_F_CSUM,
    TUN_F_NOCSUM,
    TUN_F_REMCSUM,
    TUN_TYPE_NAMES,
    ObservedService,
    ServiceKey,
)


def service_doc(svc: ObservedService) -> dict[str, Any]:
    key, a = svc.key, svc.attrs.normalised(svc.key.family)
    out: dict[str, Any] = {}
    if key.fwmark:
        out["fwmark"] = key.fwmark
        out["family"] = FAMILY_NAMES[key.family]
    else:
        out["vip"] = key.address
        out["port"] = key.port
        out["protocol"] = PROTOCOL_NAMES.get(key.protocol, "tcp")
    out["scheduler"] = a.scheduler
    flags = []
    if a.flags & SVC_F_SCHED1:
        flags.append(f"{a.scheduler}-fallback")
    if a.flags & SVC_F_SCHED2:
        flags.append(f"{a.scheduler}-port")
    if flags and a.scheduler in ("sh", "mh"):
        out["scheduler_flags"] = flags
    if a.flags & SVC_F_ONEPACKET:
        out["one_packet"] = True
    if a.flags & SVC_F_PERSISTENT:
        pers: dict[str, Any] = {"timeout": a.timeout}
        full = 128 if key.family == AF_INET6 else 32
        if a.netmask != full:
            pers["netmask"] = (f"/{a.netmask}" if key.family == AF_INET6
                               else str(ipaddress.IPv4Network(f"0.0.0.0/{a.netmask}").netmask))
        if a.pe_name:
            pers["engine"] = a.pe_name
        out["persistence"] = pers
    dests = [svc.dests[k] for k in sorted(svc.dests)]
    forwards = {d.attrs.forward for d in dests}
    common_fwd = forwards.pop() if len(forwards) == 1 else None
    if common_fwd is not None and common_fwd in FORWARD_NAMES and common_fwd != 0:
        out["forward"] = FORWARD_NAMES[common_fwd]
    tun = next((d.attrs for d in dests if d.attrs.forward == FWD_TUNNEL), None)
    if tun is not None and (tun.tun_type or tun.tun_port or tun.tun_flags):
        t: dict[str, Any] = {"type": TUN_TYPE_NAMES.get(tun.tun_type, "ipip")}
        if tun.tun_port:
            t["port"] = tun.tun_port
        cs = {TUN_F_NOCSUM: "none", TUN_F_CSUM: "checksum", TUN_F_REMCSUM: "remote"}.get(tun.tun_flags)
        if cs and t["type"] != "ipip":
            t["checksum"] = cs
        out["tunnel"] = t
    rss: list[Any] = []
    for d in dests:
        rs: dict[str, Any] = {"address": d.key.address}
        if d.key.port and d.key.port != key.port:
            rs["port"] = d.key.port
        rs["weight"] = d.attrs.weight
        if common_fwd is None and d.attrs.forward in FORWARD_NAMES:
            rs["forward"] = FORWARD_NAMES[d.attrs.forward]
        if d.attrs.u_threshold:
            rs["upper_threshold"] = d.attrs.u_threshold
        if d.attrs.l_threshold:
            rs["lower_threshold"] = d.attrs.l_threshold
        rss.append(rs)
    out["real_servers"] = rss
    return out


def export_yaml(services: dict[ServiceKey, ObservedService], vip_interface: str = "ipvsync0") -> str:
    doc: dict[str, Any] = {"version": 1, "vip_interface": vip_interface,
                           "services": {k.default_name: service_doc(services[k]) for k in sorted(services)}}
    header = "# Exported from the live kernel by `ipvsync export`.\n"
    return header + yaml.safe_dump(doc, sort_keys=False, default_flow_style=False, width=110)
