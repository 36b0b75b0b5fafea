"""Issue 7, the operator surface against a running daemon in UML: status (text and --json checked
against docs/status.schema.json), drain/undrain, live plan, reload outcomes, Prometheus metrics.

One rig, one long test (daemon starts dominate the cost in UML). Four real servers in their own
namespaces, three services on VIP 192.0.2.10 (NAT, the director is the servers' default gateway):

    web  :80  s0 up · s1 killed -> down · s3 drained by the operator
    edge :81  s0 rising (initial down, rise 1000) · s1 falling (initial up, fall 1000, killed)
    hold :82  s2 holds a client connection open, then leaves the config -> draining (weight 0,
              kept while the connection lives); s3:82 replaces it

Then the daemon is restarted with IPVSYNC_TEST_FAULT=1 (the first kernel operation after the
restart fails): drains survive, a broken edit is rejected, a good edit is rolled back, drift is
repaired, metrics count all of it. Finally every command run without a daemon says so (exit 4).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from uml.host import REPO_ROOT
from uml.netns import Netns, Topology

pytestmark = [pytest.mark.kernel, pytest.mark.slow]

VIP = "192.0.2.10"
METRICS_PORT = 9475
SCHEMA = REPO_ROOT / "docs" / "status.schema.json"
HEALTH = "{type: tcp, interval: 0.3s, timeout: 0.3s, rise: 1, fall: 1}"

HOLD_SERVER = """
import socket
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", 82))
s.listen(64)
print("ready", flush=True)
held = []
while True:
    held.append(s.accept()[0])  # never answer, never close: the connection stays ESTABLISHED
