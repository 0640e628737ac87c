"""permessage-deflate (RFC 7692): the negotiation, both sides, and the `Deflate` extension.

Negotiation works on the parsed `Sec-WebSocket-Extensions` values of `fastws.handshake`
(`parse_extensions` / `format_extensions`):

* server: `negotiate_server(offers, options)` picks the first acceptable permessage-deflate
  offer and returns the answer's value and a configured `Deflate` extension (or None). Offers
  with unknown, repeated or malformed parameters are skipped, and so is an offer demanding
  `server_max_window_bits=8`: zlib cannot compress raw deflate with a 256-byte window (it
  silently uses 512 bytes, which a strict peer cannot inflate), so we decline rather than
  send streams the peer may reject.
* client: `client_offer(options)` is what we offer (default
  `permessage-deflate; client_max_window_bits`), and `negotiate_client(extensions, offer,
  options)` checks the server's answer against it; any problem raises `NegotiationError`,
  which makes the client fail the connection with 1010.

`DeflateOptions` holds the settings `serve(compression=...)`, `connect(compression=...)`
and `conn.upgrade(compression=...)` take: True means `DeflateOptions()`, False or None turns
permessage-deflate off, a dict is passed to `DeflateOptions(**dict)`.

`Deflate` is an extension of the connection's protocol (fastws._protocol), not a stage: the
protocol hands it every frame of a message whose first frame has RSV1, and the outgoing data
frames. Inbound it inflates fragment by fragment, never more than the protocol's remaining
message size plus one byte (the protocol fails with 1009 as soon as the limit is passed, so
a decompression bomb costs no more memory than a legal message; it also checks decompressed
text as UTF-8); data that does not inflate fails with 1007. Outbound, text and binary
messages of at least `min_size` bytes (default 0: all; a fragmented message is always
compressed, decided at its first frame) are deflated, each fragment with Z_SYNC_FLUSH, RSV1
on the first frame only; control frames are never compressed.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._codec import CloseCode, ProtocolError
from .handshake import Extension, HandshakeError, format_extensions, parse_extensions

if TYPE_CHECKING:
    from typing_extensions import Buffer

    from .http import Request, Response

__all__ = [
    "EXTENSION_NAME",
    "Deflate",
    "DeflateOptions",
    "NegotiationError",
    "client_offer",
    "deflate_options",
    "negotiate_client",
    "negotiate_response",
    "negotiate_server",
]

EXTENSION_NAME = "permessage-deflate"
_TAIL = b"\x00\x00\xff\xff"            # the end of a Z_SYNC_FLUSH, stripped by senders (7.2.1)
_PARAMS = ("server_no_context_takeover", "client_no_context_takeover",
           "server_max_window_bits", "client_max_window_bits")

Params = list[tuple[str, str | None]]


class NegotiationError(HandshakeError):
    """The server's permessage-deflate answer is unacceptable: the client fails with 1010."""

    close_code = CloseCode.MANDATORY_EXTENSION

    def __init__(self, message: str) -> None:
        super().__init__(0, message)


@dataclass(frozen=True)
class DeflateOptions:
    """Settings of permessage-deflate for one side.

    level, mem_level: zlib's (default 6 and 8). min_size: whole messages shorter than this
    are sent uncompressed. The default, 0, compresses every message: RFC 7692 allows mixing,
    but some peers mishandle uncompressed messages on a deflate connection (the kosoku
    Autobahn harness errors out on them), so skipping small ones is opt-in; 64 to 128 bytes
    is a sensible value when the peer is known to cope. The four RFC 7692 parameters say
    what we ask for:

    * server_no_context_takeover: the server resets its compressor after every message
      (a server announces it; a client requests it).
    * client_no_context_takeover: the client resets its compressor after every message
      (a server requests it; a client announces it).
    * server_max_window_bits / client_max_window_bits (8-15, None: 15): the LZ77 window of
      the server's / the client's compressor. A server asks the client for
      client_max_window_bits only when the client offered that parameter. Our own
      compressor cannot use 8 (zlib), so a server refuses server_max_window_bits=8 and a
      client client_max_window_bits=8.
    """

    level: int = 6
    mem_level: int = 8
    min_size: int = 0
    server_no_context_takeover: bool = False
    client_no_context_takeover: bool = False
    server_max_window_bits: int | None = None
    client_max_window_bits: int | None = None

    def __post_init__(self) -> None:
        if not -1 <= self.level <= 9:
            raise ValueError(f"level must be -1..9, not {self.level}")
        if not 1 <= self.mem_level <= 9:
            raise ValueError(f"mem_level must be 1..9, not {self.mem_level}")
        if self.min_size < 0:
            raise ValueError("min_size must be >= 0")
        for name in ("server_max_window_bits", "client_max_window_bits"):
            value = getattr(self, name)
            if value is not None and not 8 <= value <= 15:
                raise ValueError(f"{name} must be 8..15, not {value}")

    def check_side(self, is_client: bool) -> None:
        """Refuse a window of 8 bits for our own compressor (zlib cannot make one)."""
        own = "client_max_window_bits" if is_client else "server_max_window_bits"
        if getattr(self, own) == 8:
            raise ValueError(f"{own}=8 is not supported: zlib cannot compress with a "
                             "256-byte window; use 9..15")


