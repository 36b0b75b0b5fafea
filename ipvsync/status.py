"""`ipvsync status`: the daemon's view as a stable, versioned JSON document, and its 80-column text.

Rules of residence: `build_status` reads a running Daemon (config, health, drains, kernel counters)
and returns plain data; `render` turns that data into text. JSON format version STATUS_VERSION;
fields are only ever added within a version (docs/status-json.md).
"""

from __future__ import annotations

import os
import time
from typing import Any

from ipvsync.model import FORWARD_NAMES, PROTOCOL_NAMES, DestStats

STATUS_VERSION = 1


def _since(t: float | None) -> str:
    if not t:
        return ""
    d = max(0, int(time.time() - t))
    if d < 120:
        return f"{d}s"
    if d < 7200:
        return f"{d // 60}m"
    if d < 172800:
        return f"{d // 3600}h"
    return f"{d // 86400}d"


def _kernel_fields(kd: Any) -> dict[str, int]:
    """Connection and traffic counters of one real server as the kernel reports them (0 if absent)."""
    st = kd.stats if kd is not None else DestStats()
    return {"active_connections": st.active, "inactive_connections": st.inactive,
            "connections_per_second": st.cps, "in_bytes_per_second": st.inbps,
            "out_bytes_per_second": st.outbps, "connections": st.conns, "in_packets": st.inpkts,
            "out_packets": st.outpkts, "in_bytes": st.inbytes, "out_bytes": st.outbytes}


def build_status(daemon: Any, only: str | None = None) -> dict[str, Any]:
    cfg = daemon.config
    observed = daemon.observe(cfg)
    desired, _ = daemon.desired_for(cfg, observed, time.monotonic(), commit=False)
    health = daemon.health.status() if daemon.health is not None else {}
    hsvc = health.get("services", health) if isinstance(health, dict) else {}
    services = []
    for svc in cfg.services:
        if only and svc.name != only:
            continue
        have = observed.services.get(svc.key)
        want = desired.services.get(svc.key)
        rss = []
        for rs in svc.real_servers:
            kd = have.dests.get(rs.key) if have else None
            wd = want.dests.get(rs.key) if want else None
            h = ((hsvc.get(svc.name) or {}).get("real_servers") or {}).get(str(rs.key), {})
            op = daemon.state.operator_drains.get(f"{svc.name}|{rs.key}")
            if op is not None:
                state = "drained-by-operator"
            elif kd is None and wd is None:
                state = "down"
            else:
                state = h.get("state", "up") if h else "up"
                if state == "up" and h and not h.get("up", True):
                    state = "down"
            rss.append({
                "address": rs.key.address, "port": rs.key.port, "real_server": str(rs.key),
                "forward": FORWARD_NAMES.get(rs.attrs.forward, str(rs.attrs.forward)),
                "configured_weight": rs.attrs.weight,
                "effective_weight": wd.attrs.weight if wd is not None else None,
                "kernel_weight": kd.attrs.weight if kd is not None else None,
                "health": state, "check": h.get("check", rs.health.get("type", "none")),
                "since": h.get("since") if h else None, "last_failure": h.get("last_reason", "") if h else "",
                "flapping": bool(h.get("flapping")) if h else False,
                "drained_by": op, **_kernel_fields(kd),
            })
        # real servers draining after leaving the config
        if have is not None:
            configured = {rs.key for rs in svc.real_servers}
            for dk, d in sorted(have.dests.items()):
                if dk not in configured:
                    rss.append({"address": dk.address, "port": dk.port, "real_server": str(dk),
                                "forward": FORWARD_NAMES.get(d.attrs.forward, ""), "configured_weight": None,
                                "effective_weight": 0, "kernel_weight": d.attrs.weight, "health": "draining",
                                "check": "none", "since": None, "last_failure": "", "flapping": False,
                                "drained_by": None, **_kernel_fields(d)})
        services.append({
            "name": svc.name, "key": str(svc.key), "vip": svc.key.address or None, "port": svc.key.port or None,
            "protocol": PROTOCOL_NAMES.get(svc.key.protocol) if not svc.key.fwmark else None,
            "fwmark": svc.key.fwmark or None, "vips": list(svc.vips), "scheduler": svc.attrs.scheduler,
            "in_kernel": have is not None,
            "below_quorum": bool(daemon.quorum and svc.name in daemon.quorum.below),
            "real_servers": rss,
        })
    last = daemon.last_reload.to_json() if daemon.last_reload else None
    return {
        "version": STATUS_VERSION,
        "daemon": {"pid": os.getpid(), "config_file": daemon.config_path, "status": daemon.status_line(),
                   "rollback_failure": daemon.state.failure},
        "last_reload": last,
        "services": services,
    }


