"""`ipvsync status` text (host unit test): 80 columns whatever the numbers, colour only when asked."""

from __future__ import annotations

import argparse
import io
import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

from ipvsync.status import STATUS_VERSION, render

ANSI = re.compile(r"\x1b\[[0-9;]*m")
HEALTH = ["up", "down", "rising", "falling", "draining", "drained-by-operator"]
SCHEMA = Path(__file__).resolve().parents[2] / "docs" / "status.schema.json"


def rs(name: str, health: str, **over: Any) -> dict[str, Any]:
    r = {"address": name.rsplit(":", 1)[0].strip("[]"), "port": int(name.rsplit(":", 1)[1]), "real_server": name,
         "forward": "nat", "configured_weight": 1, "effective_weight": 1, "kernel_weight": 1, "health": health,
         "check": "tcp", "since": time.time() - 42, "last_failure": "", "flapping": False, "drained_by": None,
         "active_connections": 0, "inactive_connections": 0, "connections_per_second": 0,
         "in_bytes_per_second": 0, "out_bytes_per_second": 0, "connections": 0, "in_packets": 0,
         "out_packets": 0, "in_bytes": 0, "out_bytes": 0}
    r.update(over)
    return r


def doc(*real_servers: dict[str, Any], last: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "version": STATUS_VERSION,
        "daemon": {"pid": 123, "config_file": "/etc/ipvsync/ipvsync.yaml", "rollback_failure": None,
                   "status": "3 services, 5/6 real servers serving; last reload 10:00:00 applied"},
        "last_reload": last,
        "services": [{"name": "a-service-with-a-rather-long-name-for-the-header-line", "key": "tcp 192.0.2.10:80",
                      "vip": "192.0.2.10", "port": 80, "protocol": "tcp", "fwmark": None, "vips": ["192.0.2.10"],
                      "scheduler": "wlc", "in_kernel": True, "below_quorum": True,
                      "real_servers": list(real_servers)}],
    }


def every_state() -> dict[str, Any]:
    big = 12_345_678_901
    servers = [rs(f"198.51.100.{i + 2}:8080", h, last_failure="connect: connection refused " * 5 if h == "down"
                  else "") for i, h in enumerate(HEALTH)]
    servers += [
        rs("198.51.100.99:65535", "drained-by-operator", flapping=True, configured_weight=2_000_000_000,
           effective_weight=0, active_connections=big, inactive_connections=big, connections_per_second=big,
           since=time.time() - 10 * 365 * 86400),
        rs("[2001:db8:aaaa:bbbb:cccc:dddd:eeee:1]:8080", "falling", flapping=True,
           configured_weight=2_147_483_647, effective_weight=2_147_483_647),
        rs("[2001:db8::1]:443", "up", configured_weight=None, effective_weight=None),
    ]
    last = {"code": 1, "result": "rejected", "time": time.time(), "message": "config rejected (2 errors); kept "
            "the last good config " + "x" * 80,
            "errors": ["/etc/ipvsync/ipvsync.yaml:12:5: services.web.persistence.timeout: bad duration" + "y" * 50,
                       "/etc/ipvsync/ipvsync.yaml:20:3: services.dns.port: out of range"]}
    return doc(*servers, last=last)


def test_fits_80_columns_whatever_the_values() -> None:
    text = render(every_state())
    long = [ln for ln in text.splitlines() if len(ln) > 80]
    assert not long, "\n".join(long)
    for h in HEALTH:
        assert re.search(rf"\s{re.escape(h)}\s", text), h
    assert "/etc/ipvsync/ipvsync.yaml:12:5" in text  # a rejected reload shows its error
    assert "[2001:db8:aaaa:bbbb:cccc:dddd:eeee:1]:8080" in text  # long names are not cut, but wrapped
    assert "2147483647/2147483647" not in text and "2147483k/2147483k" not in text


def test_columns_line_up() -> None:
    text = render(doc(rs("198.51.100.2:80", "drained-by-operator", effective_weight=0, active_connections=7,
                         inactive_connections=12, connections_per_second=3),
                      rs("198.51.100.3:80", "up", active_connections=1)))
    lines = text.splitlines()
    header = next(ln for ln in lines if "REAL SERVER" in ln)
    row = next(ln for ln in lines if ln.startswith("  198.51.100.2:80"))
    assert row.split() == ["198.51.100.2:80", "0/1", "drained-by-operator", "42s", "7", "12", "3"]
    for col in ("WEIGHT", "ACT", "INACT", "CPS"):  # right-aligned numbers end under their header
        end = header.index(col) + len(col)
        assert row[end - 1] != " ", (col, header, row)


def test_no_colour_unless_asked() -> None:
    plain = render(every_state())
    assert not ANSI.search(plain)
    coloured = render(every_state(), color=True)
    assert ANSI.search(coloured)
    assert "\x1b[31m" in coloured and "\x1b[32m" in coloured  # down red, up green
    assert ANSI.sub("", coloured) == plain  # colour changes nothing else, so 80 columns still hold


@pytest.mark.parametrize("tty,env,want", [(False, {}, False), (True, {}, True), (True, {"NO_COLOR": "1"}, False),
                                          (True, {"TERM": "dumb"}, False)])
def test_status_command_colours_only_on_a_tty(monkeypatch: pytest.MonkeyPatch, tty: bool, env: dict[str, str],
                                              want: bool) -> None:
    import ipvsync.commands.status as cmd
    import ipvsync.control

    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(ipvsync.control, "request", lambda *a, **k: {"ok": True, "status": every_state()})

    class Out(io.StringIO):
        def isatty(self) -> bool:
            return tty

    out = Out()
    monkeypatch.setattr("sys.stdout", out)
    assert cmd.main(argparse.Namespace(runtime_dir="/nonexistent", service=None, json=False)) == 0
    assert bool(ANSI.search(out.getvalue())) is want


def test_json_output_is_the_document_and_matches_the_schema(monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    import jsonschema

    import ipvsync.commands.status as cmd
    import ipvsync.control

    monkeypatch.setattr(ipvsync.control, "request", lambda *a, **k: {"ok": True, "status": every_state()})
    assert cmd.main(argparse.Namespace(runtime_dir="/nonexistent", service=None, json=True)) == 0
    out = capsys.readouterr().out
    assert not ANSI.search(out)
    data = json.loads(out)
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(data, schema, cls=jsonschema.Draft202012Validator)
    bad = json.loads(out)
    bad["services"][0]["real_servers"][0]["health"] = "sleeping"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema, cls=jsonschema.Draft202012Validator)
    bad = json.loads(out)
    bad["version"] = 2
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema, cls=jsonschema.Draft202012Validator)


def test_no_daemon_exit_4(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ipvsync.cli import main

    for args in (["status"], ["drain", "web", "198.51.100.2"], ["undrain", "web", "198.51.100.2"], ["reload"]):
        assert main(["--runtime-dir", str(tmp_path), *args]) == 4, args
        err = capsys.readouterr().err
        assert "no ipvsync daemon is running" in err, err
