"""`ipvsync import-keepalived`: keepalived.conf -> ipvsync YAML with the same IPVS state.

Each sample in tests/data/keepalived/ is converted, the YAML is loaded with `load_config`, and the
kernel-shaped values of the built Config are rendered as `ipvsadm -Sn` lines (plus -x/-y thresholds,
which -Sn does not print) for the *initial* state: what keepalived programs right after start-up,
before any health check has run. The expected lines were taken from keepalived 2.2.7 itself (run
inside the UML kernel, `keepalived -C`, then `ipvsadm -Sn`) and checked by hand.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from ipvsync.config.build import load_config
from ipvsync.config.spec import Config, RealServer, Service
from ipvsync.importers import KeepalivedParseError, convert_keepalived, import_keepalived
from ipvsync.importers.keepalived import CHECKERS, parse_keepalived, render_keepalived
from ipvsync.model import (
    AF_INET6,
    FWD_DROUTE,
    FWD_MASQ,
    FWD_TUNNEL,
    SVC_F_ONEPACKET,
    SVC_F_PERSISTENT,
    SVC_F_SCHED1,
    SVC_F_SCHED2,
    TUN_F_CSUM,
    TUN_F_REMCSUM,
    TUN_TYPE_NAMES,
    DestAttrs,
    ServiceKey,
)

DATA = Path(__file__).resolve().parent.parent / "data" / "keepalived"
SAMPLES = sorted(p.name for p in DATA.glob("*.conf"))


# ------------------------------------------------------------------ Config -> ipvsadm -Sn


def _host(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def _service_id(key: ServiceKey) -> str:
    if key.fwmark:
        return f"-f {key.fwmark}" + (" -6" if key.family == AF_INET6 else "")
    flag = {6: "-t", 17: "-u", 132: "--sctp-service"}[key.protocol]
    return f"{flag} {_host(key.address, key.port)}"


def _dest_line(sid: str, rs: RealServer, weight: int) -> str:
    a: DestAttrs = rs.attrs
    fwd = {FWD_MASQ: "-m", FWD_DROUTE: "-g", FWD_TUNNEL: "-i"}[a.forward]
    line = f"-a {sid} -r {_host(rs.key.address, rs.key.port)} {fwd} -w {weight}"
    if a.forward == FWD_TUNNEL:
        line += f" --tun-type {TUN_TYPE_NAMES[a.tun_type]}"
        if TUN_TYPE_NAMES[a.tun_type] == "gue":
            line += f" --tun-port {a.tun_port}"
        if TUN_TYPE_NAMES[a.tun_type] != "ipip":
            # like ipvsadm: gue/gre always show a checksum mode, "nocsum" unless csum/remcsum is set
            modes = {TUN_F_CSUM: " --tun-csum", TUN_F_REMCSUM: " --tun-remcsum"}
            line += modes.get(a.tun_flags, " --tun-nocsum")
    if a.u_threshold:
        line += f" -x {a.u_threshold}"
    if a.l_threshold:
        line += f" -y {a.l_threshold}"
    return line


def _initial_dests(svc: Service) -> list[tuple[RealServer, int]]:
    """Real servers in IPVS before any check ran (keepalived: up unless alpha; inhibit keeps weight 0)."""
    up: list[tuple[RealServer, int]] = []
    down0: list[tuple[RealServer, int]] = []
    for rs in svc.real_servers:
        h = rs.health
        if h.get("type", "none") == "none" or h.get("initial", "down") == "up":
            up.append((rs, rs.attrs.weight))
        elif h.get("on_failure", "inhibit") == "inhibit":
            down0.append((rs, 0))
    if svc.sorry_server is not None and sum(w for _, w in up) < svc.quorum:
        return [*down0, (svc.sorry_server, 1)]
    return up + down0


def ipvsadm_lines(cfg: Config) -> list[str]:
    """`ipvsadm -Sn` of a Config's initial state (with -x/-y added for thresholds), sorted."""
    out: list[str] = []
    for svc in cfg.services:
        sid = _service_id(svc.key)
        a = svc.attrs
        line = f"-A {sid} -s {a.scheduler}"
        if a.flags & SVC_F_PERSISTENT:
            line += f" -p {a.timeout}"
            if svc.key.family == AF_INET6:
                line += f" -M {a.netmask}" if a.netmask != 128 else ""
            elif a.netmask != 32:
                mask = (0xFFFFFFFF << (32 - a.netmask)) & 0xFFFFFFFF
                line += " -M " + ".".join(str(mask >> s & 0xFF) for s in (24, 16, 8, 0))
        if a.pe_name:
            line += f" --pe {a.pe_name}"
        if a.flags & SVC_F_ONEPACKET:
            line += " -o"
        names = [n for n, bit in (("fallback", SVC_F_SCHED1), ("port", SVC_F_SCHED2)) if a.flags & bit]
        if names:
            line += " -b " + ",".join(f"{a.scheduler}-{n}" for n in names)
        out.append(line)
        out.extend(_dest_line(sid, rs, w) for rs, w in _initial_dests(svc))
    return sorted(out)


