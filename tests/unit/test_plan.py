"""The planner, pure: fake Observed/Owned in, ordered operations out (no kernel)."""

from __future__ import annotations

from dataclasses import replace

from ipvsync.config.spec import Origin
from ipvsync.desired import Desired, DesiredDest, DesiredService
from ipvsync.model import (
    AF_INET,
    AF_INET6,
    FWD_DROUTE,
    FWD_MASQ,
    FWD_TUNNEL,
    SVC_F_HASHED,
    SVC_F_PERSISTENT,
    SVC_F_SCHED2,
    DestAttrs,
    DestKey,
    ObservedDest,
    ObservedService,
    ServiceAttrs,
    ServiceKey,
    Vip,
)
from ipvsync.plan import (
    AddDest,
    AddService,
    BindVip,
    CreateLink,
    DelDest,
    DelService,
    EditDest,
    EditService,
    Observed,
    Owned,
    Plan,
    SetLinkUp,
    UnbindVip,
    plan,
)

IF = "ipvsync0"
ORIGIN = Origin("ipvsync.yaml", 7, "services.web")


def skey(addr: str = "192.0.2.10", port: int = 80, proto: int = 6) -> ServiceKey:
    return ServiceKey(AF_INET6 if ":" in addr else AF_INET, proto, addr, port)


def want(key: ServiceKey, attrs: ServiceAttrs | None = None, dests: dict[str, DestAttrs] | None = None,
         name: str = "web") -> DesiredService:
    ds = {}
    for text, a in (dests or {}).items():
        addr, port = text.rsplit(":", 1)
        dk = DestKey(addr, int(port))
        ds[dk] = DesiredDest(dk, AF_INET6 if ":" in addr else AF_INET, a, Origin("ipvsync.yaml", 9, "rs"))
    return DesiredService(name, key, attrs or ServiceAttrs(), ds, ORIGIN, (key.address,) if key.address else ())


def desired(*svcs: DesiredService, vips: tuple[str, ...] | None = None) -> Desired:
    services = {s.key: s for s in svcs}
    addrs = vips if vips is not None else tuple(dict.fromkeys(s.key.address for s in svcs if s.key.address))
    return Desired(services, {Vip(a, IF): ORIGIN for a in addrs}, IF)


def have(key: ServiceKey, attrs: ServiceAttrs | None = None, dests: dict[str, DestAttrs] | None = None,
         ) -> ObservedService:
    ds = {}
    for text, a in (dests or {}).items():
        addr, port = text.rsplit(":", 1)
        dk = DestKey(addr, int(port))
        ds[dk] = ObservedDest(dk, AF_INET6 if ":" in addr else AF_INET, a)
    return ObservedService(key, attrs or ServiceAttrs(), ds)


def observed(*svcs: ObservedService, addrs: tuple[str, ...] = (), link: bool = True, up: bool = True) -> Observed:
    return Observed({s.key: s for s in svcs}, frozenset(Vip(a, IF) for a in addrs), link, up)


def kinds(p: Plan) -> list[str]:
    return [op.kind for op in p.ops]


NAT1 = DestAttrs(FWD_MASQ, 1)


def test_empty_everything_is_no_changes() -> None:
    p = plan(desired(), observed(link=False), Owned())
    assert not p and len(p) == 0 and p.text() == "No changes."


def test_from_empty_kernel_make_before_break_order() -> None:
    k = skey()
    p = plan(desired(want(k, dests={"198.51.100.11:8080": NAT1, "198.51.100.12:8080": NAT1})),
             observed(link=False), Owned())
    assert kinds(p) == ["create_link", "add_service", "add_dest", "add_dest", "bind_vip"]
    assert isinstance(p.ops[0], CreateLink) and p.ops[0].name == IF
    assert p.ops[1].origin == ORIGIN and p.ops[2].origin.line == 9
    assert p.to_json()[1] == {"op": "add_service", "text": p.ops[1].text(), "file": "ipvsync.yaml", "line": 7,
                              "path": "services.web"}
    assert p.text().endswith("Plan: 5 to add, 0 to change, 0 to delete.")
    assert "  # ipvsync.yaml:7 services.web" in str(p.ops[1])


def test_link_down_is_set_up() -> None:
    p = plan(desired(want(skey())), observed(link=True, up=False), Owned())
    assert isinstance(p.ops[0], SetLinkUp) and p.ops[0].up


