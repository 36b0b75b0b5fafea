"""Run a plan against the kernel: all of it, or — after a failure — none of it.

Rules of residence: the only place that sequences kernel writes. It records ownership before the
kernel changes, runs IPVS operations in batches (each ack says what took effect), treats EEXIST
from a concurrent writer as adoption (re-observe, re-plan), and on a real failure undoes every
operation that took effect, newest first. Knows nothing of files other than the state store,
nothing of time except measuring its own duration.
"""

from __future__ import annotations

import errno as E
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from ipvsync.desired import Desired
from ipvsync.model import SyncDaemon
from ipvsync.plan import (
    AddDaemon,
    AddDest,
    AddService,
    BindVip,
    CreateLink,
    DelDest,
    DelService,
    EditService,
    Observed,
    Op,
    Owned,
    Plan,
    UnbindVip,
    plan,
)
from ipvsync.state import State, StateStore

MAX_ADOPTION_ROUNDS = 4
_CREATES = (AddService, BindVip, CreateLink, AddDaemon)


class KernelPort(Protocol):
    """What apply needs from the kernel layer (kernel/system.py implements it; tests may fake it)."""

    def observe(self, vip_interface: str, *, daemons: bool = False, timeouts: bool = False) -> Observed: ...

    def run_ipvs(self, ops: list[Op]) -> list[int | None]: ...

    def run_other(self, op: Op) -> int: ...


@dataclass
class FaultSeam:
    """Test-only: make the Nth kernel operation (1-based, counting every attempt) fail with `errno`.

    Reachable only from code or the IPVSYNC_TEST_FAULT environment variable ("N[:ERRNO]"), never
    from configuration. `rollback_at` likewise fails the Mth rollback operation.
    """

    fail_at: int = 0
    errno: int = E.EIO
    rollback_at: int = 0
    count: int = 0
    rb_count: int = 0

    @classmethod
    def from_env(cls) -> FaultSeam | None:
        spec = os.environ.get("IPVSYNC_TEST_FAULT", "")
        rb = os.environ.get("IPVSYNC_TEST_FAULT_ROLLBACK", "")
        if not spec and not rb:
            return None
        n, _, err = spec.partition(":")
        return cls(int(n or 0), int(err or E.EIO), int(rb or 0))


@dataclass
class ApplyResult:
    plan: Plan
    applied: list[Op] = field(default_factory=list)
    failed: Op | None = None
    errno: int = 0
    error: str = ""
    rolled_back: int = 0
    rollback_failures: list[tuple[Op, int]] = field(default_factory=list)
    adopted: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.failed is None

    @property
    def exit_code(self) -> int:
        if self.rollback_failures:
            return 6
        return 0 if self.ok else 5

    def summary(self) -> str:
        if self.ok:
            if not self.applied and not self.adopted:
                return f"No changes ({self.seconds:.3f} s)."
            adopted = f", adopted {len(self.adopted)} object(s) made by another writer" if self.adopted else ""
            return f"Applied {len(self.applied)} operation(s) in {self.seconds:.3f} s{adopted}."
        lines = [f"apply failed: {self.error}"]
        if self.rollback_failures:
            lines.append(f"ROLLBACK FAILED for {len(self.rollback_failures)} operation(s); the kernel is in a "
                         "mixed state:")
            lines += [f"  {op}: {os.strerror(err)}" for op, err in self.rollback_failures]
        else:
            lines.append(f"rolled back {self.rolled_back} operation(s); the kernel is as it was before.")
        return "\n".join(lines)


def explain(op: Op, err: int) -> str:
    """Human text for a failed operation: what, why, where in the config."""
    why = os.strerror(err)
    if isinstance(op, (AddService, EditService)) and err == E.ENOENT:
        attrs = op.attrs if isinstance(op, AddService) else op.new
        why = (f"scheduler {attrs.scheduler!r} is not available in this kernel (module ip_vs_{attrs.scheduler} "
               "missing)")
        if attrs.pe_name:
            why += f" or persistence engine {attrs.pe_name!r} (module ip_vs_pe_{attrs.pe_name}) missing"
    elif isinstance(op, AddDest) and err == E.EAFNOSUPPORT:
        why = "address family not supported for this forwarding method"
    where = f" at {op.origin.file}:{op.origin.line} ({op.origin.path})" if op.origin.file else ""
    return f"{op.text()}{where}: [errno {err}] {why}"


def _benign(op: Op, err: int) -> str | None:
    """Classify errors that are not failures: 'adopt' (exists already) or 'gone' (deleted already)."""
    if err == E.EEXIST and isinstance(op, (AddService, AddDest, BindVip, CreateLink, AddDaemon)):
        return "adopt"
    if err in (E.ESRCH, E.ENOENT, E.EADDRNOTAVAIL, E.ENODEV) and isinstance(op, (DelService, DelDest, UnbindVip)):
        return "gone"
    return None


