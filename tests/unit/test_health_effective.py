"""effective.py: precedence of weights, on_failure remove, slow start, quorum with sorry server,
hysteresis and VIP withdrawal. Pure: no clocks, no I/O."""

from __future__ import annotations

import copy
from typing import Any

from ipvsync.config.spec import Config, Origin, RealServer, Service
from ipvsync.desired import from_config
from ipvsync.health.effective import (
    QuorumState,
    adjust,
    evaluate,
    healthy_weights,
    next_deadline,
    quorum_step,
    ramp_weight,
    withdrawn_vips,
)
from ipvsync.health.machine import initial, step
from ipvsync.model import AF_INET, DestAttrs, DestKey, ServiceAttrs, ServiceKey, Vip

ORIGIN = Origin("t.yaml", 1, "services")
A, B, C = DestKey("10.0.0.1", 80), DestKey("10.0.0.2", 80), DestKey("10.0.0.3", 80)
SORRY = DestKey("10.9.9.9", 80)


def svc(name: str, vip: str, weights: dict[DestKey, int], health: dict[str, Any] | None = None,
        **kw: Any) -> Service:
    h = health or {"type": "tcp"}
    reals = tuple(RealServer(k, AF_INET, DestAttrs(weight=w), ORIGIN, h) for k, w in weights.items())
    return Service(name, ServiceKey(AF_INET, 6, vip, 80), ServiceAttrs(), reals, ORIGIN, (vip,), **kw)


def sorry() -> RealServer:
    return RealServer(SORRY, AF_INET, DestAttrs(weight=1), ORIGIN, {"type": "none"})


def up(t: float = 0.0):
    return initial(True, t)


def down(t: float = 0.0):
    return initial(False, t)


def recovered(at: float):
    """Up because probes brought it up at `at` (slow start applies)."""
    h, tr = step(initial(False, 0.0, rise=1), True, "ok", at)
    assert tr is not None
    return h


def weights(d, name_key: ServiceKey) -> dict[DestKey, int]:
    return {k: dd.attrs.weight for k, dd in d.services[name_key].dests.items()}


def test_precedence_drain_file_health_slowstart_configured():
    s = svc("web", "192.0.2.1", {A: 10, B: 10, C: 10}, slow_start=100.0)
    cfg = Config("t.yaml", (s,))
    d = from_config(cfg)
    v = {("web", A): down(), ("web", B): recovered(0.0), ("web", C): recovered(0.0)}
    drains = {("web", C)}
    files = {("web", A): 7, ("web", C): 5}
    out = adjust(d, cfg, v, drains, files, 25.0, QuorumState())
    # A: file (7) beats health down; B: slow start 25% of 10; C: drain beats file
    assert weights(out, s.key) == {A: 7, B: 3, C: 0}
    # without the file the health verdict applies; without drain the file applies
    out = adjust(d, cfg, v, set(), {("web", C): 5}, 25.0, QuorumState())
    assert weights(out, s.key) == {A: 0, B: 3, C: 5}
    # after the ramp the configured weight
    out = adjust(d, cfg, v, set(), {}, 100.0, QuorumState())
    assert weights(out, s.key) == {A: 0, B: 10, C: 10}


def test_serving_at_start_is_not_ramped_and_missing_verdict_is_configured():
    s = svc("web", "192.0.2.1", {A: 10, B: 4}, slow_start=100.0)
    cfg = Config("t.yaml", (s,))
    out = adjust(from_config(cfg), cfg, {("web", A): up()}, set(), {}, 1.0, QuorumState())
    assert weights(out, s.key) == {A: 10, B: 4}


def test_on_failure_remove_and_inputs_untouched():
    s = svc("web", "192.0.2.1", {A: 2, B: 3}, {"type": "tcp", "on_failure": "remove"})
    cfg = Config("t.yaml", (s,))
    d = from_config(cfg)
    before = copy.deepcopy(d)
    out = adjust(d, cfg, {("web", A): down(), ("web", B): up()}, set(), {}, 0.0, QuorumState())
    assert weights(out, s.key) == {B: 3}
    assert d == before and weights(d, s.key) == {A: 2, B: 3}
    # a drained server is kept (weight 0) even with remove
    out = adjust(d, cfg, {("web", A): down()}, {("web", A)}, {}, 0.0, QuorumState())
    assert weights(out, s.key) == {A: 0, B: 3}