CompressionSetting = bool | DeflateOptions | Mapping[str, Any] | None


def deflate_options(compression: CompressionSetting, *, is_client: bool) -> DeflateOptions | None:
    """The DeflateOptions meant by a `compression=` argument (None: compression off)."""
    if compression is None or compression is False:
        return None
    if compression is True:
        options = DeflateOptions()
    elif isinstance(compression, DeflateOptions):
        options = compression
    elif isinstance(compression, Mapping):
        options = DeflateOptions(**compression)
    else:
        raise TypeError("compression must be a bool, a DeflateOptions or a dict of its fields, "
                        f"not {type(compression).__name__}")
    options.check_side(is_client)
    return options


# ---------------------------------------------------------------------- parameters

def _window_bits(value: str | None) -> int | None:
    """A max_window_bits value: a decimal 8..15 without leading zeros, else None."""
    if value is None or not value.isascii() or not value.isdigit() or value.startswith("0"):
        return None
    bits = int(value)
    return bits if 8 <= bits <= 15 else None


def _parse_params(params: Sequence[tuple[str, str | None]], *, offer: bool) -> dict[str, Any]:
    """Check one permessage-deflate element; ValueError names the first problem.

    Returns {name: value}: True for the no_context_takeover flags, an int (or None for a
    client_max_window_bits without value, allowed in an offer only) for the window bits.
    """
    found: dict[str, Any] = {}
    for name, value in params:
        key = name.lower()
        if key not in _PARAMS:
            raise ValueError(f"unknown parameter {name}")
        if key in found:
            raise ValueError(f"parameter {name} appears twice")
        if key.endswith("no_context_takeover"):
            if value is not None:
                raise ValueError(f"{name} takes no value")
            found[key] = True
        elif value is None and key == "client_max_window_bits" and offer:
            found[key] = None
        else:
            bits = _window_bits(value)
            if bits is None:
                raise ValueError(f"{name}={value} is not a window size of 8..15 bits")
            found[key] = bits
    return found


# ---------------------------------------------------------------------- server side

def negotiate_server(offers: Sequence[Extension],
                     options: DeflateOptions) -> tuple[Params, Deflate] | None:
    """Accept the first acceptable permessage-deflate offer among `offers` (parsed).

    Returns the answer's parameters (format with `format_extensions([(EXTENSION_NAME,
    params)])`) and the Deflate extension configured for the server, or None when no offer
    is acceptable.
    """
    for name, params in offers:
        if name.lower() != EXTENSION_NAME:
            continue
        try:
            offered = _parse_params(params, offer=True)
        except ValueError:
            continue
        answer: Params = []
        # Our compressor: reset when the client asks for it or when we want to.
        local_reset = options.server_no_context_takeover or "server_no_context_takeover" in offered
        if local_reset:
            answer.append(("server_no_context_takeover", None))
        # The client's compressor: reset only when we ask (an offer's flag is just a hint).
        remote_reset = options.client_no_context_takeover
        if remote_reset:
            answer.append(("client_no_context_takeover", None))
        local_bits = options.server_max_window_bits or 15
        if "server_max_window_bits" in offered:
            local_bits = min(local_bits, offered["server_max_window_bits"])
            if local_bits < 9:
                continue            # 8 bits demanded: zlib cannot honour it, decline
        if local_bits < 15 or "server_max_window_bits" in offered:
            answer.append(("server_max_window_bits", str(local_bits)))
        remote_bits = 15
        if "client_max_window_bits" in offered:
            wanted = options.client_max_window_bits
            hint = offered["client_max_window_bits"]
            if wanted is not None or hint is not None:
                remote_bits = min(wanted or 15, hint or 15)
                answer.append(("client_max_window_bits", str(remote_bits)))
        stage = Deflate(level=options.level, mem_level=options.mem_level,
                        min_size=options.min_size,
                        local_no_context_takeover=local_reset,
                        remote_no_context_takeover=remote_reset,
                        local_max_window_bits=local_bits, remote_max_window_bits=remote_bits)
        return answer, stage
    return None