def _load(tmp_path: Path, text: str) -> Config:
    p = tmp_path / "imported.yaml"
    p.write_text(text)
    return load_config(str(p))


# ------------------------------------------------------------------ expected, per sample

EXPECTED: dict[str, str] = {
    "nat_http.conf": """
-A -t 192.0.2.10:80 -s wrr
-a -t 192.0.2.10:80 -r 198.51.100.11:8080 -m -w 3
-a -t 192.0.2.10:80 -r 198.51.100.12:8080 -m -w 1
-a -t 192.0.2.10:80 -r 198.51.100.13:80 -m -w 2 -x 1000 -y 800
""",
    "dr_tcp_persist.conf": """
-A -t 192.0.2.20:443 -s sh -p 600 -M 255.255.255.0 -b sh-fallback,sh-port
-a -t 192.0.2.20:443 -r 198.51.100.21:443 -g -w 10
-a -t 192.0.2.20:443 -r 198.51.100.22:443 -g -w 10
-A -t 192.0.2.21:22 -s wlc -p 360
-a -t 192.0.2.21:22 -r 198.51.100.21:22 -g -w 1
-a -t 192.0.2.21:22 -r 198.51.100.22:22 -g -w 0
""",
    "file_udp.conf": """
-A -t 192.0.2.90:8080 -s wrr
-a -t 192.0.2.90:8080 -r 198.51.100.111:8080 -m -w 5
-A -u 192.0.2.91:5060 -s sh -b sh-port
-a -u 192.0.2.91:5060 -r 198.51.100.121:5060 -m -w 1
""",
    "fwmark.conf": """
-A -f 10 -s rr -p 900
-a -f 10 -r 198.51.100.41:0 -g -w 1
-a -f 10 -r 198.51.100.42:0 -g -w 1
-A -f 11 -s wlc
-a -f 11 -r 198.51.100.43:8080 -m -w 1
-a -f 11 -r 198.51.100.44:8080 -m -w 5
-A -f 12 -6 -s mh -b mh-port
-a -f 12 -6 -r [2001:db8:100::1]:0 -g -w 1
-a -f 12 -6 -r [2001:db8:100::2]:0 -g -w 1
""",
    "group.conf": "".join(f"""
-A -t {vip}:{port} -s rr
-a -t {vip}:{port} -r 198.51.100.61:{port} -g -w 2
-a -t {vip}:{port} -r 198.51.100.62:{port} -g -w 2""" for vip, port in (
        ("192.0.2.60", 80), ("192.0.2.61", 80), ("192.0.2.62", 80), ("192.0.2.63", 80),
        ("192.0.2.64", 8080), ("192.0.2.65", 8080))) + """
-A -f 20 -s rr
-a -f 20 -r 198.51.100.61:0 -g -w 2
-a -f 20 -r 198.51.100.62:0 -g -w 2
""",
    "include_main.conf": """
-A -t 192.0.2.25:25 -s lc
-a -t 192.0.2.25:25 -r 198.51.100.91:25 -m -w 1
-a -t 192.0.2.25:25 -r 198.51.100.92:25 -m -w 1
-A -t 192.0.2.25:143 -s sed
-a -t 192.0.2.25:143 -r 198.51.100.91:143 -m -w 4
-a -t 192.0.2.25:143 -r 198.51.100.92:143 -m -w 4
""",
    "ipv6.conf": """
-A -t [2001:db8::80]:443 -s wlc -p 300 -M 64
-a -t [2001:db8::80]:443 -r [2001:db8:1::11]:8443 -m -w 1
-a -t [2001:db8::80]:443 -r [2001:db8:1::12]:8443 -m -w 1
-A --sctp-service [2001:db8::53]:53 -s nq
-a --sctp-service [2001:db8::53]:53 -r [2001:db8:1::21]:53 -m -w 1
""",
    # alpha: .81 (remove) is not added, .82 (inhibit) is added with weight 0, .83 has no checker.
    # Alive weight 1 < quorum 3 - hysteresis 1, so keepalived starts with the sorry server.
    "sorry_quorum.conf": """
-A -t 192.0.2.80:80 -s rr
-a -t 192.0.2.80:80 -r 198.51.100.82:80 -m -w 0
-a -t 192.0.2.80:80 -r 198.51.100.99:8080 -m -w 1
""",
    "tun_gue.conf": """
-A -t 192.0.2.70:80 -s wrr
-a -t 192.0.2.70:80 -r 203.0.113.71:80 -i -w 2 --tun-type gue --tun-port 6080 --tun-csum
-a -t 192.0.2.70:80 -r 203.0.113.72:80 -i -w 3 --tun-type gue --tun-port 6080 --tun-csum
-A -t 192.0.2.71:80 -s wlc
-a -t 192.0.2.71:80 -r 203.0.113.73:80 -i -w 1 --tun-type gre --tun-nocsum
-A -t 192.0.2.72:443 -s wlc
-a -t 192.0.2.72:443 -r 203.0.113.74:443 -i -w 1 --tun-type ipip
-a -t 192.0.2.72:443 -r 203.0.113.75:443 -g -w 1
""",
    "udp_dns.conf": """
-A -u 192.0.2.53:53 -s rr -o
-a -u 192.0.2.53:53 -r 198.51.100.31:53 -m -w 1
-a -u 192.0.2.53:53 -r 198.51.100.32:53 -m -w 1
-A -u 192.0.2.54:514 -s lc -p 120 --pe sip
-a -u 192.0.2.54:514 -r 198.51.100.33:514 -g -w 1
-a -u 192.0.2.54:514 -r 198.51.100.34:514 -g -w 1
""",
    # no `protocol`: keepalived 2.x programs UDP
    "vrrp.conf": """
-A -u 192.0.2.100:80 -s wlc
-a -u 192.0.2.100:80 -r 198.51.100.101:80 -m -w 1
-a -u 192.0.2.100:80 -r 198.51.100.102:80 -m -w 1
""",
}

