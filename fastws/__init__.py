"""fastws: a fast, strict WebSocket (RFC 6455) server and client.

The codec (frames, masking, UTF-8 validation, parsing and encoding) and the sans-I/O
WebSocket protocol are Cython extensions built on the C headers in include/fastws/; the
event loop, HTTP server, client and stage chain are Python around them (docs/architecture.md).
"""

import os as _os
from typing import TYPE_CHECKING as _TYPE_CHECKING

from ._codec import (
    CloseCode,
    Frame,
    FrameParser,
    OpCode,
    ProtocolError,
    Utf8Validator,
    close_payload,
    encode_frame,
    is_valid_utf8,
    mask,
    parse_close,
)
from ._protocol import Close, Protocol, State
from ._version import __version__
from .client import connect
from .connection import Connection
from .deflate import Deflate, DeflateOptions
from .exceptions import (
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
    InvalidStatus,
    ProxyError,
    RedirectError,
)
from .handler import Handler
from .handshake import HandshakeError, accept
from .http import Headers, HttpError, Request, Response
from .limits import Limits
from .loop import Loop, Timer, default_loop
from .reconnect import Backoff
from .server import Server, serve
from .stages import AutoPing, AutoPong, Consolidate, Stage
from .topics import SlowConsumers, Topics, broadcast

if _TYPE_CHECKING:
    from .backplane import RedisPubSub


def __getattr__(name: str) -> object:
    # The Redis backplane is imported when first used: a server without it, and every
    # client, start without its modules.
    if name == "RedisPubSub":
        from .backplane import RedisPubSub
        return RedisPubSub
    raise AttributeError(f"module 'fastws' has no attribute {name!r}")


def get_include() -> str:
    """The directory holding fastws' C headers (``#include "fastws/mask.h"``).

    Pass it to the C compiler's include path to embed the codec; for ``cimport
    fastws._codec``, Cython's include path needs the directory above the package,
    ``os.path.dirname(os.path.dirname(fastws.__file__))``.
    """
    here = _os.path.dirname(_os.path.abspath(__file__))
    installed = _os.path.join(here, "include")
    if _os.path.isdir(installed):
        return installed
    # An editable install or a source checkout: the headers live at the top of the tree.
    return _os.path.join(_os.path.dirname(here), "include")


__all__ = [
    "AutoPing",
    "AutoPong",
    "Backoff",
    "Close",
    "CloseCode",
    "Connection",
    "ConnectionClosed",
    "ConnectionClosedError",
    "ConnectionClosedOK",
    "Consolidate",
    "Deflate",
    "DeflateOptions",
    "Frame",
    "FrameParser",
    "Handler",
    "HandshakeError",
    "Headers",
    "HttpError",
    "InvalidStatus",
    "Limits",
    "Loop",
    "OpCode",
    "Protocol",
    "ProtocolError",
    "ProxyError",
    "RedirectError",
    "RedisPubSub",
    "Request",
    "Response",
    "Server",
    "SlowConsumers",
    "Stage",
    "State",
    "Timer",
    "Topics",
    "Utf8Validator",
    "__version__",
    "accept",
    "broadcast",
    "close_payload",
    "connect",
    "default_loop",
    "encode_frame",
    "get_include",
    "is_valid_utf8",
    "mask",
    "parse_close",
    "serve",
]
