"""Issue 2, behaviour 8 (kernel half): `apply` of a bad config exits 1 and leaves the kernel unchanged.

The messages themselves are checked for every file on the host (tests/unit/test_bad_inputs.py);
here a sample of them is applied over a live, ipvsync-owned table in the UML kernel.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers_foundation import REPO, Director

pytestmark = pytest.mark.kernel

BAD = REPO / "tests" / "data" / "bad"
SAMPLE = ["duplicate-key", "yaml11-on", "yaml11-sexagesimal-port", "unknown-service-key", "duplicate-service-key",
          "v6-rs-behind-v4-nat", "sh-flag-with-wrr", "dr-port-remap", "recursive-alias", "alias-bomb",
          "multiple-documents", "empty", "binary-junk", "fwmark-with-vip", "many-errors"]


@pytest.fixture
def director(netns: Any, tmp_path: Path) -> Iterator[Director]:
    d = Director(netns, tmp_path)
    try:
        yield d
    finally:
        d.close()


def test_bad_configs_leave_the_kernel_unchanged(director: Director) -> None:
    d = director
    assert d.apply(REPO / "ipvsync.yaml.example").rc == 0
    d.netns.run(["ipvsadm", "-A", "-t", "192.0.2.200:25", "-s", "lc"])
    snap, state = d.snapshot(), d.state()
    for name in SAMPLE:
        path = BAD / f"{name}.yaml"
        first_line = (BAD / f"{name}.expect").read_text().split(":", 1)[0]
        for res in ([d.apply(path), d.cli_process("apply", config=path)] if name == "duplicate-key"
                    else [d.apply(path)]):
            assert res.rc == 1, f"{name}: {res.text}"
            assert f"{path}:{first_line}:" in res.err and "nothing was changed" in res.err, f"{name}: {res.err}"
            assert res.out == ""
        assert d.snapshot() == snap, name
        assert d.state() == state, name
    # plan refuses the same way
    res = d.plan(config=BAD / "duplicate-key.yaml")
    assert res.rc == 1 and res.out == ""