# Every keyword that cannot be carried over must be named in the notes: (line, keyword) per file.
EXPECTED_NOTES: dict[str, set[tuple[str, int, str]]] = {
    "nat_http.conf": {("nat_http.conf", 2, "global_defs"), ("nat_http.conf", 9, "router_id"),
                      ("nat_http.conf", 29, "delay_before_retry"), ("nat_http.conf", 52, "digest"),
                      ("nat_http.conf", 55, "url"), ("nat_http.conf", 56, "path")},
    "dr_tcp_persist.conf": {("dr_tcp_persist.conf", 12, "ha_suspend"),
                            ("dr_tcp_persist.conf", 22, "real_server")},
    "file_udp.conf": {("file_udp.conf", 4, "weight"), ("file_udp.conf", 12, "FILE_CHECK"),
                      ("file_udp.conf", 26, "require_reply")},
    "fwmark.conf": set(),
    "group.conf": set(),
    "include_main.conf": {("include_main.conf", 2, "global_defs"), ("include_main.conf", 6, "include"),
                          ("10-mail.conf", 6, "SMTP_CHECK"), ("10-mail.conf", 7, "helo_name")},
    "ipv6.conf": set(),
    "sorry_quorum.conf": {("sorry_quorum.conf", 11, "quorum_up"), ("sorry_quorum.conf", 12, "quorum_down"),
                          ("sorry_quorum.conf", 29, "notify_up"), ("sorry_quorum.conf", 30, "notify_down")},
    "tun_gue.conf": set(),
    "udp_dns.conf": {("udp_dns.conf", 37, "user GROUP"), ("udp_dns.conf", 38, "misc_dynamic"),
                     ("udp_dns.conf", 43, "misc_path")},
    "vrrp.conf": {("vrrp.conf", 8, "vrrp_script"), ("vrrp.conf", 13, "vrrp_sync_group"),
                  ("vrrp.conf", 19, "vrrp_instance"), ("vrrp.conf", 29, "virtual_ipaddress"),
                  ("vrrp.conf", 37, "@lvs_a virtual_server"), ("vrrp.conf", 43, "virtual_server"),
                  ("vrrp.conf", 46, "smtp_alert"), ("vrrp.conf", 3, "global_defs")},
}

