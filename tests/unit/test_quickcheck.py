"""config.quickcheck may say "valid" only when jsonschema agrees (it is a pre-check, never a judge),
and must say it for ordinary configs (otherwise it saves nothing)."""

from __future__ import annotations

import copy
import glob
import random
from pathlib import Path
from typing import Any

import pytest

from ipvsync.config.load import ConfigInvalid, parse
from ipvsync.config.schema import _quick_root, _quick_service, _service_validator, _validator

ROOT = Path(__file__).resolve().parents[2]


def documents() -> list[Any]:
    out = []
    files = [ROOT / "ipvsync.yaml.example", *map(Path, glob.glob(str(ROOT / "tests/data/**/*.yaml"), recursive=True)),
             *map(Path, glob.glob(str(ROOT / "docs/examples/*.yaml")))]
    for f in files:
        try:
            out.append(parse(f.read_text(), str(f)).data)
        except (ConfigInvalid, UnicodeDecodeError, OSError):
            continue
    return out


def services_of(data: Any) -> list[Any]:
    svcs = data.get("services") if isinstance(data, dict) else None
    return list(svcs.values()) if isinstance(svcs, dict) else []


def agrees(quick: Any, validator: Any, value: Any) -> bool:
    return not quick(value) or not list(validator.iter_errors(value))


def test_never_accepts_what_jsonschema_rejects_in_the_test_data() -> None:
    docs = documents()
    assert len(docs) > 20
    for data in docs:
        assert agrees(_quick_root(), _validator(), data)
        for svc in services_of(data):
            assert agrees(_quick_service(), _service_validator(), svc), svc


def test_accepts_the_example() -> None:
    data = parse((ROOT / "ipvsync.yaml.example").read_text(), "example").data
    assert _quick_root()(data)
    assert all(_quick_service()(s) for s in services_of(data))


MUTATIONS: list[Any] = [None, True, False, 0, 1, -1, 1.5, 70000, "", "x", "on", [], [1], {}, {"x": 1}, "1.2.3.4",
                        "rr", "wrr", "nat", "dr", "tcp", "10s", "1.5x", 255, 256, 65535, 65536]


def mutate(value: Any, rng: random.Random) -> Any:
    if isinstance(value, dict) and value and rng.random() < 0.7:
        k = rng.choice(list(value))
        value[k] = mutate(value[k], rng)
        return value
    if isinstance(value, list) and value and rng.random() < 0.7:
        i = rng.randrange(len(value))
        value[i] = mutate(value[i], rng)
        return value
    if isinstance(value, dict) and rng.random() < 0.3:
        value[rng.choice(["bogus", "weight", "port", "health", "forward", "type"])] = rng.choice(MUTATIONS)
        return value
    return copy.deepcopy(rng.choice(MUTATIONS))


@pytest.mark.parametrize("seed", range(4))
def test_fuzzed_services_never_falsely_accepted(seed: int) -> None:
    rng = random.Random(seed)
    base = [s for d in documents() for s in services_of(d) if isinstance(s, dict)]
    quick, validator = _quick_service(), _service_validator()
    accepted = 0
    for _ in range(1500):
        svc = mutate(copy.deepcopy(rng.choice(base)), rng)
        ok = quick(svc)
        accepted += ok
        assert not ok or not list(validator.iter_errors(svc)), svc
    assert accepted > 0  # the fuzz still exercises the accepting side
