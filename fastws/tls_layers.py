"""TLS inside TLS: a socket-like object that stacks `ssl.SSLObject` layers on one TCP socket.

An https:// proxy is reached over TLS, and a wss:// server behind it over a second TLS
session carried inside the first, with the server's own name (SNI) and certificate checks.
`ssl.SSLSocket` cannot wrap another SSLSocket, so each layer here is an SSLObject between two
MemoryBIOs: what the innermost layer writes is the plaintext of the layer below it, down to
the socket; what the socket reads goes up the same way.

`TLSLayers` is safe to read from one thread while another sends; it behaves as a
non-blocking SSLSocket does, which is what the fastws Loop's
transport and the blocking client expect of a TLS socket: `recv_into` and `send` raise
`ssl.SSLWantReadError` / `ssl.SSLWantWriteError` when the socket would block, `send`
follows OpenSSL's rule that a write the socket could not take whole is retried with the
same bytes (the retry reports it done once it is out), `pending()` says whether bytes are
buffered that the socket will not signal, and `do_handshake()` drives the newest layer's
handshake. A wrapper of the ssl.SSLContext interface (`PreparedTLS`) hands the object to a
transport that wants to call `context.wrap_socket()` itself.
"""

from __future__ import annotations

import itertools
import socket
import ssl
import threading
from typing import Any

__all__ = ["PreparedTLS", "TLSLayers"]

_CHUNK = 256 * 1024


class _Layer:
    __slots__ = ("obj", "incoming", "outgoing", "eof")

    def __init__(self, context: ssl.SSLContext, server_hostname: str | None) -> None:
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.obj = context.wrap_bio(self.incoming, self.outgoing, server_side=False,
                                    server_hostname=server_hostname)
        self.eof = False