_NOTE = re.compile(r"^(?P<file>[^:]+):(?P<line>[0-9]+): (?P<kw>.+?) — (?P<why>.+)$")


def _parsed_notes(notes: list[str]) -> set[tuple[str, int, str]]:
    out = set()
    for n in notes:
        m = _NOTE.match(n)
        assert m, f"note not in 'FILE:LINE: keyword — why' form: {n!r}"
        out.add((os.path.basename(m["file"]), int(m["line"]), m["kw"]))
    return out


# ------------------------------------------------------------------ tests


def test_every_sample_has_expectations() -> None:
    assert len(SAMPLES) >= 8
    assert set(SAMPLES) == set(EXPECTED) == set(EXPECTED_NOTES)


@pytest.mark.parametrize("name", SAMPLES)
def test_sample_converts_to_the_same_ipvs_state(name: str, tmp_path: Path) -> None:
    text, notes = import_keepalived(str(DATA / name))
    cfg = _load(tmp_path, text)
    expected = sorted(line for line in EXPECTED[name].strip().splitlines() if line)
    assert ipvsadm_lines(cfg) == expected


@pytest.mark.parametrize("name", SAMPLES)
def test_sample_notes_name_every_dropped_keyword(name: str) -> None:
    text, notes = import_keepalived(str(DATA / name))
    got = _parsed_notes(notes)
    missing = EXPECTED_NOTES[name] - got
    assert not missing, f"notes lack {sorted(missing)}; notes were:\n" + "\n".join(notes)
    for n in notes:  # the YAML header lists every note
        assert f"#   {n}" in text


@pytest.mark.parametrize("name", SAMPLES)
def test_sample_yaml_is_stable_and_names_services_by_key(name: str, tmp_path: Path) -> None:
    text, _ = import_keepalived(str(DATA / name))
    assert import_keepalived(str(DATA / name))[0] == text
    cfg = _load(tmp_path, text)
    for svc in cfg.services:
        assert svc.name == svc.key.default_name
    assert cfg.vip_mode == "external"


def test_nat_http_health_mapping(tmp_path: Path) -> None:
    cfg = _load(tmp_path, import_keepalived(str(DATA / "nat_http.conf"))[0])
    svc = cfg.services[0]
    h11 = svc.real_servers[0].health
    assert h11 == {"type": "http", "interval": "6s", "timeout": "3s", "rise": 1, "fall": 3, "initial": "up",
                   "on_failure": "inhibit", "path": "/healthz", "status": [200, "300-399"],
                   "host": "www.example.org"}
    h13 = svc.real_servers[2].health
    # keepalived defaults: connect_timeout 5, retry 1 (fall 2), status 200-299, no inhibit -> remove
    assert h13["timeout"] == "5s" and h13["fall"] == 2 and h13["on_failure"] == "remove"
    assert h13["path"] == "/status" and h13["status"] == ["200-299"] and h13["body_regex"] == "^OK"


