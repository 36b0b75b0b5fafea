"""The control socket: RUNTIME_DIR/control.sock, root-only, one JSON request and one JSON answer.

Rules of residence: framing and transport only (client and asyncio server). What the commands do
lives in daemon.py; what they print lives in commands/.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any

SOCKET_NAME = "control.sock"
MAX_REQUEST = 1 << 20


class ControlUnavailable(Exception):
    """No daemon answers on this runtime dir."""


def socket_path(runtime_dir: str) -> str:
    return os.path.join(runtime_dir, SOCKET_NAME)


def request(runtime_dir: str, payload: dict[str, Any], timeout: float = 120.0) -> dict[str, Any]:
    """Send one request to the daemon and wait for its answer."""
    path = socket_path(runtime_dir)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    s.settimeout(timeout)
    try:
        try:
            s.connect(path)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise ControlUnavailable(f"no ipvsync daemon is running (nothing answers on {path})") from exc
        except PermissionError as exc:
            raise ControlUnavailable(f"permission denied on {path}: the control socket is root-only") from exc
        s.sendall(json.dumps(payload).encode() + b"\n")
        chunks = []
        while True:
            data = s.recv(65536)
            if not data:
                break
            chunks.append(data)
            if data.endswith(b"\n"):
                break
    except TimeoutError as exc:
        raise ControlUnavailable(f"the daemon did not answer within {timeout:g} s") from exc
    finally:
        s.close()
    if not chunks:
        raise ControlUnavailable("the daemon closed the connection without an answer")
    return json.loads(b"".join(chunks))


Handler = Callable[[dict[str, Any], dict[str, Any]], Awaitable[dict[str, Any]]]


def peer_credentials(writer: asyncio.StreamWriter) -> dict[str, Any]:
    sock = writer.get_extra_info("socket")
    try:
        import struct

        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, gid = struct.unpack("3i", creds)
        return {"pid": pid, "uid": uid, "gid": gid}
    except (OSError, AttributeError):
        return {}


async def serve(runtime_dir: str, handler: Handler) -> asyncio.AbstractServer:
    """Listen on RUNTIME_DIR/control.sock (mode 0600) and answer each request with `handler`."""
    path = socket_path(runtime_dir)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            if not line or len(line) > MAX_REQUEST:
                return
            try:
                req = json.loads(line)
                if not isinstance(req, dict):
                    raise ValueError("not an object")
            except ValueError as exc:
                answer: dict[str, Any] = {"ok": False, "error": f"bad request: {exc}"}
            else:
                if peer_credentials(writer).get("uid", 0) != 0 and os.geteuid() == 0:
                    answer = {"ok": False, "error": "permission denied: root only"}
                else:
                    answer = await handler(req, peer_credentials(writer))
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    old = os.umask(0o177)
    try:
        server = await asyncio.start_unix_server(on_client, path=path, limit=MAX_REQUEST + 1)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    return server
