"""systemd integration that degrades: the notify protocol and journald logging.

Rules of residence: knows $NOTIFY_SOCKET, $WATCHDOG_USEC and the journal socket; nothing else.
systemd-python is used when it imports; otherwise the same wire protocols are spoken directly;
without systemd at all, notify is a no-op and logs go to stderr with <N> priority prefixes.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
import traceback
from typing import Any

JOURNAL_SOCKET = "/run/systemd/journal/socket"
IDENTIFIER = "ipvsync"
FIELDS = ("SERVICE", "VIP", "REAL_SERVER", "OPERATION", "CONFIG_FILE", "CONFIG_LINE", "CHECK", "REASON", "ERRNO",
          "RESULT", "WHO")
_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}


def _priority(levelno: int) -> int:
    for level, prio in sorted(_PRIORITY.items(), reverse=True):
        if levelno >= level:
            return prio
    return 7


class Notifier:
    """sd_notify(3): READY, RELOADING, STATUS, WATCHDOG, STOPPING."""

    def __init__(self) -> None:
        self.address = os.environ.get("NOTIFY_SOCKET", "")
        self.sock: socket.socket | None = None
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID", "")
        self.watchdog_usec = int(usec) if usec.isdigit() and (not pid or pid == str(os.getpid())) else 0
        if self.address:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self) -> bool:
        return self.sock is not None

    def notify(self, **fields: Any) -> None:
        if self.sock is None:
            return
        text = "\n".join(f"{k}={v}" for k, v in fields.items())
        addr = self.address
        if addr.startswith("@"):
            addr = "\0" + addr[1:]
        try:
            self.sock.sendto(text.encode(), addr)
        except OSError:
            pass

    def ready(self, status: str = "") -> None:
        self.notify(READY=1, **({"STATUS": status} if status else {}))

    def reloading(self) -> None:
        self.notify(RELOADING=1, MONOTONIC_USEC=int(time.clock_gettime(time.CLOCK_MONOTONIC) * 1_000_000))

    def status(self, text: str) -> None:
        self.notify(STATUS=text.replace("\n", " ")[:500])

    def watchdog(self) -> None:
        self.notify(WATCHDOG=1)

    def stopping(self) -> None:
        self.notify(STOPPING=1)


class NativeJournalHandler(logging.Handler):
    """The journal's native protocol on its datagram socket, without systemd-python."""

    def __init__(self, path: str = JOURNAL_SOCKET) -> None:
        super().__init__()
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @staticmethod
    def _field(key: str, value: Any) -> bytes:
        data = str(value).encode("utf-8", "replace")
        if b"\n" in data:
            return key.encode() + b"\n" + len(data).to_bytes(8, "little") + data + b"\n"
        return key.encode() + b"=" + data + b"\n"

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = self.format(record)
            parts = [
                self._field("MESSAGE", msg),
                self._field("PRIORITY", _priority(record.levelno)),
                self._field("SYSLOG_IDENTIFIER", IDENTIFIER),
                self._field("LOGGER", record.name),
                self._field("CODE_FILE", record.pathname),
                self._field("CODE_LINE", record.lineno),
                self._field("CODE_FUNC", record.funcName),
            ]
            for key in FIELDS:
                if hasattr(record, key):
                    parts.append(self._field(key, getattr(record, key)))
            if record.exc_info:
                parts.append(self._field("TRACEBACK", "".join(traceback.format_exception(*record.exc_info))))
            self.sock.sendto(b"".join(parts), self.path)
        except Exception:  # logging must never take the daemon down
            self.handleError(record)


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """stderr with sd-daemon <N> prefixes (journald and most supervisors understand them)."""

    def __init__(self, prefix: bool) -> None:
        super().__init__(sys.stderr)
        self.prefix = prefix

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = " ".join(f"{k}={getattr(record, k)}" for k in FIELDS if hasattr(record, k))
        if fields:
            text = f"{text} [{fields}]"
        return f"<{_priority(record.levelno)}>{text}" if self.prefix else text


def setup_logging(level: int = logging.INFO, target: str = "auto") -> str:
    """Configure the 'ipvsync' logger; returns which sink was chosen (journal / native / stderr)."""
    root = logging.getLogger("ipvsync")
    root.setLevel(level)
    root.propagate = False
    for h in list(root.handlers):
        root.removeHandler(h)
    chosen = "stderr"
    handler: logging.Handler | None = None
    under_journal = bool(os.environ.get("JOURNAL_STREAM")) or bool(os.environ.get("INVOCATION_ID"))
    if target in ("auto", "journal") and (under_journal or target == "journal") and os.path.exists(JOURNAL_SOCKET):
        try:
            from systemd.journal import JournalHandler  # type: ignore[import-not-found]

            handler = JournalHandler(SYSLOG_IDENTIFIER=IDENTIFIER)
            chosen = "journal"
        except ImportError:
            handler = NativeJournalHandler()
            chosen = "native"
    if handler is None:
        handler = StderrHandler(prefix=bool(os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID")))
    handler.setFormatter(logging.Formatter("%(message)s"))
    root.addHandler(handler)
    return chosen