def test_identical_checks_move_to_service_level() -> None:
    doc, _ = convert_keepalived(str(DATA / "udp_dns.conf"))
    dns = doc["services"]["udp-192.0.2.53-53"]
    assert dns["health"]["type"] == "dns" and dns["health"]["query_type"] == "A"
    assert dns["health"]["fall"] == 4  # DNS_CHECK default retry 3
    assert dns["real_servers"] == ["198.51.100.31", "198.51.100.32"]
    syslog = doc["services"]["udp-192.0.2.54-514"]
    assert "health" not in syslog  # different commands per server
    cmd = syslog["real_servers"][0]["health"]["command"]
    assert cmd == ["/usr/local/bin/check_syslog", "-H", "198.51.100.33", "--msg", "ipvsync probe"]
    assert syslog["real_servers"][0]["health"]["timeout"] == "4s"
    assert syslog["real_servers"][1]["health"]["command"][:2] == ["/bin/sh", "-c"]


def test_tcp_check_options_and_group_names() -> None:
    doc, _ = convert_keepalived(str(DATA / "dr_tcp_persist.conf"))
    h = doc["services"]["tcp-192.0.2.20-443"]["health"]
    assert h["connect_port"] == 8443 and h["source_address"] == "198.51.100.1" and h["fall"] == 4
    assert h["timeout"] == "4s" and h["interval"] == "10s"
    doc, _ = convert_keepalived(str(DATA / "group.conf"))
    assert list(doc["services"]) == ["tcp-192.0.2.60-80", "tcp-192.0.2.61-80", "tcp-192.0.2.62-80",
                                     "tcp-192.0.2.63-80", "tcp-192.0.2.64-8080", "tcp-192.0.2.65-8080",
                                     "fwmark-20-inet"]


def test_quorum_hysteresis_and_alpha() -> None:
    doc, _ = convert_keepalived(str(DATA / "sorry_quorum.conf"))
    svc = doc["services"]["tcp-192.0.2.80-80"]
    # keepalived: lost below 3-1, regained at 3+1 -> ipvsync quorum 2, hysteresis 2
    assert (svc["quorum"], svc["quorum_hysteresis"]) == (2, 2)
    assert svc["sorry_server"] == "198.51.100.99:8080"
    assert svc["real_servers"][0]["health"]["initial"] == "down"
    assert svc["real_servers"][1]["health"]["on_failure"] == "inhibit"


def test_ipv6_ssl_and_file_check() -> None:
    doc, _ = convert_keepalived(str(DATA / "ipv6.conf"))
    h = doc["services"]["tcp-2001-db8--80-443"]["health"]
    assert h["type"] == "https" and h["host"] == h["sni"] == "api.example.org" and h["tls_verify"] is False
    assert doc["services"]["tcp-2001-db8--80-443"]["persistence"] == {"timeout": "300s", "netmask": "/64"}
    doc, _ = convert_keepalived(str(DATA / "file_udp.conf"))
    assert doc["services"]["tcp-192.0.2.90-8080"]["health"]["path"] == "/var/run/lvs/app.weight"
    udp = doc["services"]["udp-192.0.2.91-5060"]["health"]
    assert udp["payload"] == r"\x4f\x50\x54\x49\x4f\x4e\x53" and udp["type"] == "udp"


# ------------------------------------------------------------------ parser details


def _write(tmp_path: Path, text: str, name: str = "k.conf") -> str:
    p = tmp_path / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return str(p)


