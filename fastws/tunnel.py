"""Opening a proxy's tunnel on a fastws Loop, before the connection's transport takes the socket.

`LoopTunnel` drives the sans-I/O exchange of fastws.proxy over a non-blocking socket that is
connecting to the proxy: it waits for the TCP connect, runs the TLS handshake with an
https:// proxy (fastws.tls_layers, the same object the transport then reads and writes),
sends the exchange's request and feeds it the answers, all from the loop's readiness
callbacks. When the tunnel is open it unregisters the socket and calls `on_open()`; a
failure calls `on_error(exc)` once. The connection's own handshake timeout bounds it (the
connection closes the socket, and `cancel()` stops the tunnel).
"""

from __future__ import annotations

import os
import socket
import ssl
from collections.abc import Callable

from .exceptions import ProxyError
from .loop import Loop
from .proxy import Proxy, TunnelHandshake
from .tls_layers import TLSLayers

__all__ = ["LoopTunnel"]

_READ_SIZE = 64 * 1024


class LoopTunnel:
    """Open a tunnel through `proxy` on `sock` (connecting to it); see the module doc."""

    def __init__(self, loop: Loop, sock: socket.socket, proxy: Proxy, exchange: TunnelHandshake,
                 layers: TLSLayers | None, on_open: Callable[[], None],
                 on_error: Callable[[BaseException], None]) -> None:
        self.loop = loop
        self.sock = sock
        self.proxy = proxy
        self.exchange = exchange
        self.layers = layers            # TLS to an https:// proxy (its layer already added)
        self.on_open = on_open
        self.on_error = on_error
        self._stream: socket.socket | TLSLayers = sock
        self._out = b""
        self._done = False

    def start_after_connect(self) -> None:
        """The TCP connect is in progress (or done): go on when the socket is writable."""
        self.loop.add_writer(self.sock, self._connected)

    def cancel(self) -> None:
        if not self._done:
            self._done = True
            self._unregister()

    # ---------------------------------------------------------------- the steps

    def _connected(self) -> None:
        if self._done:
            return
        self.loop.remove_writer(self.sock)
        err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._fail(OSError(err, f"cannot connect to the proxy {self.proxy}: "
                               f"{os.strerror(err).lower()}"))
            return
        if self.layers is not None:
            self._stream = self.layers
            self._tls_handshake()
        else:
            self._send_request()

    def _tls_handshake(self) -> None:
        if self._done:
            return
        assert self.layers is not None
        try:
            self.layers.do_handshake()
        except ssl.SSLWantReadError:
            self.loop.remove_writer(self.sock)
            self.loop.add_reader(self.sock, self._tls_handshake)
            return
        except ssl.SSLWantWriteError:
            self.loop.remove_reader(self.sock)
            self.loop.add_writer(self.sock, self._tls_handshake)
            return
        except (OSError, ValueError) as exc:
            self._fail(ssl.SSLError(f"TLS handshake with the proxy {self.proxy} failed: {exc}")
                       if not isinstance(exc, ssl.SSLError) else exc)
            return
        self._unregister()
        self._send_request()

    def _send_request(self) -> None:
        self._out += self.exchange.data_to_send()
        self._write()
        if not self._done:
            self.loop.add_reader(self.sock, self._readable)

    def _write(self) -> None:
        while self._out and not self._done:
            try:
                sent = self._stream.send(self._out)
            except (BlockingIOError, InterruptedError, ssl.SSLWantWriteError,
                    ssl.SSLWantReadError):
                self.loop.add_writer(self.sock, self._writable)
                return
            except OSError as exc:
                self._fail(exc)
                return
            self._out = self._out[sent:]
        self.loop.remove_writer(self.sock)

    def _writable(self) -> None:
        if not self._done:
            self._write()

    def _readable(self) -> None:
        if self._done:
            return
        try:
            data = self._stream.recv(_READ_SIZE)
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError,
                ssl.SSLWantWriteError):
            return
        except OSError as exc:
            self._fail(exc)
            return
        try:
            if not data:
                self.exchange.receive_eof()
                raise AssertionError("receive_eof() returned")   # it always raises
            opened = self.exchange.receive_data(data)
        except (ProxyError, ValueError) as exc:
            self._fail(exc)
            return
        more = self.exchange.data_to_send()
        if more:
            self._out += more
            self._write()
        if opened:
            if self.exchange.tail:
                self._fail(ProxyError(f"the proxy {self.proxy} sent data before the server "
                                      "spoke", proxy=str(self.proxy)))
                return
            self._done = True
            self._unregister()
            self.on_open()

    # ---------------------------------------------------------------- the end

    def _unregister(self) -> None:
        try:
            self.loop.remove_reader(self.sock)
            self.loop.remove_writer(self.sock)
        except (OSError, ValueError):
            pass     # the socket was closed under us (the handshake timeout)

    def _fail(self, exc: BaseException) -> None:
        if self._done:
            return
        self._done = True
        self._unregister()
        self.on_error(exc)
