#!/usr/bin/env python3
"""One TCP listener for a whole AnyIP range: bound to 0.0.0.0:PORT in a namespace that has
`ip route add local 198.19.0.0/16 dev lo`, it accepts connections to every address of the range
and closes them at once (health probes only connect). Prints "ready" when listening; stdlib only."""

import selectors
import socket
import sys

port = int(sys.argv[1]) if len(sys.argv) > 1 else 8080
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.SOL_IP, 15, 1)  # IP_FREEBIND
s.bind(("0.0.0.0", port))
s.listen(65535)
s.setblocking(False)
sel = selectors.DefaultSelector()
sel.register(s, selectors.EVENT_READ)
print("ready", flush=True)
accepted = 0
while True:
    sel.select()
    while True:
        try:
            c, _ = s.accept()
        except BlockingIOError:
            break
        c.close()
        accepted += 1
