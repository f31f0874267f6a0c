"""Free TCP ports for servers the tests start.

Asking the kernel for port 0 hands out a port from the ephemeral range, which
is where every outgoing connection's local port comes from too: between the
probe and the server's own bind, a client socket (the gateway's pool, Orthanc,
a browser) can take it, and the server fails with "address already in use".
So ports are drawn from below the ephemeral range instead, where only another
listener can collide, and that is what the bind probe checks.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

#: Below this the simulator's fixed ports (18001–19111) and well-known services live.
_LOWEST = 20000
_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def _highest() -> int:
    """The last port below the kernel's ephemeral range (32767 on Linux's default)."""
    try:
        first_ephemeral = int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        first_ephemeral = 32768
    return max(first_ephemeral - 1, _LOWEST + 1000)


_handed_out: set[int] = set()


def free_port() -> int:
    """A port nobody listens on now and no outgoing connection will be given."""
    highest = _highest()
    for _ in range(1000):
        port = random.randint(_LOWEST, highest)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port between {_LOWEST} and {highest}")
