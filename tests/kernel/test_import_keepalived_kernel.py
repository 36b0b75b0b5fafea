"""import-keepalived in the real kernel: keepalived and the imported YAML program the same IPVS table.

For each sample in tests/data/keepalived/: keepalived 2.2 (Debian's /usr/sbin/keepalived, checker
process only) loads the config in one fresh netns; `ipvsync apply` loads the imported YAML in
another; `ipvsadm -Sn` (and the thresholds, which -Sn does not print) must be identical.

Health checkers are stripped from the keepalived config first (the parsed tree is written back
without TCP_CHECK/HTTP_GET/... blocks, includes inlined) and that same stripped file is imported:
with checkers, keepalived would take unreachable real servers out within a delay_loop while a
one-shot `apply` programs the configured weights, so the two sides would not describe the same
moment. Without checkers both sides mean "every real server up at its weight" — the same semantics.
Health mapping (alpha, inhibit_on_failure, quorum/sorry server) is covered by the unit tests,
whose expected tables were taken from keepalived itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from uml.netns import IpvsyncCmd, Netns

from ipvsync.config.build import load_config
from ipvsync.importers.keepalived import CHECKERS, import_keepalived, parse_keepalived, render_keepalived

pytestmark = pytest.mark.kernel

DATA = Path(__file__).resolve().parent.parent / "data" / "keepalived"
SAMPLES = sorted(p.name for p in DATA.glob("*.conf"))
KEEPALIVED = "/usr/sbin/keepalived"
WAIT_SECONDS = 30.0


def _thresholds(ns: Netns) -> list[str]:
    """Real-server lines of `ipvsadm -Ln --thresholds` (address, upper, lower), sorted."""
    out = ns.run(["ipvsadm", "-Ln", "--thresholds"]).stdout
    return sorted(" ".join(line.split()[1:4]) for line in out.splitlines() if line.strip().startswith("->")
                  and not line.strip().startswith("-> RemoteAddress"))


def _wait_for_table(ns: Netns, n_lines: int, proc_alive: Callable[[], bool]) -> str:
    """Poll `ipvsadm -Sn` until it has `n_lines` lines and is unchanged for two polls (bounded)."""
    deadline = time.monotonic() + WAIT_SECONDS
    last = None
    while time.monotonic() < deadline:
        save = ns.ipvsadm_save()
        if save.count("\n") >= n_lines and save == last:
            return save
        if not proc_alive():
            break
        last = save
        time.sleep(0.5)
    return ns.ipvsadm_save()


CASES = SAMPLES


@pytest.mark.parametrize("name", CASES)
def test_keepalived_and_imported_config_program_the_same_table(
        name: str, make_netns: Callable[[], Netns], ipvsync_cmd: IpvsyncCmd, tmp_path: Path) -> None:
    conf = tmp_path / "keepalived.conf"
    conf.write_text(render_keepalived(parse_keepalived(str(DATA / name)), drop=CHECKERS))
    text, _notes = import_keepalived(str(conf))
    imported = tmp_path / "imported.yaml"
    imported.write_text(text)
    cfg = load_config(str(imported))
    n_lines = sum(1 + len(s.real_servers) for s in cfg.services)
    assert n_lines, "sample imports no services"

    ka_ns, ip_ns = make_netns(), make_netns()
    piddir = tmp_path / "pids"
    piddir.mkdir()
    log = (tmp_path / "keepalived.log").open("w")
    argv = [KEEPALIVED, "--dont-fork", "--log-console", "--log-detail", "--no-syslog", "--check",
            "--use-file", str(conf), "--pid", str(piddir / "keepalived.pid"),
            "--checkers_pid", str(piddir / "checkers.pid"), "--vrrp_pid", str(piddir / "vrrp.pid")]
    proc = ka_ns.popen(argv, stdout=log, stderr=log)
    try:
        ka_save = _wait_for_table(ka_ns, n_lines, lambda: proc.poll() is None)
        ka_thresholds = _thresholds(ka_ns)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()
    ka_log = (tmp_path / "keepalived.log").read_text()
    assert ka_save.count("\n") == n_lines, f"keepalived table incomplete:\n{ka_save}\n--- log ---\n{ka_log}"

    res = ipvsync_cmd(ip_ns, "apply", "-c", str(imported))
    assert res.returncode == 0, f"apply failed:\n{res.stdout}\n{res.stderr}\n--- yaml ---\n{text}"
    assert ip_ns.ipvsadm_save() == ka_save, f"--- yaml ---\n{text}\n--- keepalived log ---\n{ka_log}"
    assert _thresholds(ip_ns) == ka_thresholds
