"""Proxies for every client, sans I/O: which proxy to use, and the exchange that opens a tunnel.

`select_proxy()` turns a client's `proxy=` argument into a `Proxy` or None: True (the
default) reads the environment as websockets and curl do (`no_proxy` first, through
urllib's `proxy_bypass`; then `wss_proxy`/`ws_proxy`, a SOCKS proxy the system declares,
`https_proxy`, `http_proxy` for ws:// only, and `all_proxy`), a string is a proxy URL, None
(or False) connects directly.

`tunnel_handshake()` gives the exchange that asks the proxy for a tunnel to host:port:
HTTP CONNECT (Basic credentials from the proxy URL) for http:// and https:// proxies, and
SOCKS5 (with or without a user name and password), SOCKS4 and SOCKS4a through `socksio`,
a sans-I/O SOCKS implementation; this module only frames the SOCKS replies, which socksio
expects whole. Each exchange is bytes in, bytes out (`data_to_send`, `receive_data`), so the
Loop client, the blocking client and an asyncio one drive the same objects. An https://
proxy is reached over TLS first: that layer is the transport's job (fastws.tls_layers).
A refusal raises ProxyError, with the HTTP status for an HTTP proxy.
"""

from __future__ import annotations

import base64
import ipaddress
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol
from urllib.parse import unquote, urlsplit

from .exceptions import ProxyError
from .http_parser import ResponseParser
from .limits import Limits

if TYPE_CHECKING:
    import socksio

# urllib.request and socksio are imported when a proxy is looked for or used: importing
# fastws stays as quick as it was (urllib.request alone costs tens of milliseconds).

__all__ = [
    "HttpConnect",
    "Proxy",
    "ProxySetting",
    "SocksHandshake",
    "TunnelHandshake",
    "parse_proxy",
    "select_proxy",
    "tunnel_handshake",
]

# What a client's proxy= argument may be.
ProxySetting = bool | str | None

_DEFAULT_PORTS = {"http": 80, "https": 443, "socks5": 1080, "socks5h": 1080,
                  "socks4": 1080, "socks4a": 1080}
# The bound on an HTTP proxy's answer head (a SOCKS reply is at most 262 bytes).
_MAX_HEAD = Limits().max_header_size


@dataclass(frozen=True)
class Proxy:
    """A proxy: its scheme (http, https, socks5, socks5h, socks4, socks4a), address and
    credentials. `str()` is its URL without the password, for messages and logs."""

    scheme: str
    host: str
    port: int
    username: str | None = None
    password: str | None = None

    @property
    def tls(self) -> bool:
        """The proxy itself is reached over TLS (https://)."""
        return self.scheme == "https"

    @property
    def resolves_locally(self) -> bool:
        """The client resolves the server's name (socks5://, socks4://); socks5h:// and
        socks4a:// let the proxy do it, and an HTTP proxy always does."""
        return self.scheme in ("socks5", "socks4")

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        user = f"{self.username}@" if self.username else ""
        return f"{self.scheme}://{user}{host}:{self.port}"


def parse_proxy(url: str) -> Proxy:
    """Parse a proxy URL: `scheme://[user[:password]@]host[:port]`, user and password
    percent-decoded; default ports 80 (http), 443 (https), 1080 (SOCKS). ValueError when it
    is not one."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise ValueError(f"unsupported proxy URL {_without_password(url)!r}: the scheme must be "
                         "http, https, socks5, socks5h, socks4 or socks4a")
    if not parts.hostname:
        raise ValueError(f"proxy URL {_without_password(url)!r} has no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"proxy URL {_without_password(url)!r} has a path; give only "
                         "scheme://host:port")
    port = parts.port  # ValueError itself when not a number or out of range
    username = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    return Proxy(scheme, parts.hostname, port if port is not None else _DEFAULT_PORTS[scheme],
                 username, password)


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)


def select_proxy(setting: ProxySetting, *, secure: bool, host: str, port: int) -> Proxy | None:
    """The proxy for a connection to host:port (see the module doc); None: connect directly.

    ValueError for an invalid proxy URL, whether given or found in the environment.
    """
    if setting is None or setting is False:
        return None
    if isinstance(setting, str):
        return parse_proxy(setting)
    if setting is not True:
        raise TypeError(f"proxy must be True, None or a URL, not {setting!r}")
    url = environment_proxy(secure=secure, host=host, port=port)
    return parse_proxy(url) if url is not None else None


def environment_proxy(*, secure: bool, host: str, port: int) -> str | None:
    """The proxy URL the environment (and the system) gives for a ws:// or wss:// server."""
    import urllib.request
    if urllib.request.proxy_bypass(f"{host}:{port}"):
        return None
    proxies = urllib.request.getproxies()
    # A proxy for WebSocket connections comes first; then SOCKS (RFC 6455 section 4.1
    # mentions it), then the HTTPS proxy, since a WebSocket is a tunnel like HTTPS; the
    # plain-HTTP proxy only for ws://, as curl does; all_proxy last.
    schemes = ["wss", "socks", "https", "all"] if secure else ["ws", "socks", "https", "http",
                                                               "all"]
    for scheme in schemes:
        url = proxies.get(scheme)
        if url:
            if scheme == "socks" and url.startswith("http://"):
                # How macOS and Windows declare a SOCKS proxy: a host and a port.
                url = "socks5h://" + url[len("http://"):]
            return url
    return None


