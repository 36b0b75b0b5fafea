"""The state dir (ownership, drains, health, failures) and the runtime lock.

Rules of residence: files only. The state file is written atomically (temp + fsync + rename +
directory fsync) *before* the kernel changes, so a crash never leaves an object ipvsync created
without a record that it did. One writer per runtime dir: the lock is a flock on RUNTIME_DIR/lock.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
from dataclasses import dataclass, field
from typing import Any

from ipvsync.plan import Owned

STATE_VERSION = 1
STATE_FILE = "state.json"
LOCK_FILE = "lock"


def atomic_write(path: str, data: bytes, mode: int = 0o600) -> None:
    """Replace `path` with `data` so that readers see the old or the new file, never a mix."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = f"{path}.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


@dataclass
class State:
    """Everything ipvsync remembers between runs."""

    owned: Owned = field(default_factory=Owned)
    drains: dict[str, Any] = field(default_factory=dict)  # removal drains: key -> {since, deadline, ...}
    operator_drains: dict[str, Any] = field(default_factory=dict)  # "svc|rs" -> {who, when}
    health: dict[str, Any] = field(default_factory=dict)
    failure: dict[str, Any] | None = None  # last rollback failure, cleared by a good converge

    def to_json(self, owned: bool = True) -> dict[str, Any]:
        out = {"version": STATE_VERSION, "drains": self.drains, "operator_drains": self.operator_drains,
               "health": self.health, "failure": self.failure}
        if owned:
            out["owned"] = self.owned.to_json()
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> State:
        return cls(Owned.from_json(data.get("owned", {})), dict(data.get("drains", {})),
                   dict(data.get("operator_drains", {})), dict(data.get("health", {})), data.get("failure"))


class StateStore:
    """Loads and saves State in a directory."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.path = os.path.join(directory, STATE_FILE)

    def load(self) -> State:
        try:
            with open(self.path, encoding="utf-8") as fh:
                return State.from_json(json.load(fh))
        except FileNotFoundError:
            return State()
        except (ValueError, TypeError, KeyError) as exc:
            # a corrupt state file must not stop convergence; keep it for inspection
            os.replace(self.path, self.path + ".corrupt")
            raise StateCorrupt(f"{self.path}: unreadable state ({exc}); moved to {self.path}.corrupt") from None

    _written: bytes | None = None  # what this process last wrote: an unchanged state is not rewritten
    _owned: tuple[Owned, str] | None = None  # the last Owned serialised (the bulk of the file), by identity

    def save(self, state: State) -> None:
        if self._owned is None or self._owned[0] is not state.owned:
            self._owned = (state.owned, json.dumps(state.owned.to_json(), separators=(",", ":")))
        rest = json.dumps(state.to_json(owned=False), separators=(",", ":"))
        data = f'{{"owned":{self._owned[1]},{rest[1:]}\n'.encode()
        if data == self._written and os.path.exists(self.path):
            return  # no temp file, fsync and rename per weight edit when nothing recorded changed
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        atomic_write(self.path, data)
        self._written = data


class StateCorrupt(Exception):
    pass


class LockHeld(Exception):
    def __init__(self, path: str, pid: str) -> None:
        super().__init__(f"another ipvsync (pid {pid or '?'}) holds {path}")
        self.pid = pid


class RuntimeLock:
    """flock on RUNTIME_DIR/lock; the holder's pid is written inside for messages."""

    def __init__(self, runtime_dir: str) -> None:
        self.runtime_dir = runtime_dir
        self.path = os.path.join(runtime_dir, LOCK_FILE)
        self.fd: int | None = None

    def acquire(self) -> None:
        os.makedirs(self.runtime_dir, mode=0o755, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            pid = ""
            try:
                pid = os.pread(fd, 32, 0).decode(errors="replace").strip()
            finally:
                os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise LockHeld(self.path, pid) from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> RuntimeLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