def test_unchanged_is_zero_ops_after_normalising_kernel_reports() -> None:
    """HASHED, netmask and timeout of non-persistent services, and tunnel fields of non-tun dests."""
    k4, k6 = skey(), skey("2001:db8::10")
    w4 = want(k4, ServiceAttrs("wrr"), {"198.51.100.11:80": NAT1})
    w6 = want(k6, ServiceAttrs("sh", SVC_F_SCHED2), {"2001:db8::11:80": NAT1})
    h4 = have(k4, ServiceAttrs("wrr", SVC_F_HASHED, 0, 0), {"198.51.100.11:80": DestAttrs(FWD_MASQ, 1, 0, 0, 2, 9)})
    h6 = have(k6, ServiceAttrs("sh", SVC_F_HASHED | SVC_F_SCHED2, 17, 64), {"2001:db8::11:80": NAT1})
    p = plan(desired(w4, w6), observed(h4, h6, addrs=("192.0.2.10", "2001:db8::10")), Owned())
    assert p.ops == ()


def test_persistence_compares_timeout_and_netmask() -> None:
    k = skey()
    w = want(k, ServiceAttrs("wlc", SVC_F_PERSISTENT, 300, 24))
    same = have(k, ServiceAttrs("wlc", SVC_F_PERSISTENT | SVC_F_HASHED, 300, 24))
    assert plan(desired(w), observed(same, addrs=("192.0.2.10",)), Owned()).ops == ()
    other = have(k, ServiceAttrs("wlc", SVC_F_PERSISTENT, 300, 32))
    p = plan(desired(w), observed(other, addrs=("192.0.2.10",)), Owned())
    assert kinds(p) == ["edit_service"] and "netmask 32->24" in p.ops[0].text()


def test_attribute_changes_are_edits_never_delete_add() -> None:
    k = skey()
    w = want(k, ServiceAttrs("wrr", SVC_F_PERSISTENT, 60, 32),
             {"198.51.100.11:80": DestAttrs(FWD_DROUTE, 5, 100, 10)})
    h = have(k, ServiceAttrs("wlc"), {"198.51.100.11:80": NAT1})
    p = plan(desired(w), observed(h, addrs=("192.0.2.10",)), Owned(frozenset({k})))
    assert kinds(p) == ["edit_service", "edit_dest"]
    edit = p.ops[0]
    assert isinstance(edit, EditService) and edit.old.scheduler == "wlc" and edit.new.scheduler == "wrr"
    assert "scheduler wlc->wrr" in edit.text() and p.ops[0].sign == "~"
    de = p.ops[1]
    assert isinstance(de, EditDest) and "forward 0->3" in de.text() and "weight 1->5" in de.text()
    assert p.text().endswith("Plan: 0 to add, 2 to change, 0 to delete.")


def test_changed_keys_add_new_then_remove_old() -> None:
    old, new = skey(port=80), skey(port=8000)
    h = have(old, dests={"198.51.100.11:80": NAT1})
    w = want(new, dests={"198.51.100.11:8080": NAT1})
    owned = Owned(frozenset({old}), frozenset({Vip("192.0.2.10", IF)}))
    p = plan(desired(w), observed(h, addrs=("192.0.2.10",)), owned)
    assert kinds(p) == ["add_service", "add_dest", "del_service"]
    assert p.ops[0].key == new and p.ops[-1].key == old
    dels = p.ops[-1]
    assert isinstance(dels, DelService) and dels.dests == ((DestKey("198.51.100.11", 80), AF_INET, NAT1),)
    # a real server's port: add the new destination, then delete the old one
    h = have(new, dests={"198.51.100.11:8080": NAT1})
    w = want(new, dests={"198.51.100.11:8081": NAT1})
    p = plan(desired(w), observed(h, addrs=("192.0.2.10",)), Owned(frozenset({new})))
    assert kinds(p) == ["add_dest", "del_dest"]
    assert p.ops[0].key.port == 8081 and p.ops[1].key.port == 8080


def test_removal_unbinds_before_deleting_and_keeps_shared_vips() -> None:
    a, b, c = skey("192.0.2.20", 80), skey("192.0.2.30", 80), skey("192.0.2.30", 443)
    owned = Owned(frozenset({a, b, c}), frozenset({Vip("192.0.2.20", IF), Vip("192.0.2.30", IF)}), frozenset({IF}))
    obs = observed(have(a), have(b), have(c), addrs=("192.0.2.20", "192.0.2.30"))
    p = plan(desired(want(c, name="c")), obs, owned)
    assert kinds(p) == ["unbind_vip", "del_service", "del_service"]
    assert p.ops[0] == UnbindVip(Vip("192.0.2.20", IF))
    assert {op.key for op in p.ops[1:]} == {a, b}