# ---------------------------------------------------------------- the tunnel handshakes

class TunnelHandshake(Protocol):
    """What a transport drives to open a tunnel: send `data_to_send()`, feed the answer to
    `receive_data()` until it returns True (the tunnel is open; `tail` holds any bytes the
    proxy sent after its answer), `receive_eof()` if the proxy closes first."""

    tail: bytes

    def data_to_send(self) -> bytes: ...
    def receive_data(self, data: bytes | bytearray | memoryview) -> bool: ...
    def receive_eof(self) -> None: ...


def tunnel_handshake(proxy: Proxy, host: str, port: int, *,
                     resolved: str | None = None) -> TunnelHandshake:
    """The exchange that asks `proxy` for a tunnel to host:port. For a proxy that
    `resolves_locally`, `resolved` is host's address (socks4: an IPv4 one)."""
    if proxy.scheme in ("http", "https"):
        return HttpConnect(proxy, host, port)
    return SocksHandshake(proxy, host, port, resolved=resolved)


def resolve_for(proxy: Proxy, host: str, port: int) -> str | None:
    """Resolve host for a proxy that wants an address (blocking getaddrinfo, like the direct
    connection's); None when the proxy resolves names itself. OSError when it fails."""
    if not proxy.resolves_locally:
        return None
    family = socket.AF_INET if proxy.scheme == "socks4" else socket.AF_UNSPEC
    try:
        infos = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise socket.gaierror(exc.errno, f"cannot resolve {host}: {exc.strerror}") from None
    return str(infos[0][4][0])


class HttpConnect:
    """HTTP CONNECT host:port (RFC 9110 9.3.6), with Basic credentials when the proxy URL
    has a user name. Any answer but 2xx raises ProxyError with its status."""

    def __init__(self, proxy: Proxy, host: str, port: int) -> None:
        self.proxy = proxy
        self.tail = b""
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
        if proxy.username is not None:
            credentials = f"{proxy.username}:{proxy.password or ''}".encode()
            lines.append(f"Proxy-Authorization: Basic {base64.b64encode(credentials).decode()}")
        self._request: bytes | None = ("\r\n".join(lines) + "\r\n\r\n").encode()
        self._buffer = bytearray()

    def data_to_send(self) -> bytes:
        request, self._request = self._request, None
        return request or b""

    def receive_data(self, data: bytes | bytearray | memoryview) -> bool:
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > _MAX_HEAD:
                raise ProxyError(f"the proxy {self.proxy} answered CONNECT with a head over "
                                 f"{_MAX_HEAD} bytes", proxy=str(self.proxy))
            return False
        head, self.tail = bytes(self._buffer[:end + 4]), bytes(self._buffer[end + 4:])
        self._buffer = bytearray()
        parser = ResponseParser(head_only=True)
        try:
            response = parser.feed(head)
        except Exception as exc:
            raise ProxyError(f"the proxy {self.proxy} sent an invalid answer to CONNECT: {exc}",
                             proxy=str(self.proxy)) from None
        finally:
            parser.release()
        assert response is not None   # a whole head completes a head-only parser
        if not 200 <= response.status < 300:
            hint = ""
            if response.status in (401, 407):     # tinyproxy answers 401 to a wrong password
                hint = (" (wrong credentials)" if self.proxy.username is not None
                        else " (it wants credentials: http://user:password@host:port)")
            raise ProxyError(f"the proxy {self.proxy} refused to connect: {response.status} "
                             f"{response.reason}{hint}", proxy=str(self.proxy),
                             status=response.status)
        return True

    def receive_eof(self) -> None:
        raise ProxyError(f"the proxy {self.proxy} closed the connection before answering CONNECT",
                         proxy=str(self.proxy))


