"""`Limits`: every per-connection size and time limit, and the one place their defaults live.

serve(), connect() and Connection.upgrade() take keyword overrides of these fields; the HTTP
parsers (fastws.http) and the HTTP conversation (fastws.http1) take their defaults from here, so
a default is never written twice."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

__all__ = ["Limits"]


@dataclass(frozen=True)
class Limits:
    """Per-connection limits; every one can be overridden in serve(), connect() and upgrade().

    Sizes are bytes, times seconds. `None` means no limit.
    """

    max_frame_size: int | None = 4 * 1024 * 1024
    max_message_size: int | None = 4 * 1024 * 1024
    close_timeout: float = 5.0
    # The TLS handshake plus the first request (server) or the whole opening handshake
    # (client) must complete within this; slow or silent peers are dropped.
    handshake_timeout: float | None = 10.0
    # A plain HTTP keep-alive connection with no request for this long is closed.
    idle_timeout: float | None = 60.0
    write_high_water: int = 256 * 1024
    write_low_water: int = 64 * 1024
    # A write that finds more than this unsent besides the largest message waiting fails
    # the connection with 1008 (the peer is not reading): one message, however large, never
    # trips it on its own, and a connection holds at most this plus two messages.
    # 8 MiB: a server with 10,000 connections cannot be made to hold 64 MiB for each
    # (640 GiB) by peers that stop reading. Broadcasts have their own, smaller bound
    # (fastws.topics).
    max_write_buffer: int | None = 8 * 1024 * 1024
    # HTTP requests: a longer request line is answered 414, a larger head (or more header
    # lines) 431, a larger body 413. The head and body limits also bound the response a
    # client reads to its opening handshake (a 101, or an error page it only reports).
    max_request_line: int = 8192
    max_header_size: int = 16384
    max_headers: int = 100
    max_body_size: int = 1024 * 1024

    def updated(self, overrides: dict[str, Any]) -> Limits:
        unknown = set(overrides) - set(self.__dataclass_fields__)
        if unknown:
            raise TypeError(f"unknown limit(s): {', '.join(sorted(unknown))}")
        return replace(self, **overrides) if overrides else self