def test_unchanged_desired_is_returned_as_is():
    s = svc("web", "192.0.2.1", {A: 2})
    cfg = Config("t.yaml", (s,))
    d = from_config(cfg)
    assert adjust(d, cfg, {("web", A): up()}, set(), {}, 0.0, QuorumState()) is d


def test_ramp_weight_and_next_deadline():
    assert [ramp_weight(10, 0.0, 100.0, t) for t in (0.0, 0.1, 10.0, 10.1, 55.0, 99.9, 100.0, 500.0)] == \
        [1, 1, 1, 2, 6, 10, 10, 10]
    assert ramp_weight(0, 0.0, 100.0, 5.0) == 0
    s = svc("web", "192.0.2.1", {A: 10, B: 10}, slow_start=100.0)
    cfg = Config("t.yaml", (s,))
    v = {("web", A): recovered(0.0), ("web", B): up()}
    dl = next_deadline(cfg, v, 12.0)  # weight 2 now; 3 just after t=20
    assert dl is not None and 20.0 < dl < 20.01
    assert ramp_weight(10, 0.0, 100.0, dl) == 3
    assert next_deadline(cfg, v, 100.0) is None
    assert next_deadline(cfg, {("web", A): up()}, 12.0) is None
    # many small steps: re-plans are rate-limited, the end is exact
    s2 = svc("web", "192.0.2.1", {A: 1000}, slow_start=10.0)
    cfg2 = Config("t.yaml", (s2,))
    assert next_deadline(cfg2, {("web", A): recovered(0.0)}, 1.0) == 1.5
    assert next_deadline(cfg2, {("web", A): recovered(0.0)}, 9.8) == 10.0


def quorum_cfg(**kw: Any) -> tuple[Service, Config]:
    s = svc("web", "192.0.2.1", {A: 1, B: 1, C: 1}, quorum=2, quorum_hysteresis=1, sorry_server=sorry(), **kw)
    return s, Config("t.yaml", (s,))


def test_quorum_needs_first_round_and_has_hysteresis():
    s, cfg = quorum_cfg()
    ready = {"web"}
    q0 = QuorumState()
    v1 = {("web", A): up(), ("web", B): down(), ("web", C): down()}
    w1 = healthy_weights(cfg, v1, set(), {})
    assert w1 == {"web": 1}
    assert quorum_step(q0, cfg, w1, set()) == q0  # first round not done: not evaluated
    q1 = quorum_step(q0, cfg, w1, ready)
    assert q1.below == {"web"}
    v2 = {**v1, ("web", B): up()}  # weight 2 = quorum, but hysteresis needs 3
    q2 = quorum_step(q1, cfg, healthy_weights(cfg, v2, set(), {}), ready)
    assert q2.below == {"web"}
    v3 = {**v2, ("web", C): up()}
    q3 = quorum_step(q2, cfg, healthy_weights(cfg, v3, set(), {}), ready.__contains__)
    assert q3.below == frozenset()
    q4 = quorum_step(q3, cfg, healthy_weights(cfg, v2, set(), {}), ready)  # 2 >= quorum: stays up
    assert q4.below == frozenset()
    # drained servers and file weights count as what they are
    assert healthy_weights(cfg, v3, {("web", A)}, {("web", B): 5}) == {"web": 6}


def test_below_quorum_sorry_server_takes_traffic():
    s, cfg = quorum_cfg()
    d = from_config(cfg)
    v = {("web", A): up(), ("web", B): down(), ("web", C): down()}
    out, qs = evaluate(d, cfg, v, set(), {}, 0.0, QuorumState(), {"web"})
    assert qs.below == {"web"}
    assert weights(out, s.key) == {A: 0, B: 0, C: 0, SORRY: 1}
    assert out.vips == d.vips  # no withdraw_vip
    # before the first round: no sorry server
    out, qs = evaluate(d, cfg, v, set(), {}, 0.0, QuorumState(), set())
    assert qs.below == frozenset() and weights(out, s.key) == {A: 1, B: 0, C: 0}