class Applier:
    """Converges the kernel to a Desired state, atomically as far as the kernel lets anyone."""

    def __init__(self, kernel: KernelPort, store: StateStore | None, fault: FaultSeam | None = None) -> None:
        self.kernel = kernel
        self.store = store
        self.fault = fault

    def _save(self, state: State) -> None:
        if self.store is not None:
            self.store.save(state)

    def _run(self, ops: tuple[Op, ...], done: list[Op], owned: Owned,
             adopted: list[str]) -> tuple[Owned, Op | None, int, bool]:
        """Execute ops in order. Returns (owned, failed op, errno, needs_replan)."""
        i = 0
        while i < len(ops):
            if ops[i].is_ipvs:
                j = i
                while j < len(ops) and ops[j].is_ipvs:
                    j += 1
                batch = list(ops[i:j])
                injected = None
                if self.fault and self.fault.fail_at:
                    left = self.fault.fail_at - self.fault.count
                    if 1 <= left <= len(batch):
                        batch, injected = batch[: left - 1], batch[left - 1]
                results = self.kernel.run_ipvs(batch) if batch else []
                if self.fault:
                    self.fault.count += len(batch)
                replan = False
                failed: tuple[Op, int] | None = None
                took = len(done)
                for op, res in zip(batch, results):
                    if res == 0:
                        done.append(op)
                    elif res is None or res == E.EINTR:
                        replan = True  # not attempted, or no ack (outcome unknown): re-read and re-plan
                    else:
                        kind = _benign(op, res)
                        if kind == "adopt":
                            adopted.append(op.text())
                            replan = True
                        elif kind is None and failed is None:
                            failed = (op, res)
                owned = owned.after_all(done[took:])
                if failed is None and injected is not None:
                    self.fault.count += 1  # type: ignore[union-attr]
                    failed = (injected, self.fault.errno)  # type: ignore[union-attr]
                if failed is not None:
                    return owned, failed[0], failed[1], False
                if replan:
                    return owned, None, 0, True
                i = j
            else:
                op = ops[i]
                if self.fault and self.fault.fail_at:
                    self.fault.count += 1
                    if self.fault.count == self.fault.fail_at:
                        return owned, op, self.fault.errno, False
                res = self.kernel.run_other(op)
                if res == 0:
                    done.append(op)
                    owned = owned.after(op)
                else:
                    kind = _benign(op, res)
                    if kind is None:
                        return owned, op, res, False
                    if kind == "adopt":
                        adopted.append(op.text())
                i += 1
        return owned, None, 0, False

    def _rollback(self, done: list[Op], owned: Owned) -> tuple[Owned, int, list[tuple[Op, int]]]:
        count = 0
        failures: list[tuple[Op, int]] = []
        for op in reversed(done):
            for inv in op.inverse():
                count += 1
                res: int | None
                if self.fault and self.fault.rollback_at:
                    self.fault.rb_count += 1
                    if self.fault.rb_count == self.fault.rollback_at:
                        failures.append((inv, self.fault.errno))
                        continue
                res = self.kernel.run_ipvs([inv])[0] if inv.is_ipvs else self.kernel.run_other(inv)
                if res == 0 or (res is not None and _benign(inv, res)):
                    owned = owned.after(inv)
                else:
                    failures.append((inv, res or E.EIO))
        return owned, count, failures

    def converge(self, desired: Desired, observed: Observed, state: State, *,
                 sync_daemons: tuple[SyncDaemon, ...] = (),
                 timeouts: tuple[int, int, int] | None = None, first_plan: Plan | None = None,
                 reobserve: Callable[[], Observed] | None = None) -> ApplyResult:
        """Plan and apply until the kernel matches, or roll back. Saves ownership in `state`."""
        t0 = time.monotonic()
        before = state.owned
        owned = before
        done: list[Op] = []
        adopted: list[str] = []
        p = first_plan or plan(desired, observed, owned, sync_daemons=sync_daemons, timeouts=timeouts)
        result = ApplyResult(p)
        for _round in range(MAX_ADOPTION_ROUNDS):
            if not p:
                break
            intended = owned.after_all(op for op in p.ops if isinstance(op, _CREATES))
            if intended != owned:
                state.owned = intended
                self._save(state)  # record before the kernel changes
            owned, failed, err, replan = self._run(p.ops, done, owned, adopted)
            if failed is not None:
                result.failed, result.errno, result.error = failed, err, explain(failed, err)
                owned, result.rolled_back, result.rollback_failures = self._rollback(done, owned)
                state.owned = owned if result.rollback_failures else before
                if result.rollback_failures:
                    state.failure = {"time": time.time(), "error": result.error,
                                     "rollback_failures": [f"{op}: {os.strerror(e)}"
                                                           for op, e in result.rollback_failures]}
                self._save(state)
                result.seconds = time.monotonic() - t0
                return result
            state.owned = owned
            if not replan:
                break
            observed = reobserve() if reobserve is not None else self.kernel.observe(
                desired.vip_interface, daemons=bool(sync_daemons) or bool(state.owned.daemons),
                timeouts=timeouts is not None)
            p = plan(desired, observed, owned, sync_daemons=sync_daemons, timeouts=timeouts)
        result.applied = done
        result.adopted = adopted
        state.failure = None
        self._save(state)
        result.seconds = time.monotonic() - t0
        return result
