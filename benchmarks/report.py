#!/usr/bin/env python3
"""Render the result JSON of run_all.sh (OUTDIR/{apply,daemon,health}/*.json) as Markdown tables."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def load(base: Path, name: str) -> dict | None:
    p = base / name / f"{name}.json"
    return json.loads(p.read_text()) if p.exists() else None


def host(base: Path, name: str) -> str:
    p = base / name / "host.json"
    if not p.exists():
        return ""
    h = json.loads(p.read_text())
    la = lambda v: "/".join(f"{x:.1f}" for x in v)  # noqa: E731
    return (f"host: {h['nproc']} CPUs, load average {la(h['loadavg_before'])} before, "
            f"{la(h['loadavg_after'])} after; UML ran {h['uml_seconds']} s")


def env_line(d: dict) -> str:
    e = d["env"]
    return (f"{e['date']} · UML kernel {e['kernel']} · Python {e['python']} · ipvsync {e['ipvsync']} · "
            f"{e['keepalived']} · {e['ipvsadm']}")


def ok(flag: bool) -> str:
    return "met" if flag else "**missed**"


def apply_table(d: dict, base: Path) -> list[str]:
    m, r, runs = d["median"], d["ratios"], d["runs"]
    fixed, ka = m["ipvsync_one_plan"], m["keepalived_load"]
    rows = [
        ("python3 -c pass (interpreter start)", "python_startup"),
        ("ipvsync plan, one service (fixed cost)", "ipvsync_one_plan"),
        ("ipvsync apply, one service, from empty", "ipvsync_one_apply"),
        ("keepalived -C: exec until the table is full", "keepalived_load"),
        ("ipvsadm -R", "ipvsadm_restore"),
        ("ipvsync apply, vip_mode external (IPVS only)", "ipvsync_apply_external"),
        ("ipvsync apply, vip_mode managed (+1000 VIPs on a dummy)", "ipvsync_apply_managed"),
        ("ipvsync plan, no-op on the full table", "ipvsync_noop_plan"),
    ]
    out = [f"{d['services']} services × {d['real_servers_per_service']} real servers, from an empty table; "
           f"median of {d['reps']} runs, each in a fresh namespace. {env_line(d)}. {host(base, 'apply')}.", "",
           "| what | median s | runs (s) | minus fixed cost, s | ÷ keepalived |", "|---|---:|---|---:|---:|"]
    for label, key in rows:
        runs_s = ", ".join(f"{x:.2f}" for x in runs[key])
        minus = m[key] - fixed if key.startswith("ipvsync") and key not in ("ipvsync_one_plan",) else None
        ratio = (minus if minus is not None else m[key]) / ka
        out.append(f"| {label} | {m[key]:.2f} | {runs_s} | {'' if minus is None else f'{minus:.2f}'} | "
                   f"{ratio:.2f} |")
    t = r["apply_external_minus_fixed_over_keepalived"]
    tm = r["apply_managed_minus_fixed_over_keepalived"]
    out += ["", f"Target (ipvsync apply − fixed cost ≤ 0.3 × keepalived): IPVS only {t:.2f}× — {ok(t <= 0.3)}; "
                f"with VIP binding {tm:.2f}× — {ok(tm <= 0.3)}."]
    if d.get("profile_split"):
        s = d["profile_split"]
        if "error" not in s:
            out += ["", "Phases of one managed apply in one interpreter (s): " + ", ".join(
                f"{k} {v:.2f}" for k, v in s.items() if isinstance(v, float)) + f"; {s.get('ops')} operations."]
    return out


def daemon_table(d: dict, base: Path) -> list[str]:
    one, split, ka = d["ipvsync_one_file"], d["ipvsync_split"], d["keepalived"]
    f = lambda xs: ", ".join(f"{x:.2f}" for x in xs)  # noqa: E731
    out = [f"{d['services']} services × {d['real_servers_per_service']} real servers; {d['edits']} one-weight "
           f"edits each, timed from the write to the kernel showing the weight (netlink poll every "
           f"{d['poll_ms']:g} ms). {env_line(d)}. {host(base, 'daemon')}.", "",
           "| | edit → kernel, median s | all edits (s) | ÷ keepalived | RSS MB | idle CPU s / 60 s |",
           "|---|---:|---|---:|---:|---:|"]
    kam = ka["edit_latency_median_s"]
    out.append(f"| ipvsync run, one {d['services']}-service file (inotify) | {one['edit_latency_median_s']:.2f} | "
               f"{f(one['edit_latency_s'])} | {one['edit_latency_median_s'] / kam:.1f} | "
               f"{one.get('rss_mb_after_idle', one['rss_mb_after_edits']):.1f} | "
               f"{one.get('idle_cpu_s', float('nan')):.2f} |")
    out.append(f"| ipvsync run, conf.d split, edit in a 10-service file | {split['edit_latency_median_s']:.2f} | "
               f"{f(split['edit_latency_s'])} | {split['edit_latency_median_s'] / kam:.1f} | "
               f"{split['rss_mb_after_edits']:.1f} | |")
    out.append(f"| keepalived -C, SIGHUP after the write | {kam:.2f} | {f(ka['edit_latency_s'])} | 1 | "
               f"{ka['rss_mb_total']:.1f} ({ka['pids']} processes) | {ka.get('idle_cpu_s', float('nan')):.2f} |")
    r1, r2 = d["ratios"]["one_file_over_keepalived"], d["ratios"]["split_over_keepalived"]
    rss = one.get("rss_mb_after_idle", one["rss_mb_after_edits"])
    out += ["", f"Targets: edit latency ≤ 0.5 × keepalived: one file {r1:.1f}× — {ok(r1 <= 0.5)}, split {r2:.1f}× — "
                f"{ok(r2 <= 0.5)}; RSS ≤ 60 MB: {rss:.1f} MB — {ok(rss <= 60)}; idle CPU ≈ 0: "
                f"{one.get('idle_cpu_s', float('nan')):.2f} s over {one.get('idle_seconds', 60):g} s. "
                f"Daemon start to ready: {one['start_to_ready_s']:.1f} s (one file), {split['start_to_ready_s']:.1f} s "
                f"(split); keepalived start to full table {ka['start_to_full_s']:.1f} s."]
    return out


def health_table(d: dict, base: Path) -> list[str]:
    out = [f"{d['services']} services × {d['real_servers_per_service']} real servers, all backends up (AnyIP); "
           f"CPU over {d['window_s']:g} s after warm-up. {env_line(d)}. {host(base, 'health')}.", "",
           "| interval | tool | CPU s / window s | ipvsync ÷ keepalived | down at start / end of window | warm-up s "
           "| RSS MB |", "|---|---|---:|---:|---|---:|---:|"]
    for _key, r in d["runs"].items():
        ka = r["keepalived"].get("cpu_share", r["keepalived"]["cpu_s"])
        for tool in [k for k in r if k.startswith("ipvsync") and isinstance(r[k], dict)] + ["keepalived"]:
            t = r[tool]
            share = t.get("cpu_share", t["cpu_s"])
            ratio = f"{share / max(ka, 1e-9):.2f}" if tool != "keepalived" else ""
            name = f"ipvsync, initial: {t['initial']}" if "initial" in t else tool
            out.append(f"| {r['interval_s']:g} s (timeout {r['timeout_s']:g} s) | {name} | "
                       f"{t['cpu_s']:.1f} / {t['window_s']:.0f} | "
                       f"{ratio} | {t['down_at_start']} / {t['down_at_end']} | {t['warmup_s']:.0f} | "
                       f"{t['rss_mb']:.1f} |")
    return out


def main() -> int:
    base = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    lines: list[str] = []
    for name, fn, title in (("apply", apply_table, "Loading 1000 × 10 from empty (issue 2)"),
                            ("daemon", daemon_table, "Daemon reload latency, RSS, idle CPU (issue 4)"),
                            ("health", health_table, "TCP health checks (issue 5)")):
        d = load(base, name)
        lines += [f"## {title}", ""]
        lines += fn(d, base) if d else ["(no results)"]
        lines.append("")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