def test_below_quorum_with_remove_drops_real_servers():
    s, cfg = quorum_cfg()
    s = svc("web", "192.0.2.1", {A: 1, B: 1}, {"type": "tcp", "on_failure": "remove"}, quorum=2,
            sorry_server=sorry())
    cfg = Config("t.yaml", (s,))
    out = adjust(from_config(cfg), cfg, {("web", A): up(), ("web", B): down()}, set(), {}, 0.0,
                 QuorumState(frozenset({"web"})))
    assert weights(out, s.key) == {SORRY: 1}


def test_below_quorum_without_sorry_keeps_live_servers():
    s = svc("web", "192.0.2.1", {A: 1, B: 1}, quorum=2)
    cfg = Config("t.yaml", (s,))
    out = adjust(from_config(cfg), cfg, {("web", A): up(), ("web", B): down()}, set(), {}, 0.0,
                 QuorumState(frozenset({"web"})))
    assert weights(out, s.key) == {A: 1, B: 0}


def test_withdraw_vip_only_when_every_user_is_below_quorum():
    vip = "192.0.2.1"
    s1 = svc("web", vip, {A: 1}, quorum=1, withdraw_vip=True)
    rs_b = RealServer(B, AF_INET, DestAttrs(weight=1), ORIGIN, {"type": "tcp"})
    key2 = ServiceKey(AF_INET, 6, vip, 443)
    s2 = Service("web-tls", key2, ServiceAttrs(), (rs_b,), ORIGIN, (vip,), quorum=1)
    other = svc("api", "192.0.2.2", {C: 1}, quorum=1, withdraw_vip=True)
    cfg = Config("t.yaml", (s1, s2, other))
    d = from_config(cfg)
    assert set(d.vips) == {Vip(vip, "ipvsync0"), Vip("192.0.2.2", "ipvsync0")}
    ready = {"web", "web-tls", "api"}
    v = {("web", A): down(), ("web-tls", B): up(), ("api", C): up()}
    out, qs = evaluate(d, cfg, v, set(), {}, 0.0, QuorumState(), ready)
    assert qs.below == {"web"} and set(out.vips) == set(d.vips)  # web-tls still serves the VIP
    v[("web-tls", B)] = down()
    out, qs = evaluate(d, cfg, v, set(), {}, 0.0, qs, ready)
    assert qs.below == {"web", "web-tls"}
    assert set(out.vips) == {Vip("192.0.2.2", "ipvsync0")}
    assert withdrawn_vips(cfg, qs) == {vip}
    # one service back above quorum: the VIP comes back
    v[("web", A)] = up()
    out, qs = evaluate(d, cfg, v, set(), {}, 0.0, qs, ready)
    assert qs.below == {"web-tls"} and set(out.vips) == set(d.vips)


def test_withdraw_vip_hysteresis():
    s = svc("web", "192.0.2.1", {A: 1, B: 1, C: 1}, quorum=1, quorum_hysteresis=1, withdraw_vip=True)
    cfg = Config("t.yaml", (s,))
    d = from_config(cfg)
    ready = {"web"}
    allv = {("web", A): down(), ("web", B): down(), ("web", C): down()}
    out, qs = evaluate(d, cfg, allv, set(), {}, 0.0, QuorumState(), ready)
    assert out.vips == {}
    one = {**allv, ("web", A): up()}
    out, qs = evaluate(d, cfg, one, set(), {}, 0.0, qs, ready)
    assert out.vips == {}  # weight 1 = quorum, hysteresis asks for 2
    two = {**one, ("web", B): up()}
    out, qs = evaluate(d, cfg, two, set(), {}, 0.0, qs, ready)
    assert set(out.vips) == {Vip("192.0.2.1", "ipvsync0")}