def negotiate_response(request: Request, response: Response,
                       options: DeflateOptions | None) -> Deflate | None:
    """permessage-deflate for a server's 101 `response` to `request`: the agreed extension,
    its answer added to the response's headers; None (and the response untouched) when
    `options` is None, the request offers nothing acceptable, or the response already has a
    Sec-WebSocket-Extensions header (the application negotiated by itself)."""
    if options is None or response.headers.get("sec-websocket-extensions") is not None:
        return None
    try:
        offers = parse_extensions(request.headers.get_all("sec-websocket-extensions"))
    except ValueError:
        return None          # a malformed header: answer without extensions
    agreed = negotiate_server(offers, options)
    if agreed is None:
        return None
    params, extension = agreed
    response.headers.add("Sec-WebSocket-Extensions", format_extensions([(EXTENSION_NAME, params)]))
    return extension


# ---------------------------------------------------------------------- client side

def client_offer(options: DeflateOptions) -> Params:
    """Our offer's parameters; format with `format_extensions([(EXTENSION_NAME, params)])`."""
    params: Params = []
    if options.server_no_context_takeover:
        params.append(("server_no_context_takeover", None))
    if options.client_no_context_takeover:
        params.append(("client_no_context_takeover", None))
    if options.server_max_window_bits is not None:
        params.append(("server_max_window_bits", str(options.server_max_window_bits)))
    bits = options.client_max_window_bits
    params.append(("client_max_window_bits", None if bits is None else str(bits)))
    return params


def negotiate_client(extensions: Sequence[Extension], offer: Params,
                     options: DeflateOptions) -> Deflate | None:
    """Check the server's answer (its parsed Sec-WebSocket-Extensions) to our `offer`.

    Returns the configured Deflate extension, None when the server declined, and raises
    NegotiationError when the answer is not one we can accept.
    """
    if not extensions:
        return None
    if len(extensions) > 1:
        names = ", ".join(name for name, _ in extensions)
        raise NegotiationError(f"the server accepted several extensions: {names}")
    name, params = extensions[0]
    if name.lower() != EXTENSION_NAME:
        raise NegotiationError(f"the server accepted an extension we did not offer: {name}")
    try:
        answer = _parse_params(params, offer=False)
        ours = _parse_params(offer, offer=True)
    except ValueError as exc:
        raise NegotiationError(f"bad permessage-deflate answer: {exc}") from None
    if "server_no_context_takeover" in ours and "server_no_context_takeover" not in answer:
        raise NegotiationError("the server ignored our server_no_context_takeover")
    remote_bits = 15
    if "server_max_window_bits" in answer:
        remote_bits = answer["server_max_window_bits"]
        if "server_max_window_bits" in ours and remote_bits > ours["server_max_window_bits"]:
            raise NegotiationError(
                f"the server's server_max_window_bits={remote_bits} is larger than we offered")
    elif "server_max_window_bits" in ours:
        raise NegotiationError("the server ignored our server_max_window_bits")
    local_bits = options.client_max_window_bits or 15
    if "client_max_window_bits" in answer:
        if "client_max_window_bits" not in ours:
            raise NegotiationError("the server set client_max_window_bits, which we did not offer")
        local_bits = answer["client_max_window_bits"]
        limit = ours["client_max_window_bits"]
        if limit is not None and local_bits > limit:
            raise NegotiationError(
                f"the server's client_max_window_bits={local_bits} is larger than we offered")
        if local_bits < 9:
            raise NegotiationError("client_max_window_bits=8 cannot be honoured (zlib's "
                                   "smallest raw deflate window is 9 bits)")
    local_reset = ("client_no_context_takeover" in answer or "client_no_context_takeover" in ours)
    return Deflate(level=options.level, mem_level=options.mem_level, min_size=options.min_size,
                   local_no_context_takeover=local_reset,
                   remote_no_context_takeover="server_no_context_takeover" in answer,
                   local_max_window_bits=local_bits, remote_max_window_bits=remote_bits)


# ---------------------------------------------------------------------- the extension