class SocksHandshake:
    """SOCKS5 (RFC 1928; user name and password, RFC 1929) or SOCKS4/4a CONNECT, on socksio.

    socksio packs requests and unpacks replies but wants each reply whole: this class
    knows their lengths, and which step comes next.
    """

    def __init__(self, proxy: Proxy, host: str, port: int, *, resolved: str | None = None) -> None:
        import socksio
        self.proxy = proxy
        self.tail = b""
        self._buffer = bytearray()
        self._address = resolved if resolved is not None else host
        self._port = port
        self._done = False
        self._socks5: socksio.SOCKS5Connection | None = None
        self._socks4: socksio.SOCKS4Connection | None = None
        if proxy.scheme in ("socks5", "socks5h"):
            self._socks5 = socksio.SOCKS5Connection()
            methods = [socksio.SOCKS5AuthMethod.NO_AUTH_REQUIRED]
            if proxy.username is not None:
                methods.append(socksio.SOCKS5AuthMethod.USERNAME_PASSWORD)
            self._socks5.send(socksio.SOCKS5AuthMethodsRequest(methods))
        else:
            # socksio refuses an empty user id (SOCKS4 allows one): name ourselves instead.
            self._socks4 = socksio.SOCKS4Connection(
                user_id=(proxy.username or "fastws").encode())
            if proxy.scheme == "socks4a":
                request: socksio.SOCKS4Request | socksio.SOCKS4ARequest = (
                    socksio.SOCKS4ARequest.from_address(socksio.SOCKS4Command.CONNECT,
                                                        (self._address, port)))
            else:
                try:
                    ipaddress.IPv4Address(self._address)
                except ValueError:
                    raise ValueError(f"socks4:// needs an IPv4 address for {host}; use socks4a:// "
                                     "to let the proxy resolve it") from None
                request = socksio.SOCKS4Request.from_address(socksio.SOCKS4Command.CONNECT,
                                                             (self._address, port))
            self._socks4.send(request)

    def data_to_send(self) -> bytes:
        connection = self._socks5 if self._socks5 is not None else self._socks4
        assert connection is not None
        return connection.data_to_send()

    def receive_data(self, data: bytes | bytearray | memoryview) -> bool:
        import socksio
        self._buffer += data
        while not self._done:
            size = self._reply_size()
            if size is None or len(self._buffer) < size:
                return False
            reply, self._buffer = bytes(self._buffer[:size]), self._buffer[size:]
            try:
                self._on_reply(reply)
            except socksio.ProtocolError as exc:
                raise self._error(f"sent an invalid reply ({exc})") from None
        self.tail = bytes(self._buffer)
        self._buffer = bytearray()
        return True

    def receive_eof(self) -> None:
        raise self._error("closed the connection before the tunnel was open")

    def _error(self, what: str, *, retryable: bool = True) -> ProxyError:
        return ProxyError(f"the SOCKS proxy {self.proxy} {what}", proxy=str(self.proxy),
                          retryable=retryable)

    def _reply_size(self) -> int | None:
        """The length of the reply expected now, or None until enough of it is here to say."""
        from socksio.socks5 import SOCKS5State
        if self._socks4 is not None:
            return 8
        assert self._socks5 is not None
        state = self._socks5.state
        if state != SOCKS5State.CLIENT_AUTHENTICATED:
            return 2           # the method choice, or the user name and password verdict
        buffer = self._buffer
        if len(buffer) < 5:
            return None
        atype = buffer[3]
        if atype == 1:
            return 4 + 4 + 2
        if atype == 4:
            return 4 + 16 + 2
        if atype == 3:
            return 4 + 1 + buffer[4] + 2
        raise self._error(f"sent a reply with an unknown address type {atype}")

    def _on_reply(self, data: bytes) -> None:
        import socksio
        from socksio.socks5 import SOCKS5UsernamePasswordReply
        if self._socks4 is not None:
            reply4 = self._socks4.receive_data(data)
            if reply4.reply_code != socksio.SOCKS4ReplyCode.REQUEST_GRANTED:
                raise self._error(f"refused to connect: {reply4.reply_code.name.lower()}")
            self._done = True
            return
        socks5 = self._socks5
        assert socks5 is not None
        reply = socks5.receive_data(data)
        if isinstance(reply, socksio.SOCKS5AuthReply):
            if reply.method == socksio.SOCKS5AuthMethod.USERNAME_PASSWORD:
                if self.proxy.username is None:
                    raise self._error("wants a user name and password "
                                      "(socks5://user:password@host:port)", retryable=False)
                socks5.send(socksio.SOCKS5UsernamePasswordRequest(
                    self.proxy.username.encode(), (self.proxy.password or "").encode()))
            elif reply.method == socksio.SOCKS5AuthMethod.NO_AUTH_REQUIRED:
                self._send_connect()
            else:
                raise self._error("accepts none of the authentication methods we offered"
                                  + (" (is the user name right?)" if self.proxy.username else
                                     " (it may want credentials: socks5://user:password@...)"),
                                  retryable=False)
        elif isinstance(reply, SOCKS5UsernamePasswordReply):
            if not reply.success:
                raise self._error("refused the user name and password", retryable=False)
            self._send_connect()
        else:
            if reply.reply_code != socksio.SOCKS5ReplyCode.SUCCEEDED:
                words = reply.reply_code.name.lower().replace("_", " ")
                raise self._error(f"refused to connect to {self._address}:{self._port}: {words}")
            self._done = True

    def _send_connect(self) -> None:
        import socksio
        assert self._socks5 is not None
        self._socks5.send(socksio.SOCKS5CommandRequest.from_address(
            socksio.SOCKS5Command.CONNECT, (self._address, self._port)))
