"""Kernel.run_ipvs encodes and sends a slice at a time; results and stop-on-error as one call."""

from __future__ import annotations

from typing import Any

import pytest

from ipvsync.kernel import system


class FakeIpvs:
    def __init__(self, fail_at: int | None) -> None:
        self.fail_at = fail_at
        self.sent: list[Any] = []
        self.calls = 0

    def execute(self, payloads: list[Any], *, stop_on_error: bool = False) -> list[int | None]:
        assert stop_on_error
        self.calls += 1
        out: list[int | None] = []
        for p in payloads:
            if 5 in out:
                out.append(None)  # after a failure: not attempted
                continue
            self.sent.append(p)
            out.append(5 if p == self.fail_at else 0)
        return out


@pytest.mark.parametrize("n, fail_at", [(0, None), (10, None), (3000, None), (3000, 2500), (3000, 10),
                                        (2048, 1023), (2048, 1024)])
def test_slices_give_one_result_per_op_and_stop_after_an_error(monkeypatch: Any, n: int, fail_at: int | None) -> None:
    monkeypatch.setattr(system, "ipvs_payload", lambda op: op)
    k = object.__new__(system.Kernel)
    k.ipvs = FakeIpvs(fail_at)
    results = k.run_ipvs(list(range(n)))
    assert len(results) == n
    if fail_at is None:
        assert results == [0] * n and k.ipvs.sent == list(range(n))
        assert k.ipvs.calls == -(-n // system.ENCODE_SLICE)
    else:
        assert results[:fail_at] == [0] * fail_at and results[fail_at] == 5
        assert results[fail_at + 1:] == [None] * (n - fail_at - 1)
        assert k.ipvs.sent == list(range(fail_at + 1))  # nothing sent after the failed slice
