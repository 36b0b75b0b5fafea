"""The libyaml-free service reader (config.fastyaml) must equal libyaml, or step aside (None)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from ipvsync.config.chunks import _parse_chunk_libyaml
from ipvsync.config.fastyaml import read_service

# shapes people write; each must be read by the fast reader (not just fall back)
PLAIN = [
    "  web:\n    vip: 192.0.2.10\n    port: 80\n    real_servers:\n      - 198.51.100.11:8080\n"
    "      - {address: 198.51.100.12, port: 8080, weight: 3, upper_threshold: 1000, lower_threshold: 800}\n",
    "  web-dr:\n    vip: 192.0.2.20\n    port: 80\n    forward: dr\n    scheduler: sh\n"
    "    scheduler_flags: [sh-port]\n    real_servers: [198.51.100.31, 198.51.100.32]\n",
    "  dns:\n    vip: 192.0.2.53   # the resolver\n    port: 53\n    protocol: udp\n    one_packet: true\n"
    "\n    # the pair\n    real_servers: [ 198.51.100.21 , 198.51.100.22 ]\n",
    "  tunnelled:\n    vip: 192.0.2.30\n    port: 443\n    forward: tun\n    tunnel: {type: ipip}\n"
    "    persistence: {timeout: 300s, netmask: 255.255.255.0}\n    real_servers: [203.0.113.41]\n",
    "  marked:\n    fwmark: 10\n    family: inet6\n    vips: ['2001:db8::40']\n    real_servers:\n"
    "      - '[2001:db8::51]:80'\n      - \"[2001:db8::52]:80\"\n",
    "    svc.v2_x:\n      vip: 2001:db8::10\n      port: 443\n      description: the web front end, v2\n"
    "      health:\n        type: http\n        path: /healthz\n        status: [200-299, 301]\n"
    "        interval: 2s\n        rise: 2\n        fall: 3\n        host: www.example.org\n"
    "      real_servers:\n        - address: 2001:db8::1\n          weight: 0\n          health: {type: none}\n"
    "        -   address: 2001:db8::2\n            port: 8443\n        - '[2001:db8::3]:443'\n",
    "  e:\n    vip: 192.0.2.9\n    port: 80\n    health:\n      type: exec\n"
    "      command: [/usr/bin/check, --port, 80]\n"
    "      timeout: 1.5\n      user: nobody\n    quorum: 2\n    sorry_server: 198.51.100.99:80\n"
    "    withdraw_vip: false\n    drain_timeout: 0\n    slow_start: 30s\n    real_servers: []\n    extra: {}\n",
    "  n:\n    vip: 192.0.2.9\n    port: 80\n    weight: -3\n    nothing: null\n    tilde: ~\n    f: .5\n    big: 1e3\n"
    "    real_servers:\n    - 198.51.100.1\n",  # an indentless sequence: fast reader steps aside (checked below)
]
MUST_BE_FAST = PLAIN[:-1]

ALPHABET = list(" :-#,[]{}'\"&*!|>%@`?~\n\t0123456789abcxyz.\\") + [": ", "- ", " #", "  ", "\n  ", "\n    ",
                                                                     "\u00a0", "\u2028", "\x85", "\ufeff", "\x07"]


def typed(value: Any) -> Any:
    """Values with their types spelled out, so that 1, 1.0 and True differ."""
    if isinstance(value, dict):
        return {k: typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [typed(v) for v in value]
    return (type(value).__name__, value)


def slow(text: str, line0: int) -> Any:
    parsed = _parse_chunk_libyaml(text, "f.yaml", line0)
    if parsed is None:
        return None
    chunk, used = parsed
    return chunk.name, typed(chunk.value), chunk.marks, used


def fast(text: str, line0: int) -> Any:
    got = read_service(text, line0)
    if got is None:
        assert read_service(text, line0, marks=False) is None
        return None
    name, value, marks, used, rs_lines = got
    assert marks is not None
    # the first read of the daemon keeps no marks, only the lines of the name and the real servers
    lazy = read_service(text, line0, marks=False)
    assert lazy is not None and lazy[2] is None
    assert (lazy[0], typed(lazy[1]), lazy[3], lazy[4]) == (name, typed(value), used, rs_lines)
    assert marks[("services", name)][0] == line0 + 1 + rs_lines[0]
    for i, rel in enumerate(rs_lines[1:]):
        assert marks[("services", name, "real_servers", i)][0] == line0 + 1 + rel
    return name, typed(value), marks, used


@pytest.mark.parametrize("text", MUST_BE_FAST)
def test_plain_shapes_are_read_and_equal_libyaml(text: str) -> None:
    for line0 in (0, 7):
        got = fast(text, line0)
        assert got is not None, text
        assert got == slow(text, line0)
        value = read_service(text, line0)[1]  # type: ignore[index]
        rs = value.get("real_servers")
        if isinstance(rs, list) and rs and "real_servers: [" not in text:  # a block list: every line kept
            assert len(read_service(text, line0)[4]) == len(rs) + 1  # type: ignore[index]


def test_lazy_marks_through_the_document() -> None:
    """A cold chunked parse keeps no marks; where(), line_of() and all_marks() give a full parse's."""
    from ipvsync.config.chunks import parse_services_incrementally
    from ipvsync.config.load import parse

    text = "version: 1\nservices:\n" + "".join(PLAIN[:-1]) + "  last:\n    vip: 192.0.2.99\n    port: 1\n"
    eager = parse(text, "f.yaml")
    lazy = parse_services_incrementally(text, "f.yaml", {})
    assert lazy is not None and lazy.entry_lines and not any(isinstance(m, dict) for m in lazy.service_marks.values())
    for path in eager.all_marks():
        if len(path) in (2, 4) and path[0] == "services":
            assert lazy.line_of(path) == eager.where(path)[0], path
    assert lazy.where(("services", "dns", "real_servers", 1)) == eager.where(("services", "dns", "real_servers", 1))
    assert lazy.all_marks() == eager.all_marks()


