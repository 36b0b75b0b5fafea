"""Config parsing edge cases (valid inputs) and the export round trip, on the host."""

from __future__ import annotations

from pathlib import Path

import pytest

from ipvsync.config.build import load_config, parse_duration, split_real_server
from ipvsync.config.load import ConfigInvalid
from ipvsync.desired import from_config
from ipvsync.export import export_yaml
from ipvsync.model import (
    AF_INET,
    AF_INET6,
    FWD_DROUTE,
    FWD_MASQ,
    FWD_TUNNEL,
    SVC_F_ONEPACKET,
    SVC_F_PERSISTENT,
    SVC_F_SCHED1,
    SVC_F_SCHED2,
    TUN_F_REMCSUM,
    DestKey,
    ObservedDest,
    ObservedService,
    ServiceKey,
    Vip,
)

REPO = Path(__file__).resolve().parents[2]


def cfg(tmp_path: Path, text: str, name: str = "ipvsync.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return load_config(str(path))


def test_example_model() -> None:
    c = load_config(str(REPO / "ipvsync.yaml.example"))
    by = {s.name: s for s in c.services}
    assert list(by) == ["web", "web-dr", "dns", "tunnelled", "marked"]
    web = by["web"]
    assert web.key == ServiceKey(AF_INET, 6, "192.0.2.10", 80)
    assert (web.attrs.scheduler, web.attrs.flags, web.attrs.timeout, web.attrs.netmask) == ("wrr", SVC_F_PERSISTENT,
                                                                                            300, 24)
    rs = {r.key: r for r in web.real_servers}
    assert rs[DestKey("198.51.100.12", 8080)].attrs.weight == 3
    assert (rs[DestKey("198.51.100.12", 8080)].attrs.u_threshold, rs[DestKey("198.51.100.12", 8080)].attrs.l_threshold
            ) == (1000, 800)
    assert rs[DestKey("198.51.100.11", 8080)].origin.line == 17
    assert by["web-dr"].attrs.flags == SVC_F_SCHED2 and all(r.attrs.forward == FWD_DROUTE
                                                             for r in by["web-dr"].real_servers)
    assert by["dns"].key.protocol == 17 and by["dns"].attrs.flags == SVC_F_ONEPACKET
    assert by["tunnelled"].real_servers[0].attrs.forward == FWD_TUNNEL
    assert by["marked"].key == ServiceKey(AF_INET, fwmark=10) and by["marked"].vips == ("192.0.2.40",)
    assert [r.key.port for r in by["marked"].real_servers] == [0, 0]
    d = from_config(c)
    assert sorted(v.address for v in d.vips) == ["192.0.2.10", "192.0.2.20", "192.0.2.30", "192.0.2.40",
                                                 "192.0.2.53"]


@pytest.mark.parametrize("text,seconds", [("300s", 300), ("1.5m", 90), ("200ms", 0.2), ("2h", 7200), (30, 30),
                                          ("45", 45), (0, 0)])
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["5 minutes", "-1s", "1d", "s", True])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize("text,result", [
    ("198.51.100.1:8080", ("198.51.100.1", 8080)),
    ("198.51.100.1", ("198.51.100.1", 80)),
    ("[2001:db8::1]:443", ("2001:db8::1", 443)),
    ("[2001:DB8:0::1]", ("2001:db8::1", 80)),
    ("2001:db8::1", ("2001:db8::1", 80)),
    (" 198.51.100.1:1 ", ("198.51.100.1", 1)),
])
def test_real_server_shorthand(text: str, result: tuple[str, int]) -> None:
    assert split_real_server(text, 80) == result


@pytest.mark.parametrize("text", ["198.51.100.1:0", "198.51.100.1:65536", "198.51.100.1:http", "[2001:db8::1",
                                  "[2001:db8::1]x", "host:80", "2001:db8::1:80:"])
def test_bad_real_server_shorthand(text: str) -> None:
    with pytest.raises(ValueError):
        split_real_server(text, 80)


def test_inheritance_defaults_service_real_server(tmp_path: Path) -> None:
    c = cfg(tmp_path, """\
version: 1
defaults:
  scheduler: rr
  forward: dr
  weight: 5
  upper_threshold: 100
services:
  a:
    vip: 192.0.2.10
    port: 80
    real_servers: [198.51.100.1, {address: 198.51.100.2, weight: 0, forward: nat, port: 8080}]
  b:
    vip: 192.0.2.11
    port: 80
    scheduler: lc
    weight: 2
    forward: nat
    real_servers: ["198.51.100.1:81"]
""")
    a, b = c.services
    assert a.attrs.scheduler == "rr" and b.attrs.scheduler == "lc"
    r1, r2 = a.real_servers
    assert (r1.attrs.forward, r1.attrs.weight, r1.attrs.u_threshold, r1.key.port) == (FWD_DROUTE, 5, 100, 80)
    assert (r2.attrs.forward, r2.attrs.weight, r2.key.port) == (FWD_MASQ, 0, 8080)
    assert (b.real_servers[0].attrs.weight, b.real_servers[0].key) == (2, DestKey("198.51.100.1", 81))


