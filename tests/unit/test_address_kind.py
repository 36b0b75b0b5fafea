"""address_kind's inet_pton fast path must accept, reject and classify exactly as ipaddress does."""

from __future__ import annotations

import ipaddress
import random

from ipvsync.config.build import address_kind


def reference(text: str) -> object:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return "error"
    bad = "unspecified" if ip.is_unspecified else "multicast" if ip.is_multicast else ""
    return (str(ip), ip.version, bad)


def ours(text: str) -> object:
    try:
        return address_kind(text)
    except ValueError:
        return "error"


def test_same_as_ipaddress() -> None:
    cases = ["1.2.3.4", "01.2.3.4", "1.2.3", "1.2.3.4.5", "256.1.1.1", "0.0.0.0", "224.0.0.1", "239.255.255.255",
             "240.0.0.1", " 1.2.3.4", "1.2.3.4 ", "1.2.3.4\n", "1.2.3.04", "1..3.4", "+1.2.3.4", "1.2.3.4/32",
             "0x1.2.3.4", "1.2.3.4a", "\u0661.2.3.4", "1.2.3.\u0664", "", "::1", "2001:db8::1", "::ffff:1.2.3.4",
             "ff02::1", "::", "00.0.0.0", "198.51.100.7"]
    rng = random.Random(1)
    for _ in range(5000):
        parts = [rng.choice(["0", "1", "00", "01", "9", "10", "099", "255", "256", "-1", "a", "", " 1"])
                 for _ in range(rng.choice([3, 4, 4, 4, 5]))]
        cases.append(".".join(parts))
    assert [c for c in cases if reference(c) != ours(c)] == []