class Deflate:
    """permessage-deflate on a connection: an extension of its protocol (fastws._protocol).

    "local" is our compressor, "remote" the peer's (our decompressor). Built by the
    negotiation (`negotiate_server` / `negotiate_client`) and given to the connection's
    protocol; `conn.find_stage(Deflate)` returns it. The protocol counts the decoded size
    of each message against its limit and checks decoded text as UTF-8; `decode` never
    returns more than that limit allows plus one byte, so a decompression bomb costs no
    more memory than a legal message. `produced_max` is the largest inflated message (or
    part of one, when it failed) seen; `compressed` and `decompressed` count messages.
    """

    name = EXTENSION_NAME
    rsv = 4                              # RSV1 marks a compressed message (RFC 7692 6)

    def __init__(self, *, level: int = 6, mem_level: int = 8, min_size: int = 0,
                 local_no_context_takeover: bool = False,
                 remote_no_context_takeover: bool = False,
                 local_max_window_bits: int = 15, remote_max_window_bits: int = 15) -> None:
        if not 9 <= local_max_window_bits <= 15:
            raise ValueError("local_max_window_bits must be 9..15 (zlib cannot compress with 8)")
        if not 8 <= remote_max_window_bits <= 15:
            raise ValueError("remote_max_window_bits must be 8..15")
        self.level = level
        self.mem_level = mem_level
        self.min_size = min_size
        self.local_no_context_takeover = local_no_context_takeover
        self.remote_no_context_takeover = remote_no_context_takeover
        self.local_max_window_bits = local_max_window_bits
        self.remote_max_window_bits = remote_max_window_bits
        self.produced_max = 0
        self.compressed = 0              # messages deflated
        self.decompressed = 0            # messages inflated
        # zlib's objects are made when a message needs them, so an idle connection has none
        # (zlib.Compress / zlib.Decompress: typeshed's names for types zlib does not export)
        self._compressor: zlib._Compress | None = None
        self._decompressor: zlib._Decompress | None = None
        self._size = 0                   # inflated bytes of the inbound message so far
        self._deflating = False          # the outbound message in progress is compressed

    @property
    def shared_window_bits(self) -> int | None:
        """The window of a compressor this connection may share with others, or None.

        A message compressed once for many connections (a broadcast, fastws.topics) is
        valid on this one only when our compressor resets after every message (server/
        client_no_context_takeover for our side): with context takeover, our next message
        would refer back to bytes the peer's window holds at other distances. It must also
        use at most our negotiated window; compressors are shared per window size.
        """
        return self.local_max_window_bits if self.local_no_context_takeover else None

    def __repr__(self) -> str:
        return (f"<Deflate local={self.local_max_window_bits}"
                f"{'/reset' if self.local_no_context_takeover else ''} "
                f"remote={self.remote_max_window_bits}"
                f"{'/reset' if self.remote_no_context_takeover else ''}>")

    # --- inbound

    def decode(self, data: Buffer, first: bool, fin: bool, max_size: int) -> bytes:
        """Inflate one frame of a compressed message; at most `max_size` + 1 bytes
        (`max_size` < 0: no limit). Bad data raises ProtocolError (1007)."""
        if first:
            self._size = 0
            if self._decompressor is None:
                self._decompressor = zlib.decompressobj(wbits=-self.remote_max_window_bits)
        decompressor = self._decompressor
        assert decompressor is not None
        try:
            if max_size < 0:
                out = decompressor.decompress(data)
                if fin:
                    out += decompressor.decompress(_TAIL)
            else:
                # One byte past the limit proves the message too big without holding more.
                out = decompressor.decompress(data, max_size + 1)
                if fin and len(out) <= max_size:
                    out += decompressor.decompress(_TAIL, max_size + 1 - len(out))
        except zlib.error as exc:
            self._decompressor = None
            raise ProtocolError(CloseCode.INVALID_DATA, f"invalid compressed data: {exc}") from None
        self._size += len(out)
        self.produced_max = max(self.produced_max, self._size)
        if fin:
            self.decompressed += 1
            if decompressor.eof:
                # The peer ended the deflate stream (BFINAL): the next message starts anew.
                if decompressor.unused_data not in (b"", _TAIL):
                    self._decompressor = None
                    raise ProtocolError(CloseCode.INVALID_DATA,
                                        "data after the end of a deflate stream")
                self._decompressor = None
            elif self.remote_no_context_takeover:
                self._decompressor = None
        return out

    # --- outbound

    def encode(self, data: Buffer, first: bool, fin: bool) -> tuple[Buffer, int]:
        """Deflate one outgoing data frame: (payload, RSV bits). A whole message under
        `min_size` bytes goes out as it is; a fragmented one is compressed throughout."""
        if first:
            self._deflating = not fin or memoryview(data).nbytes >= self.min_size
        if not self._deflating:
            return data, 0
        compressor = self._compressor
        if compressor is None:
            compressor = self._compressor = zlib.compressobj(
                self.level, zlib.DEFLATED, -self.local_max_window_bits, self.mem_level)
        out = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
        if fin:
            if out.endswith(_TAIL):
                out = out[:-4]
            self._deflating = False
            self.compressed += 1
            if self.local_no_context_takeover:
                self._compressor = None
        return out, (self.rsv if first else 0)