def test_foreign_and_preexisting_objects_are_never_touched() -> None:
    mine, foreign = skey("192.0.2.10"), skey("192.0.2.200", 25)
    obs = observed(have(mine), have(foreign, ServiceAttrs("lc")), addrs=("192.0.2.10", "192.0.2.99"))
    # mine is not owned (hand-made, adopted): leaving the config does not delete it; 192.0.2.99 is not ours
    assert plan(desired(), obs, Owned()).ops == ()
    # owned: removed, its VIP too if owned
    owned = Owned(frozenset({mine}), frozenset({Vip("192.0.2.10", IF)}))
    p = plan(desired(), obs, owned)
    assert kinds(p) == ["unbind_vip", "del_service"] and p.ops[1].key == mine
    # an owned service already gone from the kernel: nothing to do
    assert plan(desired(), observed(addrs=()), owned).ops == ()


def test_adoption_of_a_declared_key_converges_it() -> None:
    k = skey()
    h = have(k, ServiceAttrs("rr", SVC_F_PERSISTENT, 30, 32), {"198.51.100.99:80": NAT1,
                                                               "198.51.100.11:80": DestAttrs(FWD_MASQ, 9)})
    w = want(k, ServiceAttrs("wrr"), {"198.51.100.11:80": NAT1, "198.51.100.12:80": NAT1})
    p = plan(desired(w), observed(h, addrs=()), Owned())
    assert kinds(p) == ["edit_service", "edit_dest", "add_dest", "bind_vip", "del_dest"]
    assert p.ops[-1].key == DestKey("198.51.100.99", 80)


def test_vips_only_bound_when_missing_and_fwmark_vips() -> None:
    fk = ServiceKey(AF_INET, fwmark=10)
    w = DesiredService("marked", fk, ServiceAttrs(), {}, ORIGIN, ("192.0.2.40",))
    d = Desired({fk: w}, {Vip("192.0.2.40", IF): ORIGIN, Vip("2001:db8::40", IF): ORIGIN}, IF)
    p = plan(d, observed(addrs=("192.0.2.40",)), Owned())
    assert kinds(p) == ["add_service", "bind_vip"] and p.ops[1].vip.address == "2001:db8::40"
    assert str(p.ops[1].vip) == "2001:db8::40/128 dev ipvsync0"
    # external VIP mode: no link or address operations at all
    ext = replace(d, manage_vips=False, vips={})
    assert kinds(plan(ext, observed(link=False), Owned())) == ["add_service"]


def test_every_operation_inverts() -> None:
    k = skey()
    dk = DestKey("198.51.100.11", 80)
    a1, a2 = ServiceAttrs("wlc"), ServiceAttrs("rr")
    d1, d2 = NAT1, DestAttrs(FWD_TUNNEL, 2, 0, 0, 1, 6080, 0)
    ops = [AddService(k, a1), EditService(k, a1, a2), AddDest(k, dk, AF_INET, d1), EditDest(k, dk, AF_INET, d1, d2),
           DelDest(k, dk, AF_INET, d1), BindVip(Vip("192.0.2.10", IF)), UnbindVip(Vip("192.0.2.10", IF)),
           CreateLink(IF), SetLinkUp(IF, True)]
    for op in ops:
        (inv,) = op.inverse()
        assert inv.inverse() == [op], op
        assert inv.origin == op.origin
    ds = DelService(k, a1, ((dk, AF_INET, d1),), origin=ORIGIN)
    assert ds.inverse() == [AddService(k, a1), AddDest(k, dk, AF_INET, d1)]
    assert all(op.origin == ORIGIN for op in ds.inverse())
    assert [op.is_ipvs for op in ops[-4:]] == [False, False, False, False]


def test_owned_after_and_json_round_trip() -> None:
    k = skey()
    v = Vip("192.0.2.10", IF)
    o = Owned()
    for op in (CreateLink(IF), AddService(k, ServiceAttrs()), BindVip(v), EditService(k, ServiceAttrs(),
                                                                                      ServiceAttrs("rr"))):
        o = o.after(op)
    assert o == Owned(frozenset({k}), frozenset({v}), frozenset({IF}))
    assert Owned.from_json(o.to_json()) == o
    o = o.after(UnbindVip(v)).after(DelService(k, ServiceAttrs()))
    assert o == Owned(links=frozenset({IF}))


