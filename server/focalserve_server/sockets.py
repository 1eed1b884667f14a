"""The listening socket: bound from host and port, or inherited (`listen_fd`)."""

from __future__ import annotations

import socket

from focalserve_server.config import Settings

BACKLOG = 2048


def listening_socket(settings: Settings) -> socket.socket:
    """An inherited socket is wrapped with its real family: uvicorn's own `fd=` takes every descriptor
    for a Unix socket, so a TCP one would lose TCP_NODELAY, and Nagle's algorithm against the
    client's delayed ACKs would hold each small response for ~40 ms."""
    if settings.listen_fd is not None:
        return socket.socket(fileno=settings.listen_fd)
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((settings.host, settings.port))
    sock.listen(BACKLOG)
    return sock
