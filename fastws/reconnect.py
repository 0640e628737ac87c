"""Reconnection policy for long-running clients: when to try again, and how long to wait.

`Backoff` is the schedule: exponential back-off with jitter, bounded (the defaults below,
documented in docs/clients.md). `is_retryable()` says whether a failure is worth another
try: network errors, timeouts, a connection lost, a server that closed the connection
(whatever its code: 1001 going away, 1012 restart, even 1000), and 5xx answers (the server
or a proxy is down for a moment) are; a 4xx answer (403, 404, a proxy's 407), refused
proxy credentials, a redirect we may not follow, a malformed URL or answer, and a close the
application asked for are not: trying again would fail the same way, or do what the
application said not to. Both clients (fastws.sync and the Loop client) share this
module, and so can an asyncio client.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

from .exceptions import ConnectionClosed, InvalidStatus, ProxyError, RedirectError
from .handshake import HandshakeError
from .http import HttpError

__all__ = ["Backoff", "is_retryable"]


@dataclass(frozen=True)
class Backoff:
    """The waits between reconnection attempts.

    Attempt n (0 for the first retry) waits `min(max_delay, initial_delay * factor ** n)`
    seconds, less a random part of up to `jitter` of it (0: none; 1: anywhere down to 0),
    so that many clients dropped by one server restart do not all come back at once
    (RFC 6455 7.2.3). The wait never exceeds `max_delay`. A connection that opened resets
    the schedule.
    """

    initial_delay: float = 1.0
    max_delay: float = 30.0
    factor: float = 2.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if not 0 <= self.initial_delay <= self.max_delay:
            raise ValueError("Backoff needs 0 <= initial_delay <= max_delay")
        if self.factor < 1:
            raise ValueError("Backoff.factor must be >= 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("Backoff.jitter must be between 0 and 1")

    def bound(self, attempt: int) -> float:
        """The longest wait before retry number `attempt` (0-based)."""
        # Capped before the power can overflow a float on a very long outage.
        exponent = min(attempt, 64)
        return float(min(self.max_delay, self.initial_delay * self.factor ** exponent))

    def delays(self) -> Iterator[float]:
        """The waits before each retry, forever."""
        attempt = 0
        while True:
            bound = self.bound(attempt)
            yield bound * (1.0 - self.jitter * random.random())
            attempt += 1


def backoff_from(setting: bool | Backoff) -> Backoff | None:
    """A connect()'s `reconnect=` argument as a schedule (None: do not reconnect)."""
    if setting is True:
        return Backoff()
    if setting is False or setting is None:
        return None
    if isinstance(setting, Backoff):
        return setting
    raise TypeError(f"reconnect must be True, False or a fastws.Backoff, not {setting!r}")


def is_retryable(exc: BaseException) -> bool:
    """Whether a failed connection attempt, or a connection's end, is worth another try."""
    if isinstance(exc, InvalidStatus):
        return exc.status >= 500
    if isinstance(exc, ProxyError):
        return exc.retryable
    if isinstance(exc, ConnectionClosed):
        return True     # whatever the server's reason; the application's own close is not
                        # an exception and stops the clients before they get here
    if isinstance(exc, (RedirectError, HandshakeError, HttpError, ValueError, TypeError)):
        return False
    return isinstance(exc, (OSError, TimeoutError, EOFError))
