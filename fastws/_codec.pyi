"""Type stubs for fastws._codec, the Cython RFC 6455 codec."""

import enum
from collections.abc import Callable

from typing_extensions import Buffer, disjoint_base

class OpCode(enum.IntEnum):
    CONTINUATION = 0
    TEXT = 1
    BINARY = 2
    CLOSE = 8
    PING = 9
    PONG = 10

class CloseCode(enum.IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    NO_STATUS = 1005
    ABNORMAL = 1006
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    MANDATORY_EXTENSION = 1010
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    BAD_GATEWAY = 1014
    TLS_HANDSHAKE = 1015

class ProtocolError(Exception):
    code: int
    reason: str
    def __init__(self, code: int, reason: str) -> None: ...

@disjoint_base
class Frame:
    fin: bool
    rsv: int
    data: bytes           # received frames always carry bytes; any bytes-like may be set
    def __init__(
        self,
        fin: bool = True,
        rsv: int = 0,
        opcode: int = OpCode.TEXT,
        masking_key: int | Buffer | None = None,
        data: Buffer | str = b"",
    ) -> None: ...
    @property
    def opcode(self) -> int: ...
    @opcode.setter
    def opcode(self, value: int) -> None: ...
    @property
    def masking_key(self) -> int | None: ...
    @masking_key.setter
    def masking_key(self, value: int | Buffer | None) -> None: ...
    @property
    def string_data(self) -> str: ...
    @property
    def is_control(self) -> bool: ...
    def encode(self) -> bytes: ...
    def __eq__(self, value: object, /) -> bool: ...

def mask(data: Buffer, key: int | Buffer) -> bytes: ...

@disjoint_base
class Utf8Validator:
    def __init__(self) -> None: ...
    def feed(self, data: Buffer) -> bool: ...
    def finish(self) -> bool: ...
    def reset(self) -> None: ...
    @property
    def valid(self) -> bool: ...

def is_valid_utf8(data: Buffer) -> bool: ...
def parse_close(data: Buffer) -> tuple[int, str]: ...
def close_payload(code: int | None, reason: str = "") -> bytes: ...
def encode_frame(
    opcode: int,
    data: Buffer | str,
    fin: bool = True,
    rsv: int = 0,
    masking_key: int | Buffer | None = None,
) -> bytes: ...
def frame_header(
    opcode: int,
    length: int,
    fin: bool = True,
    rsv: int = 0,
    masking_key: int | Buffer | None = None,
) -> bytes: ...
def encode_into(
    out: bytearray,
    opcode: int,
    data: Buffer | str,
    fin: bool = True,
    rsv: int = 0,
    masking_key: int | Buffer | None = None,
    at: int = -1,
) -> int: ...

@disjoint_base
class FrameParser:
    @property
    def on_frame(self) -> Callable[[Frame], object] | None: ...
    @property
    def on_error(self) -> Callable[[int, str], object] | None: ...
    expect_mask: bool
    def __init__(
        self,
        on_frame: Callable[[Frame], object] | None = None,
        on_error: Callable[[int, str], object] | None = None,
        *,
        expect_mask: bool = True,
        max_frame_size: int | None = None,
        validate_utf8: bool = False,
    ) -> None: ...
    validate_utf8: bool
    def feed(self, data: Buffer) -> None: ...
    def stop(self) -> None: ...
    @property
    def max_frame_size(self) -> int | None: ...
    @max_frame_size.setter
    def max_frame_size(self, value: int | None) -> None: ...
    @property
    def allowed_rsv(self) -> int: ...
    @allowed_rsv.setter
    def allowed_rsv(self, value: int) -> None: ...
    @property
    def failed(self) -> bool: ...
    @property
    def buffered(self) -> int: ...
def _spare_payloads_kept(limit: int | None = None) -> tuple[int, int]: ...
