"""A free TCP port of 127.0.0.1 for a process a test starts (the kernel picks it; it is free
when this returns, and rarely taken again before the process binds it)."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
