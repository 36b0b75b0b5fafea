"""from_config reuses its previous result for a config that differs by in-place edits: the result
must equal a fresh computation, in the same order."""

from __future__ import annotations

from pathlib import Path

import pytest

import ipvsync.desired as D
from ipvsync.config.build import load_config


def text(weights: dict[int, int], vip_of: dict[int, str] | None = None, n: int = 12) -> str:
    vip_of = vip_of or {}
    out = ["version: 1", "services:"]
    for i in range(n):
        w = weights.get(i, 1)
        out += [f"  s{i}:", f"    vip: {vip_of.get(i, f'192.0.2.{i % 4 + 1}')}", f"    port: {100 + i}",
                "    real_servers:", f"      - {{address: 198.51.100.{i + 1}, weight: {w}}}"]
    return "\n".join(out) + "\n"


def fresh(config):  # noqa: ANN001, ANN201
    D._PREV = None
    D._LAST = {}
    return D.from_config(config)


@pytest.mark.parametrize("edit", [
    {"weights": {3: 5}},
    {"weights": {3: 5, 7: 0}},
    {"weights": {}, "vip_of": {2: "192.0.2.99"}},  # a VIP declaration changed: the long way
    {"weights": {}, "n": 11},  # a service left
    {"weights": {}, "n": 13},  # a service came
])
def test_incremental_equals_fresh(tmp_path: Path, edit: dict) -> None:
    cfg = tmp_path / "c.yaml"
    cache: dict = {}
    cfg.write_text(text({}))
    first = load_config(str(cfg), cache)
    D.from_config(first)
    cfg.write_text(text(edit["weights"], edit.get("vip_of"), edit.get("n", 12)))
    second = load_config(str(cfg), cache)
    got = D.from_config(second)
    want = fresh(second)
    assert got == want
    assert list(got.services) == list(want.services)
    assert list(got.vips.items()) == list(want.vips.items())
