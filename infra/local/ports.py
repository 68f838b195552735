"""Free loopback ports for servers that local runs, tests and benchmarks start."""

from __future__ import annotations

import contextlib
import socket


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Ports the kernel reports free; all sockets stay open until all are picked, so the ports
    are distinct. Another process may still take one before the server binds it, which then
    shows up as that server's bind error."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind((host, 0))
        return [sock.getsockname()[1] for sock in sockets]


def free_port(host: str = "127.0.0.1") -> int:
    return free_ports(1, host)[0]
