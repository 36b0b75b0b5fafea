"""Prometheus metrics (optional: needs prometheus-client), served on `metrics.listen`.

Rules of residence: reads the daemon, never changes it. Kernel counters are read at scrape time on
a private IPVS socket (the scrape runs on prometheus-client's HTTP thread, not the daemon loop).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from prometheus_client import Histogram, start_http_server
from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily

log = logging.getLogger("ipvsync.metrics")

PROBE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class DaemonCollector:
    """Builds every ipvsync_* family from the daemon's current view at scrape time."""

    def __init__(self, daemon: Any) -> None:
        self.daemon = daemon

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        # the daemon's loop may swap its config or verdicts mid-scrape: retry on a torn read
        for attempt in range(3):
            try:
                return iter(list(self._collect()))
            except RuntimeError:
                if attempt == 2:
                    raise
        return iter(())

    def _collect(self) -> Iterator[Any]:
        d = self.daemon
        cfg = d.config
        labels = ["service", "real_server"]
        up = GaugeMetricFamily("ipvsync_real_server_up", "1 when health checks say the real server is up",
                               labels=labels)
        cw = GaugeMetricFamily("ipvsync_real_server_configured_weight", "Weight in the config", labels=labels)
        ew = GaugeMetricFamily("ipvsync_real_server_effective_weight",
                               "Weight in the kernel (after health, drains, slow start)", labels=labels)
        act = GaugeMetricFamily("ipvsync_real_server_active_connections", "Active connections", labels=labels)
        ina = GaugeMetricFamily("ipvsync_real_server_inactive_connections", "Inactive connections", labels=labels)
        conns = CounterMetricFamily("ipvsync_real_server_connections", "Connections scheduled", labels=labels)
        pin = CounterMetricFamily("ipvsync_real_server_in_packets", "Packets from clients", labels=labels)
        pout = CounterMetricFamily("ipvsync_real_server_out_packets", "Packets to clients", labels=labels)
        bin_ = CounterMetricFamily("ipvsync_real_server_in_bytes", "Bytes from clients", labels=labels)
        bout = CounterMetricFamily("ipvsync_real_server_out_bytes", "Bytes to clients", labels=labels)
        drained = GaugeMetricFamily("ipvsync_real_server_drained", "1 while drained by an operator", labels=labels)
        below = GaugeMetricFamily("ipvsync_service_below_quorum", "1 while the service is below quorum",
                                  labels=["service"])

        def kernel_samples(lv: list[str], kd: Any) -> None:
            """What the kernel reports for one real server."""
            ew.add_metric(lv, kd.attrs.weight)
            for fam, value in ((act, kd.stats.active), (ina, kd.stats.inactive), (conns, kd.stats.conns),
                               (pin, kd.stats.inpkts), (pout, kd.stats.outpkts), (bin_, kd.stats.inbytes),
                               (bout, kd.stats.outbytes)):
                fam.add_metric(lv, value)

        if cfg is not None:
            try:
                from ipvsync.kernel.ipvs import IpvsSocket

                with IpvsSocket() as sock:
                    table = sock.dump()
            except OSError as exc:
                log.warning("metrics: cannot read IPVS: %s", exc)
                table = {}
            verdicts = d.health.verdicts() if d.health is not None else {}
            for svc in cfg.services:
                have = table.get(svc.key)
                below.add_metric([svc.name], 1 if (d.quorum and svc.name in d.quorum.below) else 0)
                for rs in svc.real_servers:
                    lv = [svc.name, str(rs.key)]
                    v = verdicts.get((svc.name, rs.key))
                    up.add_metric(lv, 1 if (v is None or v.is_up) else 0)
                    cw.add_metric(lv, rs.attrs.weight)
                    drained.add_metric(lv, 1 if f"{svc.name}|{rs.key}" in d.state.operator_drains else 0)
                    kd = have.dests.get(rs.key) if have else None
                    if kd is None:
                        ew.add_metric(lv, 0)
                    else:
                        kernel_samples(lv, kd)
                configured = {rs.key for rs in svc.real_servers}
                for dk, kd in (have.dests.items() if have else ()):
                    if dk not in configured:  # draining after leaving the config: still carries connections
                        kernel_samples([svc.name, str(dk)], kd)
        yield from (up, cw, ew, act, ina, conns, pin, pout, bin_, bout, drained, below)
        reloads = CounterMetricFamily("ipvsync_reloads", "Config reloads by result", labels=["result"])
        c = d.counters
        reloads.add_metric(["applied"], c["reloads_applied"])
        reloads.add_metric(["rejected"], c["reloads_rejected"])
        reloads.add_metric(["rolled_back"], c["reloads_rolled_back"])
        yield reloads
        yield CounterMetricFamily("ipvsync_drift_repairs", "Kernel objects repaired after drift",
                                  value=c["drift_repairs"])
        la = d.last_apply
        yield GaugeMetricFamily("ipvsync_last_apply_duration_seconds", "Duration of the last apply",
                                value=la.seconds if la else 0.0)
        ops = GaugeMetricFamily("ipvsync_last_apply_operations", "Operations of the last apply by kind",
                                labels=["kind"])
        if la is not None:
            kinds: dict[str, int] = {}
            for op in la.applied:
                kinds[op.kind] = kinds.get(op.kind, 0) + 1
            for k, n in sorted(kinds.items()):
                ops.add_metric([k], n)
        yield ops
        yield GaugeMetricFamily("ipvsync_services", "Services in the config",
                                value=len(cfg.services) if cfg else 0)
        yield GaugeMetricFamily("ipvsync_rollback_failed", "1 while a rollback failure is outstanding",
                                value=1 if d.state.failure else 0)


def start_metrics(daemon: Any, listen: str) -> CollectorRegistry:
    """Serve /metrics on ADDRESS:PORT; hooks the probe latency histogram into the health monitor."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    registry = CollectorRegistry()
    registry.register(DaemonCollector(daemon))
    hist = Histogram("ipvsync_probe_duration_seconds", "Health probe latency", ["check"], registry=registry,
                     buckets=PROBE_BUCKETS)
    if daemon.health is not None:
        prev = getattr(daemon.health, "on_probe", None)

        def on_probe(spec: Any, result: Any) -> None:
            kind = getattr(spec, "kind", None) or getattr(spec, "type", "unknown")
            hist.labels(str(kind)).observe(max(0.0, float(getattr(result, "latency", 0.0) or 0.0)))
            if prev is not None:
                prev(spec, result)

        daemon.health.on_probe = on_probe
    start_http_server(int(port), addr=host, registry=registry)
    log.info("metrics on http://%s:%s/metrics", host, port)
    return registry