@pytest.mark.parametrize("text, line, fragment", [
    ("virtual_server 192.0.2.1 80 {\n  protocol TCP\n", 1, "never closed"),
    ("virtual_server 192.0.2.1 80 {\n}\n}\n", 3, "unexpected '}'"),
    ("global_defs {\n  router_id \"abc\n}\n", 2, "unterminated"),
    ("\n\n{\n}\n", 3, "without a keyword"),
])
def test_syntax_errors_give_file_and_line(tmp_path: Path, text: str, line: int, fragment: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(KeepalivedParseError) as ei:
        import_keepalived(path)
    assert ei.value.file == path and ei.value.line == line
    assert str(ei.value).startswith(f"{path}:{line}: ") and fragment in str(ei.value)


def test_syntax_error_in_included_file_names_that_file(tmp_path: Path) -> None:
    inc = _write(tmp_path, "virtual_server 192.0.2.1 80 {\n", "sub/a.conf")
    main = _write(tmp_path, "include sub/*.conf\n")
    with pytest.raises(KeepalivedParseError) as ei:
        import_keepalived(main)
    assert (ei.value.file, ei.value.line) == (inc, 1)


def test_include_loop_is_an_error(tmp_path: Path) -> None:
    main = _write(tmp_path, "include k.conf\n")
    with pytest.raises(KeepalivedParseError, match="include loop"):
        import_keepalived(main)


def test_comments_quotes_braces_and_params(tmp_path: Path) -> None:
    path = _write(tmp_path, """
$PORT=8080
$NET=198.51.100
virtual_server 192.0.2.1 80 { # comment { not a brace
  protocol tcp ! another comment
  real_server ${NET}.1 $PORT
  {
    weight 2
    MISC_CHECK { misc_path "/bin/check --name 'a b' \\"q\\"" }
  }
}
""")
    tree = parse_keepalived(path)
    assert [n.name for n in tree] == ["virtual_server"]
    doc, notes = convert_keepalived(path)
    svc = doc["services"]["tcp-192.0.2.1-80"]
    assert svc["real_servers"] == [{"address": "198.51.100.1", "port": 8080, "weight": 2}]
    assert svc["health"]["command"] == ["/bin/check", "--name", "a b", "q"]
    assert notes == []


def test_conditional_lines_with_config_id(tmp_path: Path) -> None:
    path = _write(tmp_path, """
virtual_server 192.0.2.1 80 {
  protocol TCP
  @main lb_algo rr
  @^main lb_algo lc
  real_server 198.51.100.1 80 {
  }
}
""")
    doc, notes = convert_keepalived(path, config_id="main")
    assert doc["services"]["tcp-192.0.2.1-80"]["scheduler"] == "rr" and notes == []
    doc, notes = convert_keepalived(path, config_id="backup")
    assert doc["services"]["tcp-192.0.2.1-80"]["scheduler"] == "lc"
    doc, notes = convert_keepalived(path)
    assert "scheduler" not in doc["services"]["tcp-192.0.2.1-80"]
    assert {kw for _, _, kw in _parsed_notes(notes)} == {"@main lb_algo", "@^main lb_algo"}


def test_keepalived_quirks(tmp_path: Path) -> None:
    """Port-0 services, NAT group members without rs port, flags before lvs_sched, empty servers."""
    path = _write(tmp_path, """
virtual_server_group G { 192.0.2.5 80
  192.0.2.6 }
virtual_server group G {
  protocol TCP
  sh-port
  lvs_sched sh
  real_server 198.51.100.1 {
  }
}
virtual_server 192.0.2.7 80 {
  protocol TCP
}
virtual_server 192.0.2.8 80 {
  protocol TCP
  ops
  hashed
  flag-3
  real_server 198.51.100.1 80 {
    PING_CHECK {
    }
  }
  real_server 198.51.100.1 80 {
  }
}
""")
    doc, notes = convert_keepalived(path)
    assert list(doc["services"]) == ["tcp-192.0.2.5-80", "tcp-192.0.2.8-80"]
    assert "scheduler_flags" not in doc["services"]["tcp-192.0.2.5-80"]  # sh-port before lvs_sched: ignored
    got = _parsed_notes(notes)
    name = os.path.basename(path)
    for line, kw in ((3, "192.0.2.6"), (6, "sh-port"), (8, "real_server"), (11, "virtual_server"),
                     (16, "ops"), (17, "hashed"), (18, "flag-3"), (20, "PING_CHECK"), (23, "real_server")):
        assert (name, line, kw) in got, (line, kw, notes)
    assert doc["services"]["tcp-192.0.2.8-80"]["real_servers"] == ["198.51.100.1"]


def test_render_keepalived_strips_checkers() -> None:
    tree = parse_keepalived(str(DATA / "nat_http.conf"))
    text = render_keepalived(tree, drop=CHECKERS)
    assert "HTTP_GET" not in text and "url" not in text and "real_server 198.51.100.13 {" in text