def test_quoted_values_and_yaml_traps_in_strings(tmp_path: Path) -> None:
    c = cfg(tmp_path, """\
version: 1
services:
  "on":
    description: "on"
    vip: "192.0.2.10"
    port: 80
    real_servers: ['198.51.100.1:22']
""")
    (s,) = c.services
    assert s.name == "on" and s.description == "on"
    assert s.real_servers[0].key == DestKey("198.51.100.1", 22)


def test_ipv6_normalised_and_persistence_prefix(tmp_path: Path) -> None:
    c = cfg(tmp_path, """\
version: 1
services:
  web6:
    vip: 2001:DB8:0:0::10
    port: 443
    persistence: {timeout: 1m, netmask: /64}
    real_servers: ["[2001:db8:1:0::11]:8443"]
""")
    (s,) = c.services
    assert s.key == ServiceKey(AF_INET6, 6, "2001:db8::10", 443)
    assert (s.attrs.timeout, s.attrs.netmask) == (60, 64)
    assert s.real_servers[0].key == DestKey("2001:db8:1::11", 8443)
    assert Vip("2001:db8::10", "ipvsync0") in from_config(c).vips


def test_mixed_family_allowed_only_with_tun(tmp_path: Path) -> None:
    c = cfg(tmp_path, """\
version: 1
services:
  t:
    vip: 192.0.2.30
    port: 443
    forward: tun
    tunnel: {type: gue, port: 6080, checksum: remote}
    real_servers: ["2001:db8::41"]
""")
    rs = c.services[0].real_servers[0]
    assert rs.family == AF_INET6
    assert (rs.attrs.tun_type, rs.attrs.tun_port, rs.attrs.tun_flags) == (1, 6080, TUN_F_REMCSUM)


def test_empty_services_and_every_error_reported(tmp_path: Path) -> None:
    assert cfg(tmp_path, "version: 1\nservices: {}\n").services == ()
    assert cfg(tmp_path, "version: 1\n").services == ()
    with pytest.raises(ConfigInvalid) as exc:
        cfg(tmp_path, "version: 1\nservices:\n  a: {vip: 192.0.2.1, port: 80, real_servers: ['1.2.3.4:0']}\n"
                      "  b: {vip: 192.0.2.999, port: 80}\n")
    assert [e.line for e in exc.value.errors] == [3, 4]


def obs(svc) -> ObservedService:
    dests = {r.key: ObservedDest(r.key, r.family, r.attrs) for r in svc.real_servers}
    return ObservedService(svc.key, svc.attrs, dests)


def test_export_round_trip(tmp_path: Path) -> None:
    """export(kernel built from a config) -> YAML that loads back to the same keys and attributes."""
    source = cfg(tmp_path, (REPO / "ipvsync.yaml.example").read_text() + """\
  dns6:
    vip: 2001:db8::10
    port: 53
    protocol: udp
    scheduler: mh
    scheduler_flags: [mh-fallback, mh-port]
    persistence: {timeout: 60, netmask: /64}
    real_servers: ["[2001:db8::11]:5353", {address: 2001:db8::12, port: 5353, weight: 0}]
  marked6:
    fwmark: 10
    family: inet6
    real_servers: ["2001:db8::51"]
""", "src.yaml")
    services = {s.key: obs(s) for s in source.services}
    text = export_yaml(services)
    assert text.startswith("# Exported from the live kernel by `ipvsync export`.\n")
    for name in ("tcp-192.0.2.10-80:", "udp-2001-db8--10-53:", "fwmark-10-inet6:", "fwmark-10-inet:"):
        assert f"\n  {name}\n" in text, text
    back = cfg(tmp_path, text, "exported.yaml")
    assert {s.key: (s.attrs, {r.key: (r.family, r.attrs) for r in s.real_servers}) for s in back.services} == {
        s.key: (s.attrs.normalised(s.key.family), {r.key: (r.family, r.attrs.normalised()) for r in s.real_servers})
        for s in source.services}
    dns6 = next(s for s in back.services if s.key.port == 53 and s.key.family == AF_INET6)
    assert dns6.attrs.flags == SVC_F_PERSISTENT | SVC_F_SCHED1 | SVC_F_SCHED2
    # and export is stable: exporting the re-loaded config gives the same text
    assert export_yaml({s.key: obs(s) for s in back.services}) == text


def test_origin_spells_its_path_when_asked_and_compares_either_way() -> None:
    from ipvsync.config.spec import Origin

    lazy = Origin("f.yaml", 9, ("services", "web", "real_servers", 1))
    text = Origin("f.yaml", 9, "services.web.real_servers[1]")
    assert lazy == text and hash(lazy) == hash(text)
    assert lazy.path == "services.web.real_servers[1]" and str(lazy) == "f.yaml:9 services.web.real_servers[1]"
    assert lazy != Origin("f.yaml", 10, ("services", "web", "real_servers", 1))
    assert lazy != Origin("f.yaml", 9, ("services", "web", "real_servers", 2))