def test_indentless_sequence_steps_aside() -> None:
    assert read_service(PLAIN[-1], 0) is None
    assert slow(PLAIN[-1], 0) is not None


@pytest.mark.parametrize("text", [
    "  a:\n    vip: &x 192.0.2.1\n",
    "  a:\n    vip: !!str 1\n",
    "  a:\n    d: |\n      text\n",
    "  a:\n    d: long\n      continued\n",
    "  a:\n    on: 1\n    off: yes\n",
    "  a:\n    port: 22:22\n",
    "  a:\n    k: 1\n    k: 2\n",
    "  a:\n    k: 'it''s'\n",
    "  a:\n    k: \"tab\\there\"\n",
    "  a:\n    k: [1,\n      2]\n",
    "  a:\n    k:\n",
    "  a:\n    k: a: b\n",
    "  a:\n   k: 1\n    j: 2\n",
    "  a:\n    <<: {x: 1}\n",
])
def test_unusual_text_steps_aside(text: str) -> None:
    assert read_service(text, 0) is None


def test_mutations_equal_libyaml_whenever_read() -> None:
    """Fuzz: random character-level edits; a fast answer must equal libyaml's (values, types, marks, nodes)."""
    rng = random.Random(11)
    read = 0
    for n in range(6000):
        text = rng.choice(PLAIN)
        chars = list(text)
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(chars))
            op = rng.random()
            if op < 0.45:
                chars.insert(i, rng.choice(ALPHABET))
            elif op < 0.8:
                del chars[i]
            else:
                chars[i] = rng.choice(ALPHABET)
        mutated = "".join(chars)
        got = fast(mutated, n % 5)
        if got is not None:
            read += 1
            assert got == slow(mutated, n % 5), mutated
    assert read > 1000  # the fuzz exercised the fast reader, not only its refusals