"""

HOLD_CLIENT = f"""
import socket, sys
c = socket.create_connection(("{VIP}", 82), timeout=5)
print("connected", flush=True)
c.settimeout(None)
c.recv(1)
"""

SCRAPE = f"""
import sys, urllib.request
sys.stdout.write(urllib.request.urlopen("http://127.0.0.1:{METRICS_PORT}/metrics", timeout=10).read().decode())
"""


def wait_for(cond: Callable[[], Any], timeout: float, what: str, step: float = 0.2) -> Any:
    from ipvsync.control import ControlUnavailable

    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = cond()
        except (OSError, KeyError, ValueError, ControlUnavailable) as exc:  # daemon not up yet
            last = exc
        if last and not isinstance(last, Exception):
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what} (last: {last!r})")
        time.sleep(step)


def config_text(s: list[str], hold: str, web_s0_weight: int = 1, broken: bool = False) -> str:
    text = f"""\
        version: 1
        vip_interface: ipvsync0
        reconcile_interval: 1s
        sysctls: {{net.ipv4.ip_forward: 1, net.ipv4.vs.expire_nodest_conn: 1}}
        metrics: {{listen: 127.0.0.1:{METRICS_PORT}}}
        defaults:
          scheduler: rr
          health: {HEALTH}
        services:
          web:
            vip: {VIP}
            port: 80
            real_servers:
              - {{address: {s[0]}, weight: {web_s0_weight}}}
              - {s[1]}
              - {s[3]}
          edge:
            vip: {VIP}
            port: 81
            real_servers:
              - {{address: {s[0]}, health: {{type: tcp, interval: 0.3s, timeout: 0.3s, initial: down, rise: 1000}}}}
              - {{address: {s[1]}, health: {{type: tcp, interval: 0.3s, timeout: 0.3s, initial: up, fall: 1000}}}}
          hold:
            vip: {VIP}
            port: 82
            drain_timeout: 10m
            real_servers: [{hold}]
        """
    if broken:
        text += "    persistence: {timeout: forever}\n"
    return textwrap.dedent(text)


class Daemon:
    """`ipvsync run` in the director namespace; its log in a file; control socket in-process."""

    def __init__(self, ns: Netns, base: Path) -> None:
        self.ns = ns
        self.base = base
        self.config = base / "ipvsync.yaml"
        self.state = base / "state"
        self.run_dir = base / "run"
        self.logfile = base / "daemon.log"
        self.proc: subprocess.Popen[str] | None = None

    def write(self, text: str) -> None:
        tmp = self.config.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.config)  # like an editor: write a temp file, rename over

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("IPVSYNC_TEST_FAULT")}
        env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH")
                                                                 else []))
        env.update(extra)
        return env

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "ipvsync", "--state-dir", str(self.state), "--runtime-dir",
                str(self.run_dir), *args]

    def start(self, **env: str) -> None:
        with open(self.logfile, "a") as log:
            log.write(f"---- start {env}\n")
            log.flush()
            self.proc = self.ns.popen(self.argv("run", "-c", str(self.config)), stdout=log,
                                      stderr=subprocess.STDOUT, env=self.env(**env))
        wait_for(lambda: self.request({"cmd": "ping"}).get("ok") or self._died(), 90, "the daemon to answer")

    def _died(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"the daemon exited with {self.proc.returncode}:\n{self.log()}")
        return False

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(timeout=60) == 0, self.log()

    def request(self, payload: dict[str, Any]) -> dict[str, Any]:
        from ipvsync.control import request

        return request(str(self.run_dir), payload, timeout=60)

    def status(self) -> dict[str, Any]:
        answer = self.request({"cmd": "status"})
        assert answer["ok"], answer
        return answer["status"]

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.ns.run(self.argv(*args), check=False, env=self.env(), timeout=180)

    def log(self) -> str:
        return self.logfile.read_text(errors="replace") if self.logfile.exists() else ""


def rs_of(doc: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """(service name, real server) -> real server entry of a status document."""
    return {(s["name"], r["real_server"]): r for s in doc["services"] for r in s["real_servers"]}


def kernel_weights(ns: Netns) -> dict[str, int]:
    """'VIP:PORT RS:PORT' -> weight from `ipvsadm -Ln`."""
    out, svc, found = ns.run(["ipvsadm", "-Ln"]).stdout, "", {}
    for line in out.splitlines():
        parts = line.split()
        if parts and parts[0] in ("TCP", "UDP", "SCTP"):
            svc = parts[1]
        elif parts and parts[0] == "->" and parts[1][0].isdigit():
            found[f"{svc} {parts[1]}"] = int(parts[3])
    return found


def check_schema(doc: dict[str, Any]) -> None:
    import jsonschema

    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(doc), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def check_text(out: str) -> None:
    assert "\x1b" not in out, "colour codes on a pipe"
    long = [ln for ln in out.splitlines() if len(ln) > 80]
    assert not long, "lines over 80 columns:\n" + "\n".join(long)


def scrape(ns: Netns) -> dict[str, Any]:
    """name -> family, and a flat {(sample name, frozenset(labels)): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    text = ns.run([sys.executable, "-I", "-S", "-c", SCRAPE]).stdout
    families = {f.name: f for f in text_string_to_metric_families(text)}
    return families


def sample(families: dict[str, Any], family: str, name: str | None = None, **labels: str) -> float:
    fam = families[family]
    hits = [s.value for s in fam.samples
            if s.name == (name or family) and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(hits) == 1, f"{name or family} {labels}: {hits} in {fam.samples}"
    return hits[0]


def test_operator_surface(netns: Netns, topology: Callable[..., Topology], tmp_path: Path,
                          capsys: pytest.CaptureFixture[str]) -> None:
    topo = topology(n_servers=4)
    s = [h.ip4 for h in topo.servers]
    web = lambda i: f"{s[i]}:80"  # noqa: E731
    procs = {
        "s0:80": topo.servers[0].serve_whoami(port=80), "s0:81": topo.servers[0].serve_whoami(port=81),
        "s1:80": topo.servers[1].serve_whoami(port=80), "s1:81": topo.servers[1].serve_whoami(port=81),
        "s3:80": topo.servers[3].serve_whoami(port=80),
    }
    (tmp_path / "hold_server.py").write_text(HOLD_SERVER)
    (tmp_path / "hold_client.py").write_text(HOLD_CLIENT)
    hold_srv = topo.servers[2].ns.popen([sys.executable, "-I", "-S", str(tmp_path / "hold_server.py")])
    assert hold_srv.stdout is not None and hold_srv.stdout.readline().strip() == "ready"

    d = Daemon(netns, tmp_path)
    d.write(config_text(s, hold=s[2]))
    d.start()

    # -- everything up (edge: s0 rising, s1 up/falling), then a connection held open to s2:82
    def all_in() -> bool:
        w = kernel_weights(netns)
        return all(w.get(k) == 1 for k in (f"{VIP}:80 {web(0)}", f"{VIP}:80 {web(1)}", f"{VIP}:80 {web(3)}",
                                           f"{VIP}:82 {s[2]}:82", f"{VIP}:81 {s[1]}:81"))
    wait_for(all_in, 30, "every real server in rotation")
    holder = topo.client.ns.popen([sys.executable, "-I", "-S", str(tmp_path / "hold_client.py")])
    assert holder.stdout is not None and holder.stdout.readline().strip() == "connected"
    wait_for(lambda: rs_of(d.status())[("hold", f"{s[2]}:82")]["active_connections"] >= 1, 15,
             "the held connection on s2:82")

    # -- s1 killed -> down (web) / falling (edge); s3 drained by the operator; s2 leaves the config
    for key in ("s1:80", "s1:81"):
        procs[key].kill()
        procs[key].wait()
    drain = d.cli("drain", "web", s[3])  # the config's shorthand: no port = the service port
    assert drain.returncode == 0, drain.stderr
    assert f"{web(3)} of web drained (weight 0 until undrain)" in drain.stdout
    again = d.request({"cmd": "drain", "service": "web", "real_server": web(3)})
    assert again["ok"] and "already drained" in again["message"]
    bad = d.request({"cmd": "drain", "service": "web", "real_server": "198.51.100.99"})
    assert not bad["ok"] and "not a real server of web" in bad["error"]
    d.write(config_text(s, hold=f"{s[3]}:82"))
    reload = d.request({"cmd": "reload"})
    assert reload["ok"] and reload["result"] == "applied", reload

    want_health = {("web", web(0)): "up", ("web", web(1)): "down", ("web", web(3)): "drained-by-operator",
                   ("edge", f"{s[0]}:81"): "rising", ("edge", f"{s[1]}:81"): "falling",
                   ("hold", f"{s[2]}:82"): "draining"}

    def settled() -> dict[str, Any] | None:
        doc = d.status()
        got = {k: r["health"] for k, r in rs_of(doc).items() if k in want_health}
        return doc if got == want_health else None
    wait_for(settled, 30, f"health states {want_health}")
    wait_for(lambda: kernel_weights(netns).get(f"{VIP}:80 {web(1)}") == 0, 15, "s1 at weight 0 in the kernel")

    # -- traffic: only s0 serves web
    answers = topo.client.ask(VIP, 80, count=6)
    assert answers == [topo.servers[0].name] * 6, answers
    # the kernel folds its per-CPU counters into what it reports every 2 s: wait for them
    wait_for(lambda: rs_of(d.status())[("web", web(0))]["connections"] >= 6, 15, "s0's connection counter")

    # -- status --json (the CLI), validated against the schema; the text; plan both ways
    js = d.cli("status", "--json")
    assert js.returncode == 0, js.stderr
    doc = json.loads(js.stdout)
    check_schema(doc)
    assert doc["version"] == 1
    rs = rs_of(doc)
    assert {k: rs[k]["health"] for k in want_health} == want_health
    w0, w1, w3 = rs[("web", web(0))], rs[("web", web(1))], rs[("web", web(3))]
    assert (w0["configured_weight"], w0["effective_weight"], w0["kernel_weight"]) == (1, 1, 1)
    assert (w1["configured_weight"], w1["effective_weight"], w1["kernel_weight"]) == (1, 0, 0)
    assert w1["last_failure"], w1
    assert (w3["configured_weight"], w3["effective_weight"], w3["kernel_weight"]) == (1, 0, 0)
    assert w3["drained_by"]["who"].startswith("uid 0 pid ") and w3["drained_by"]["since"] > time.time() - 300
    assert w0["connections"] >= 6 and w0["inactive_connections"] + w0["active_connections"] >= 1, w0
    assert w0["in_packets"] > 0 and w0["out_packets"] > 0 and w0["in_bytes"] > 0 and w0["out_bytes"] > 0, w0
    rising, falling = rs[("edge", f"{s[0]}:81")], rs[("edge", f"{s[1]}:81")]
    assert (rising["effective_weight"], falling["effective_weight"]) == (0, 1)
    held = rs[("hold", f"{s[2]}:82")]
    assert (held["configured_weight"], held["effective_weight"], held["kernel_weight"]) == (None, 0, 0), held
    assert held["active_connections"] == 1
    assert doc["last_reload"]["result"] == "applied" and doc["last_reload"]["code"] == 0
    one = d.cli("status", "edge", "--json")
    assert [x["name"] for x in json.loads(one.stdout)["services"]] == ["edge"]

    text = d.cli("status")
    assert text.returncode == 0, text.stderr
    check_text(text.stdout)
    for word in ("drained-by-operator", "draining", "rising", "falling", "down", "up", "last reload:",
                 f"web  tcp {VIP}:80  rr", web(3)):
        assert word in text.stdout, f"{word!r} not in:\n{text.stdout}"
    line = next(ln for ln in text.stdout.splitlines() if ln.strip().startswith(web(3)))
    assert re.search(r"\b0/1\b", line), line  # effective/configured weight

    live = d.cli("plan", "-c", str(d.config))
    assert live.returncode == 0, live.stderr
    assert "Effective weights from the running daemon" in live.stdout and "No changes." in live.stdout, live.stdout
    configured = d.cli("plan", "--configured", "-c", str(d.config))
    assert configured.returncode == 0, configured.stderr
    for who in (web(1), web(3)):  # down, drained: the configured plan would put them back at weight 1
        assert re.search(rf"edit real server {re.escape(who)} of tcp {VIP}:80: weight 0->1", configured.stdout), \
            configured.stdout
    assert f"delete real server {s[2]}:82 from tcp {VIP}:82" in configured.stdout  # configured: no drain
    assert "No changes." not in configured.stdout
    assert re.search(rf"operator drain: {re.escape(web(3))} of web goes to weight 0 \(uid 0 pid \d+\)", d.log())

    # -- restart: the operator drain and the removal drain survive; first kernel op after it fails
    d.stop()
    assert kernel_weights(netns)[f"{VIP}:80 {web(3)}"] == 0  # stopping leaves the kernel as it is
    d.start(IPVSYNC_TEST_FAULT="1")
    doc = d.status()
    rs = rs_of(doc)
    assert rs[("web", web(3))]["health"] == "drained-by-operator", rs[("web", web(3))]
    assert rs[("hold", f"{s[2]}:82")]["health"] == "draining"
    assert kernel_weights(netns)[f"{VIP}:80 {web(3)}"] == 0
    assert doc["last_reload"]["result"] == "applied"

    # rejected: a broken edit, `ipvsync reload` exits 1 and says why; the kernel is untouched
    before = netns.ipvsadm_save()
    d.write(config_text(s, hold=f"{s[3]}:82", broken=True))
    rejected = d.cli("reload")
    assert rejected.returncode == 1, (rejected.stdout, rejected.stderr)
    assert f"{d.config}:" in rejected.stderr and "reload rejected" in rejected.stderr, rejected.stderr
    lr = d.status()["last_reload"]
    assert lr["result"] == "rejected" and lr["code"] == 1 and lr["errors"], lr
    assert any(str(d.config) in e for e in lr["errors"]), lr
    assert netns.ipvsadm_save() == before

    # rolled back: a good edit whose first kernel operation fails (IPVSYNC_TEST_FAULT=1). The
    # daemon's file watch normally gets there first; ask explicitly only if it did not.
    d.write(config_text(s, hold=f"{s[3]}:82", web_s0_weight=2))
    try:
        lr = wait_for(lambda: (lambda x: x if x["result"] != "rejected" else None)(d.status()["last_reload"]),
                      30, "the file watch to reload")  # a late explicit reload would find the fault used up
    except AssertionError:
        lr = d.request({"cmd": "reload"})
    assert lr["result"] == "rolled back" and lr["code"] == 5, lr
    assert "rolled back" in lr["message"], lr
    assert netns.ipvsadm_save() == before
    doc = d.status()
    check_schema(doc)
    assert doc["last_reload"]["result"] == "rolled back"
    text = d.cli("status")
    check_text(text.stdout)
    assert "rolled back" in text.stdout, text.stdout

    # the good config again: applied (the fault was used up)
    d.write(config_text(s, hold=f"{s[3]}:82"))
    wait_for(lambda: d.status()["last_reload"]["result"] == "applied" or
             d.request({"cmd": "reload"})["result"] == "applied", 20, "the good config applied again")

    # drift: someone edits a weight behind the daemon's back; the reconcile (1 s) repairs it
    netns.run(["ipvsadm", "-e", "-t", f"{VIP}:80", "-r", web(0), "-m", "-w", "7"])
    wait_for(lambda: kernel_weights(netns)[f"{VIP}:80 {web(0)}"] == 1, 20, "the drift repaired")
    # the daemon logs the repair after the kernel operation: the weight can be back before the line is
    wait_for(lambda: "drift repaired" in d.log(), 10, "'drift repaired' in the daemon's log")

    # -- metrics, scraped over HTTP inside the namespace, parsed with prometheus-client's parser
    topo.client.ask(VIP, 80, count=2)
    lab = {"service": "web", "real_server": web(0)}

    def scraped_with_counters() -> Any:
        # the kernel folds per-CPU counters into what it reports every 2 s: poll for them
        mm = scrape(netns)
        conns = sample(mm, "ipvsync_real_server_connections", "ipvsync_real_server_connections_total", **lab)
        return mm if conns >= 8 else None

    m = wait_for(scraped_with_counters, 15, "the kernel's connection counters in the metrics")
    assert sample(m, "ipvsync_real_server_up", **lab) == 1
    assert sample(m, "ipvsync_real_server_up", service="web", real_server=web(1)) == 0
    assert sample(m, "ipvsync_real_server_effective_weight", service="web", real_server=web(3)) == 0
    assert sample(m, "ipvsync_real_server_configured_weight", service="web", real_server=web(3)) == 1
    assert sample(m, "ipvsync_real_server_drained", service="web", real_server=web(3)) == 1
    assert sample(m, "ipvsync_real_server_effective_weight", **lab) == 1
    assert m["ipvsync_real_server_connections"].type == "counter"
    assert sample(m, "ipvsync_real_server_connections", "ipvsync_real_server_connections_total", **lab) >= 8
    for fam in ("in_packets", "out_packets", "in_bytes", "out_bytes"):
        assert sample(m, f"ipvsync_real_server_{fam}", f"ipvsync_real_server_{fam}_total", **lab) > 0, fam
    assert sample(m, "ipvsync_real_server_active_connections", service="hold", real_server=f"{s[3]}:82") == 0
    assert m["ipvsync_real_server_up"].type == "gauge"
    reloads = {r: sample(m, "ipvsync_reloads", "ipvsync_reloads_total", result=r)
               for r in ("applied", "rejected", "rolled_back")}
    assert reloads["applied"] >= 2 and reloads["rejected"] >= 1 and reloads["rolled_back"] == 1, reloads
    assert sample(m, "ipvsync_drift_repairs", "ipvsync_drift_repairs_total") >= 1
    assert sample(m, "ipvsync_last_apply_duration_seconds") > 0
    ops = {s_.labels["kind"]: s_.value for s_ in m["ipvsync_last_apply_operations"].samples}
    assert ops.get("edit_dest", 0) >= 1, ops  # the drift repair
    hist = m["ipvsync_probe_duration_seconds"]
    assert hist.type == "histogram"
    count = [x.value for x in hist.samples if x.name.endswith("_count") and x.labels.get("check") == "tcp"]
    assert count and count[0] > 0, hist.samples
    assert any(x.name.endswith("_bucket") and x.labels.get("le") == "+Inf" for x in hist.samples)

    # -- undrain after the restart: back to weight 1, logged
    und = d.cli("undrain", "web", web(3))
    assert und.returncode == 0 and "undrained" in und.stdout, (und.stdout, und.stderr)
    wait_for(lambda: kernel_weights(netns)[f"{VIP}:80 {web(3)}"] == 1, 15, "s3 back at weight 1")
    assert rs_of(d.status())[("web", web(3))]["health"] == "up"
    assert re.search(rf"operator undrain: {re.escape(web(3))} of web back in rotation \(uid 0 pid \d+\)", d.log())
    holder.kill()

    # -- no daemon: every command says so, exit 4
    d.stop()
    from ipvsync.cli import main as cli_main

    capsys.readouterr()
    for args in (["status"], ["status", "--json"], ["drain", "web", s[3]], ["undrain", "web", s[3]], ["reload"]):
        code = cli_main(["--runtime-dir", str(d.run_dir), *args])  # in-process: no kernel needed
        err = capsys.readouterr().err
        assert code == 4, (args, err)
        assert "no ipvsync daemon is running" in err, (args, err)
    r = d.cli("plan", "-c", str(d.config))
    assert r.returncode == 0 and "No daemon is running for this config: showing configured weights" in r.stdout, r
