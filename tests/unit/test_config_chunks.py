"""The incremental services parse (config.chunks) must give exactly what a full parse gives."""

from __future__ import annotations

import random

import pytest

from ipvsync.config.chunks import parse_services_incrementally
from ipvsync.config.load import ConfigInvalid, parse


def service(i: int, weight: int | None = None) -> str:
    rs2 = f"{{address: 198.51.100.{i % 250 + 1}, port: 8080, weight: {weight}}}" if weight else \
        f"198.51.100.{i % 250 + 1}:8080"
    return (f"  svc-{i}:\n    vip: 192.0.2.{i % 250 + 1}\n    port: {1000 + i}\n    real_servers:\n"
            f"      - 203.0.113.{i % 250 + 1}:8080\n      - {rs2}\n")


HEAD = "version: 1\nvip_interface: ipvsync0\ndefaults:\n  scheduler: wlc\n"


def config(n: int = 30, weights: dict[int, int] | None = None, tail: str = "") -> str:
    weights = weights or {}
    return HEAD + "services:\n" + "".join(service(i, weights.get(i)) for i in range(n)) + tail


def full(text: str) -> tuple[str, object]:
    try:
        doc = parse(text, "f.yaml")
    except ConfigInvalid as exc:
        return "error", [str(e) for e in exc.errors]
    return "ok", (doc.data, doc.all_marks())


def incremental(before: str, after: str) -> tuple[str, object] | None:
    """What the daemon's cache path gives for `after` once `before` was parsed in full."""
    if full(before)[0] != "ok":
        return None  # an invalid file is never cached
    first = parse_services_incrementally(before, "f.yaml", {})
    chunks = first.chunks if first is not None else {}
    doc = parse_services_incrementally(after, "f.yaml", chunks)
    if doc is None:
        return None
    return "ok", (doc.data, doc.all_marks())


def check(before: str, after: str, *, fast: bool | None = None) -> None:
    got = incremental(before, after)
    if fast is not None:
        assert (got is not None) == fast, "fast path taken" if got else "fast path not taken"
    if got is not None:
        assert got == full(after)


def test_one_weight_edit_is_incremental_and_exact() -> None:
    check(config(), config(weights={7: 5}), fast=True)


def test_first_parse_is_by_chunks_and_exact() -> None:
    text = config(12)
    doc = parse_services_incrementally(text, "f.yaml", {})
    assert doc is not None and len(doc.chunks) == 12
    assert ("ok", (doc.data, doc.all_marks())) == full(text)


def test_lines_inserted_above_shift_marks() -> None:
    before = config()
    after = before.replace("defaults:\n", "# a comment\n\ndefaults:\n  forward: nat\n")
    check(before, after, fast=True)
    after2 = before.replace("  svc-3:\n", "  # note\n\n  svc-3:\n")
    check(before, after2, fast=True)


def test_add_remove_rename_reorder() -> None:
    before = config(10)
    check(before, config(11), fast=True)
    check(before, config(9), fast=True)
    check(before, before.replace("svc-4:", "renamed:"), fast=True)
    parts = before.split("  svc-")
    swapped = parts[0] + "  svc-" + "  svc-".join(parts[1:][::-1])
    check(before, swapped, fast=True)


def test_keys_after_the_block_and_comments() -> None:
    before = config(5, tail="allow_empty: false\n# end\n")
    check(before, config(5, {1: 3}, tail="allow_empty: true\n# end\n"), fast=True)


def test_duplicate_service_falls_back_to_the_full_error() -> None:
    before = config(5)
    check(before, before + service(2), fast=False)


def test_yaml_trap_in_edited_chunk_falls_back() -> None:
    before = config(5)
    check(before, before.replace("    port: 1002\n", "    port: 10:02\n"), fast=False)
    check(before, before.replace("    port: 1002\n", "    one_packet: on\n    port: 1002\n"), fast=False)


def test_alias_across_chunks_is_never_reused() -> None:
    before = config(4).replace("  svc-0:\n    vip: 192.0.2.1\n", "  svc-0:\n    vip: &v 192.0.2.1\n")
    before = before.replace("  svc-2:\n    vip: 192.0.2.3\n", "  svc-2:\n    vip: *v\n")
    after = before.replace("&v 192.0.2.1", "&v 192.0.2.99")
    check(before, after)
    got = incremental(before, after)
    assert got is None or got == full(after)


def test_anchor_in_defaults_alias_in_service() -> None:
    before = config(4).replace("  scheduler: wlc\n", "  scheduler: &s wlc\n").replace(
        "    port: 1001\n", "    port: 1001\n    scheduler: *s\n")
    check(before, before.replace("&s wlc", "&s rr"))


@pytest.mark.parametrize("edit", [
    lambda t: t.replace("    port: 1003\n", '    port: "10\n  svc-x: 1"\n'),          # quoted across a boundary
    lambda t: t.replace("services:\n", "services: {\n").replace("  svc-4:", "  svc-4: {}}\n  x:"),
    lambda t: t.replace("  svc-2:", "\tsvc-2:"),
    lambda t: t.replace("  svc-2:", " svc-2:"),
    lambda t: t.replace("  svc-2:", "  - svc-2:"),
    lambda t: t.replace("  svc-2:", "  ? svc-2\n  :"),
    lambda t: t + "services:\n  a: {}\n",
    lambda t: "%YAML 1.1\n---\n" + t,
    lambda t: t.replace("version: 1\n", "version: 1\n---\n"),
    lambda t: t.replace("  svc-3:\n", "  svc-3: |\n    text\n  svc-3b:\n"),
    lambda t: t.replace("  svc-3:\n", "  svc-3: >\n   folded\n"),
    lambda t: t.replace("  svc-3:\n", "  'svc-3':\n"),
    lambda t: t.replace("services:\n", "services:   # the services\n"),
    lambda t: t.replace("services:\n", "services:\n\n# top comment\n"),
    lambda t: t.replace("\n", "\r\n"),
    lambda t: t.rstrip("\n"),
    lambda t: t.replace("  svc-1:\n    vip", "  svc-1: !!str\n    vip"),
    lambda t: t.replace("  svc-1:\n", "  svc-1: &a\n").replace("  svc-2:\n    vip: 192.0.2.3\n    port: 1002\n"
                                                                 "    real_servers:\n", "  svc-2: *a\n  svc-2b:\n"
                                                                 "    real_servers:\n"),
])
def test_odd_shapes_equal_the_full_parse(edit) -> None:  # noqa: ANN001
    before = config(6)
    after = edit(before)
    check(before, after)
    check(after, before)


def test_random_line_edits_equal_the_full_parse() -> None:
    """Fuzz: random line-level edits; whenever the fast path answers, it equals the full parse."""
    rng = random.Random(4)
    pieces = ["  svc-z:\n", "    port: 9\n", "  # c\n", "\n", "      - 198.51.100.9\n", "x: 1\n", "    vip: '1\n",
              "  svc-1:\n", "    - a\n", "   odd: 1\n", "    weight: *nope\n", "  k: [1,\n", "  2]\n", "..\n"]
    base = config(8)
    for _ in range(400):
        lines = base.splitlines(keepends=True)
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(lines))
            op = rng.random()
            if op < 0.4:
                lines.insert(i, rng.choice(pieces))
            elif op < 0.7:
                del lines[i]
            else:
                lines[i] = lines[i].replace("1", "2")
        after = "".join(lines)
        check(base, after)
