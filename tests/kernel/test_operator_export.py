"""Issue 7: `ipvsync export` round-trips. A kernel programmed by hand with ipvsadm (every service
shape: IPv4/IPv6, TCP/UDP, fwmark v4/v6, persistence with netmask and the SIP engine, NAT/DR/TUN
with GUE options, thresholds, sh/mh flags, one-packet scheduling) -> export -> `check` -> apply on
an empty namespace -> the same `ipvsadm -Sn`; exporting that again gives the same YAML.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from uml.netns import IpvsyncCmd, Netns

pytestmark = pytest.mark.kernel

IPVSADM_RESTORE = """\
-A -t 192.0.2.10:80 -s wrr -p 300 -M 255.255.255.0
-a -t 192.0.2.10:80 -r 198.51.100.11:8080 -m -w 1
-a -t 192.0.2.10:80 -r 198.51.100.12:8080 -m -w 3 -x 1000 -y 800
-A -t 192.0.2.20:80 -s sh -b sh-fallback,sh-port
-a -t 192.0.2.20:80 -r 198.51.100.31:80 -g -w 1
-a -t 192.0.2.20:80 -r 198.51.100.32:80 -g -w 2
-A -t 192.0.2.21:80 -s mh -b mh-port
-a -t 192.0.2.21:80 -r 198.51.100.33:80 -g -w 1
-a -t 192.0.2.21:80 -r 198.51.100.34:80 -m -w 1
-A -u 192.0.2.53:53 -s rr -o
-a -u 192.0.2.53:53 -r 198.51.100.21:53 -m -w 1
-a -u 192.0.2.53:53 -r 198.51.100.22:5353 -m -w 1
-A -u 192.0.2.60:5060 -s rr -p 120 --pe sip
-a -u 192.0.2.60:5060 -r 198.51.100.61:5060 -m -w 1
-A -t [2001:db8:f::10]:443 -s wlc -p 60 -M 64
-a -t [2001:db8:f::10]:443 -r [2001:db8:1::11]:8443 -m -w 2
-a -t [2001:db8:f::10]:443 -r [2001:db8:1::12]:8443 -m -w 0
-A -f 10 -s rr
-a -f 10 -r 198.51.100.51:0 -g -w 1
-a -f 10 -r 198.51.100.52:0 -g -w 4
-A -f 11 -6 -s lc
-a -f 11 -6 -r [2001:db8:1::51]:0 -g -w 1
-A -t 192.0.2.30:443 -s rr
-a -t 192.0.2.30:443 -r 203.0.113.41:443 -i -w 1
-A -t 192.0.2.31:443 -s rr
-a -t 192.0.2.31:443 -r 203.0.113.42:443 -i -w 1 --tun-type gue --tun-port 6080 --tun-csum
-A -t 192.0.2.32:443 -s rr
-a -t 192.0.2.32:443 -r 203.0.113.43:443 -i -w 1 --tun-type gre --tun-nocsum
"""


def test_export_apply_roundtrip(netns: Netns, make_netns: Callable[[], Netns], ipvsync_cmd: IpvsyncCmd,
                                tmp_path: Path) -> None:
    netns.run(["ipvsadm", "-R"], input=IPVSADM_RESTORE)
    source = netns.ipvsadm_save()
    assert source.count("-A ") == 11, source  # every shape made it into the kernel

    exported = ipvsync_cmd(netns, "export")
    assert exported.returncode == 0, exported.stderr
    yaml_file = tmp_path / "exported.yaml"
    yaml_file.write_text(exported.stdout)
    for needle in ("fwmark: 10", "fwmark: 11", "family: inet6", "one_packet: true", "engine: sip",
                   "scheduler_flags:", "upper_threshold: 1000", "lower_threshold: 800", "type: gue",
                   "port: 6080", "checksum: checksum", "type: gre", "checksum: none", "forward: dr",
                   "forward: tun", "netmask: 255.255.255.0", "netmask: /64"):
        assert needle in exported.stdout, f"{needle!r} missing from the export:\n{exported.stdout}"

    empty = make_netns()
    check = ipvsync_cmd(empty, "check", "-c", yaml_file)
    assert check.returncode == 0, check.stdout + check.stderr
    applied = ipvsync_cmd(empty, "apply", "-c", yaml_file)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert empty.ipvsadm_save() == source
    # `ipvsadm -S` leaves out thresholds: compare them from the listing
    listing = ["ipvsadm", "-Ln", "--thresholds"]
    thresholds = netns.run(listing).stdout
    assert re.search(r"198\.51\.100\.12:8080\s+1000\s+800\s", thresholds), thresholds
    assert sorted(empty.run(listing).stdout.splitlines()) == sorted(thresholds.splitlines())

    again = ipvsync_cmd(empty, "export")
    assert again.returncode == 0, again.stderr
    assert again.stdout == exported.stdout
    # and the applied namespace is converged: nothing left to do
    plan = ipvsync_cmd(empty, "plan", "--exit-code", "-c", yaml_file)
    assert plan.returncode == 0 and "No changes." in plan.stdout, plan.stdout + plan.stderr