class TLSLayers:
    """One or more TLS client sessions stacked on a connected socket (see the module doc)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._layers: list[_Layer] = []
        self._backlog = b""          # encrypted bytes the socket has not taken yet
        self._retry_size = 0         # plaintext size of the write the backlog completes
        self._raw_eof = False
        # One thread reads while another sends (the blocking client): the layers' state
        # (and each SSLObject) is used by one at a time. Never held while waiting.
        self._lock = threading.Lock()

    # ---------------------------------------------------------------- layers

    def add_layer(self, context: ssl.SSLContext, server_hostname: str | None) -> None:
        """Start a new innermost TLS session; `do_handshake()` runs its handshake."""
        self._layers.append(_Layer(context, server_hostname))

    @property
    def layers(self) -> int:
        return len(self._layers)

    def do_handshake(self) -> None:
        with self._lock:
            self._do_handshake()

    def _do_handshake(self) -> None:
        """Run the innermost layer's handshake; raises SSLWantReadError/SSLWantWriteError
        while it needs the socket, ssl.SSLError (or a subclass) when it fails."""
        inner = self._layers[-1]
        while True:
            self._flush_backlog()
            try:
                inner.obj.do_handshake()
            except ssl.SSLWantReadError:
                if self._push_down():
                    raise ssl.SSLWantWriteError("the socket's buffer is full") from None
                self._pull_up()         # raises SSLWantReadError when nothing came
                continue
            if self._push_down():
                # The handshake is done but its last flight is not out yet.
                raise ssl.SSLWantWriteError("the socket's buffer is full")
            return

    def getpeercert(self, binary_form: bool = False) -> Any:
        return self._layers[-1].obj.getpeercert(binary_form)

    def version(self) -> str | None:
        return self._layers[-1].obj.version()

    def selected_alpn_protocol(self) -> str | None:
        return self._layers[-1].obj.selected_alpn_protocol()

    # ---------------------------------------------------------------- reading

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        """Decrypted bytes into `buffer`; 0 at the end of the stream (close_notify or EOF)."""
        with self._lock:
            return self._recv_into(buffer, nbytes)

    def _recv_into(self, buffer: Any, nbytes: int) -> int:
        inner = self._layers[-1]
        if self._backlog:
            self._flush_backlog()
        while True:
            try:
                return int(inner.obj.read(nbytes or len(buffer), buffer))
            except ssl.SSLWantReadError:
                if inner.eof:
                    return 0
                self._pull_up()         # raises SSLWantReadError when nothing came
            except ssl.SSLZeroReturnError:
                return 0

    def recv(self, size: int) -> bytes:
        buffer = bytearray(size)
        n = self.recv_into(buffer)
        return bytes(buffer[:n])

    def pending(self) -> int:
        """Bytes buffered in the layers that the socket will not signal again."""
        with self._lock:
            return self._pending()

    def _pending(self) -> int:
        layers = self._layers
        count = layers[-1].obj.pending()
        for layer in layers:
            count += layer.incoming.pending
        for layer in layers[:-1]:
            count += layer.obj.pending()
        return int(count)

    def _pull_up(self) -> None:
        """Read the socket once and move what it gives up through the layers."""
        if self._raw_eof:
            raise ssl.SSLEOFError("EOF occurred in violation of protocol")
        try:
            data = self.sock.recv(_CHUNK)
        except (BlockingIOError, InterruptedError):
            raise ssl.SSLWantReadError("the socket has nothing to read") from None
        layers = self._layers
        if not data:
            self._raw_eof = True
            layers[0].incoming.write_eof()
        else:
            layers[0].incoming.write(data)
        # Each layer's plaintext is the ciphertext of the one above it.
        for lower, upper in itertools.pairwise(layers):
            while True:
                try:
                    plain = lower.obj.read(_CHUNK)
                except ssl.SSLWantReadError:
                    break
                except ssl.SSLZeroReturnError:
                    plain = b""
                if not plain:
                    lower.eof = True
                    upper.incoming.write_eof()
                    break
                upper.incoming.write(plain)
        if not data:
            layers[-1].eof = True

    # ---------------------------------------------------------------- writing

    def send(self, data: Any, flags: int = 0) -> int:
        """Encrypt and send `data`; see the module doc for the retry rule."""
        with self._lock:
            return self._send(data)

    def _send(self, data: Any) -> int:
        if self._backlog:
            self._flush_backlog()
            if self._backlog:
                raise ssl.SSLWantWriteError("the socket's buffer is full")
            size, self._retry_size = self._retry_size, 0
            if size:
                return size            # the write this call retries is out
        size = self._layers[-1].obj.write(data)
        if self._push_down():
            self._retry_size = size
            raise ssl.SSLWantWriteError("the socket's buffer is full")
        return int(size)

    def sendall(self, data: Any) -> None:
        raise NotImplementedError("TLSLayers is non-blocking: call send() and wait for the socket")

    def _push_down(self) -> bool:
        """Carry what the layers wrote down to the socket; keep what it did not take (True
        when some is left)."""
        layers = self._layers
        for lower, upper in reversed(list(itertools.pairwise(layers))):
            data = upper.outgoing.read()
            offset = 0
            while offset < len(data):
                # SSLObject.write may take less than it is given (a record at a time).
                offset += lower.obj.write(memoryview(data)[offset:])
        data = layers[0].outgoing.read()
        if data:
            self._backlog += data
        self._flush_backlog()
        return bool(self._backlog)

    def _flush_backlog(self) -> None:
        while self._backlog:
            try:
                sent = self.sock.send(self._backlog)
            except (BlockingIOError, InterruptedError):
                return
            self._backlog = self._backlog[sent:]

    # ---------------------------------------------------------------- the socket's side

    def fileno(self) -> int:
        return self.sock.fileno()

    def getpeername(self) -> Any:
        return self.sock.getpeername()

    def getsockname(self) -> Any:
        return self.sock.getsockname()

    def setblocking(self, flag: bool) -> None:
        if flag:
            raise ValueError("TLSLayers works on a non-blocking socket")
        self.sock.setblocking(False)

    def setsockopt(self, *args: Any) -> None:
        self.sock.setsockopt(*args)

    def shutdown(self, how: int) -> None:
        self.sock.shutdown(how)

    def close(self) -> None:
        self.sock.close()

    def __repr__(self) -> str:
        return f"<fastws.TLSLayers layers={len(self._layers)} fd={self.sock.fileno()}>"


class PreparedTLS:
    """Stands in for an ssl.SSLContext where a transport wraps its socket itself: its
    `wrap_socket()` returns `layers`, adding the server's TLS layer when `context` is given
    (wss:// through an https:// proxy) or not (ws://: only the proxy's TLS)."""

    def __init__(self, layers: TLSLayers, context: ssl.SSLContext | None) -> None:
        self.layers = layers
        self.context = context

    def wrap_socket(self, sock: Any, *, server_side: bool = False,
                    server_hostname: str | None = None,
                    do_handshake_on_connect: bool = True) -> TLSLayers:
        if server_side:
            raise ValueError("PreparedTLS is for clients")
        if self.context is not None:
            self.layers.add_layer(self.context, server_hostname)
        return self.layers
