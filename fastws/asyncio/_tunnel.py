"""The asyncio client's way through a proxy: TCP to the proxy, its tunnel, then TLS to the server.

`open_through_proxy()` opens a TCP connection to the proxy with `loop.create_connection`
(over TLS for an https:// proxy, checked against `proxy_ssl`), drives the proxy's exchange
(fastws.proxy.tunnel_handshake: HTTP CONNECT or SOCKS, sans I/O) with a small
asyncio.Protocol, and once the tunnel is open hands the transport to the connection's own
protocol. For a wss:// server it first runs the server's TLS handshake inside the tunnel
with `loop.start_tls` (with the server's name for SNI and the certificate check); through an
https:// proxy that is TLS inside TLS, which `start_tls` does on a TLS transport (the stdlib
loop on Python 3.11+, and uvloop; both are tested). asyncio never calls
`connection_made` on a protocol given to `set_protocol` or `start_tls`, so this module does.

Every rule about proxies lives in fastws.proxy; this module only moves the bytes.
"""

from __future__ import annotations

import asyncio
import inspect
import socket
import ssl as ssl_module
from typing import Any

from ..proxy import Proxy, TunnelHandshake, resolve_for, tunnel_handshake

__all__ = ["open_through_proxy"]


class _TunnelProtocol(asyncio.Protocol):
    """Sends the exchange's bytes and feeds it the proxy's answers until the tunnel is open
    (`opened` resolves) or refused (`opened` raises the exchange's ProxyError)."""

    def __init__(self, exchange: TunnelHandshake, opened: asyncio.Future[None]) -> None:
        self.exchange = exchange
        self.opened = opened
        self.transport: Any = None      # uvloop's transports are no asyncio.Transport
        self.early = b""        # bytes after the tunnel opened, before the hand-over

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        try:
            self._send()
        except Exception as exc:
            self.opened.set_exception(exc)

    def data_received(self, data: bytes) -> None:
        if self.opened.done():
            self.early += data
            return
        try:
            if self.exchange.receive_data(data):
                self.opened.set_result(None)
            else:
                self._send()
        except Exception as exc:
            self.opened.set_exception(exc)

    def eof_received(self) -> bool:
        if not self.opened.done():
            try:
                self.exchange.receive_eof()      # raises ProxyError
            except Exception as exc:
                self.opened.set_exception(exc)
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc if exc is not None else ConnectionResetError(
                "the proxy closed the connection before the tunnel was open"))

    def _send(self) -> None:
        data = self.exchange.data_to_send()
        if data:
            self.transport.write(data)


async def open_through_proxy(loop: asyncio.AbstractEventLoop, protocol: Any, proxy: Proxy,
                             host: str, port: int, *, ssl: ssl_module.SSLContext | None,
                             proxy_ssl: ssl_module.SSLContext | None) -> Any:
    """Connect `protocol` (an asyncio protocol not yet connected) to host:port through
    `proxy`, with TLS to the server when `ssl` is given; returns the transport it now has.
    Raises ProxyError for a refusal, OSError when the proxy cannot be reached."""
    resolved = await _resolve(loop, proxy, host, port)
    exchange = tunnel_handshake(proxy, host, port, resolved=resolved)
    opened: asyncio.Future[None] = loop.create_future()
    tunnel = _TunnelProtocol(exchange, opened)
    proxy_tls = None
    if proxy.tls:
        proxy_tls = proxy_ssl if proxy_ssl is not None else ssl_module.create_default_context()
    transport: Any
    try:
        transport, _ = await loop.create_connection(
            lambda: tunnel, proxy.host, proxy.port, ssl=proxy_tls,
            server_hostname=proxy.host if proxy_tls is not None else None)
    except ssl_module.SSLError:
        raise                     # TLS to an https:// proxy: its certificate, its version
    except OSError as exc:
        words = exc.strerror or str(exc)
        raise type(exc)(exc.errno, f"cannot connect to the proxy {proxy}: "
                        f"{words[:1].lower()}{words[1:]}") from None
    try:
        _no_delay(transport)
        await opened
        if exchange.tail or tunnel.early:
            raise ConnectionError(f"the proxy {proxy} sent data before the server spoke")
        if ssl is not None:
            if proxy_tls is not None:
                _pass_errors_through(transport)
            tls = await loop.start_tls(transport, protocol, ssl, server_hostname=host)
            if tls is None:       # the proxy's connection went away meanwhile
                raise ConnectionResetError(f"the proxy {proxy} closed the tunnel")
            transport = tls
        else:
            transport.set_protocol(protocol)
    except BaseException:
        transport.abort()
        raise
    protocol.connection_made(transport)
    return transport


async def _resolve(loop: asyncio.AbstractEventLoop, proxy: Proxy, host: str,
                   port: int) -> str | None:
    """The server's address for a proxy that wants one (socks5://, socks4://), resolved off
    the loop; None when the proxy resolves names itself."""
    if not proxy.resolves_locally:
        return None
    return await loop.run_in_executor(None, resolve_for, proxy, host, port)


def _pass_errors_through(transport: Any) -> None:
    """Work around CPython gh-113214 (fixed in 3.11.8 and 3.12.2): when the inner TLS
    session of TLS in TLS fails (a certificate the context does not trust), the stdlib
    loop calls the outer TLS transport's `_force_close(exc)`, which hands `exc` to an
    `SSLProtocol._abort()` that takes none: a TypeError instead of the ssl.SSLError, and
    start_tls never returns. Give that transport a `_force_close` that aborts."""
    from asyncio import sslproto
    if not isinstance(transport, sslproto._SSLProtocolTransport):
        return           # uvloop's, or another loop's: not affected
    if len(inspect.signature(sslproto.SSLProtocol._abort).parameters) > 1:
        return           # a fixed Python
    outer: Any = transport
    outer._force_close = lambda exc: outer.abort()


def _no_delay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