def _num(value: int, width: int) -> str:
    """`value` in at most `width` characters: 1234567 -> 1M when it does not fit."""
    text = str(value)
    if len(text) <= width:
        return text
    for div, suffix in ((10**3, "k"), (10**6, "M"), (10**9, "G"), (10**12, "T"), (10**15, "P")):
        short = f"{value // div}{suffix}"
        if len(short) <= width:
            return short
    return text[:width]


def render(doc: dict[str, Any], color: bool = False, width: int = 80) -> str:
    """Human text, at most `width` (>= 80) columns; ANSI colour only when `color`."""
    def c(text: str, code: str) -> str:
        return f"\033[{code}m{text}\033[0m" if color else text

    colors = {"up": "32", "down": "31", "rising": "33", "falling": "33", "draining": "36",
              "drained-by-operator": "36"}
    # 2 + 23 + 1 + 9 + 1 + 20 + 5 + 1 + 6 + 1 + 6 + 1 + 4 = 80 columns
    out = []
    d = doc.get("daemon", {})
    out.append(f"ipvsync: {d.get('status', '')}"[:width])
    lr = doc.get("last_reload")
    if lr:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(lr["time"]))
        out.append(f"last reload: {when} {lr['result']}: {lr['message']}"[:width])
        if lr.get("result") != "applied":
            for e in lr.get("errors", [])[:3]:
                out.append(f"  {e}"[:width])
    for s in doc.get("services", []):
        head = f"{s['name']}  {s['key']}  {s['scheduler']}"
        if s.get("below_quorum"):
            head += "  BELOW QUORUM"
        if not s.get("in_kernel"):
            head += "  (not in kernel)"
        out.append("")
        out.append(head[:width])
        out.append(f"  {'REAL SERVER':<23} {'WEIGHT':>9} {'HEALTH':<20}{'SINCE':>5} {'ACT':>6} {'INACT':>6} "
                   f"{'CPS':>4}")
        for r in s["real_servers"]:
            cw = "-" if r["configured_weight"] is None else str(r["configured_weight"])
            ew = "-" if r["effective_weight"] is None else str(r["effective_weight"])
            w = f"{ew}/{cw}"
            if len(w) > 9:
                w = f"{_num(int(ew), 4) if ew != '-' else ew}/{_num(int(cw), 4) if cw != '-' else cw}"
            h = r["health"] + ("!" if r.get("flapping") else "")
            hs = f"{h:<20}"
            name = r["real_server"]
            if len(name) > 23:  # a long IPv6 address: on its own line, the numbers below it
                out.append(f"  {name}"[:width])
                name = ""
            line = (f"  {name:<23} {w:>9} {c(hs, colors.get(r['health'], '0'))}"
                    f"{_since(r.get('since')):>5} {_num(r['active_connections'], 6):>6} "
                    f"{_num(r['inactive_connections'], 6):>6} {_num(r['connections_per_second'], 4):>4}")
            out.append(line)
            if r.get("last_failure") and r["health"] != "up":
                out.append(f"      last failure: {r['last_failure']}"[:width])
    return "\n".join(out)