def test_replan_against_the_same_objects_still_sees_every_drift() -> None:
    """The identity memo (a no-drift re-plan compares by `is`) never hides a change: a changed
    kernel object is a new object, and each kind of drift is found on a re-plan of the same desired."""
    k, k2 = skey(), skey("192.0.2.11")
    wd = {"198.51.100.11:80": DestAttrs(FWD_MASQ, 2, 100, 10), "198.51.100.12:80": NAT1}
    w = desired(want(k, ServiceAttrs("wrr", SVC_F_PERSISTENT, 60, 24), wd), want(k2, dests={"198.51.100.13:80": NAT1}))
    base = have(k, ServiceAttrs("wrr", SVC_F_PERSISTENT | SVC_F_HASHED, 60, 24), wd)
    other = have(k2, dests={"198.51.100.13:80": NAT1})
    addrs = ("192.0.2.10", "192.0.2.11")
    for _ in range(3):  # memo filled, then hit
        assert plan(w, observed(base, other, addrs=addrs), Owned()).ops == ()
    d11 = DestKey("198.51.100.11", 80)
    drifts = {
        "weight": {**base.dests, d11: ObservedDest(d11, AF_INET, DestAttrs(FWD_MASQ, 3, 100, 10))},
        "threshold": {**base.dests, d11: ObservedDest(d11, AF_INET, DestAttrs(FWD_MASQ, 2, 99, 10))},
        "forward": {**base.dests, d11: ObservedDest(d11, AF_INET, DestAttrs(FWD_DROUTE, 2, 100, 10))},
        "tunnel": {**base.dests, d11: ObservedDest(d11, AF_INET, DestAttrs(FWD_TUNNEL, 2, 100, 10, 1, 5))},
        "missing": {d11: base.dests[d11]},
        "extra": {**base.dests, DestKey("198.51.100.99", 80): ObservedDest(DestKey("198.51.100.99", 80), AF_INET,
                                                                             NAT1)},
    }
    expect = {"weight": "edit_dest", "threshold": "edit_dest", "forward": "edit_dest", "tunnel": "edit_dest",
              "missing": "add_dest", "extra": "del_dest"}
    for name, dests in drifts.items():
        h = ObservedService(k, base.attrs, dests)
        assert kinds(plan(w, observed(h, other, addrs=addrs), Owned())) == [expect[name]], name
    for attrs in (ServiceAttrs("wlc", SVC_F_PERSISTENT, 60, 24), ServiceAttrs("wrr", SVC_F_PERSISTENT, 61, 24),
                  ServiceAttrs("wrr", SVC_F_PERSISTENT, 60, 16), ServiceAttrs("wrr", 0, 60, 24)):
        h = ObservedService(k, attrs, base.dests)
        assert kinds(plan(w, observed(h, other, addrs=addrs), Owned())) == ["edit_service"], attrs
    assert kinds(plan(w, observed(other, addrs=addrs), Owned())) == ["add_service", "add_dest", "add_dest"]
    assert kinds(plan(w, observed(base, other, addrs=addrs[1:]), Owned())) == ["bind_vip"]
    assert kinds(plan(w, observed(base, other, addrs=addrs), Owned(services=frozenset({skey("192.0.2.12")})))) == []
    gone = have(skey("192.0.2.12"))
    assert kinds(plan(w, observed(base, other, gone, addrs=addrs), Owned(services=frozenset({gone.key})))) == [
        "del_service"]
    assert plan(w, observed(base, other, addrs=addrs), Owned()).ops == ()
    edited = desired(want(k, ServiceAttrs("wrr", SVC_F_PERSISTENT, 60, 24), {**wd, "198.51.100.12:80": DestAttrs(
        FWD_MASQ, 4)}), w.services[k2])  # the same kernel objects, a changed declaration
    assert kinds(plan(edited, observed(base, other, addrs=addrs), Owned())) == ["edit_dest"]


def test_after_all_is_after_folded() -> None:
    k1, k2 = skey("192.0.2.1"), skey("192.0.2.2")
    v = Vip("192.0.2.1", IF)
    start = Owned(services=frozenset({k2}), vips=frozenset({v}))
    ops = [AddService(k1, ServiceAttrs()), AddDest(k1, DestKey("198.51.100.1", 80), AF_INET, NAT1), DelService(k2,
           ServiceAttrs()), UnbindVip(v), CreateLink(IF), BindVip(v), AddService(k2, ServiceAttrs())]
    folded = start
    for op in ops:
        folded = folded.after(op)
    assert start.after_all(ops) == folded
    assert start.after_all(ops[1:2]) is start


def test_memo_does_not_grow_when_the_kernel_side_is_new_each_time() -> None:
    """Under traffic every re-plan sees new observed service objects (counters moved): the service
    memo is anchored on the desired service, so it holds one entry per service, not one per re-plan."""
    from ipvsync import plan as plan_mod

    k = skey("192.0.2.77")
    w = desired(want(k, dests={"198.51.100.77:80": NAT1}))
    attrs = ServiceAttrs(flags=SVC_F_HASHED)
    before = len(plan_mod._SERVICES.now) + len(plan_mod._SERVICES.before)
    for _ in range(50):
        h = ObservedService(k, attrs, {DestKey("198.51.100.77", 80): ObservedDest(DestKey("198.51.100.77", 80),
                                                                                 AF_INET, NAT1)})
        assert plan(w, observed(h, addrs=("192.0.2.77",)), Owned()).ops == ()
    assert len(plan_mod._SERVICES.now) + len(plan_mod._SERVICES.before) <= before + 1
