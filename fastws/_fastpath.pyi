"""Type stubs for fastws._fastpath (internal): the connection's hot paths in C."""

import collections
from collections.abc import Callable
from typing import Any

from typing_extensions import Buffer, disjoint_base

from ._codec import Frame, FrameParser
from .loop import Loop

@disjoint_base
class FusedReader(FrameParser):
    fused: bool
    handler_on_frame: Callable[[Any, Frame], object] | None
    def __init__(
        self,
        conn: Any,
        *,
        expect_mask: bool,
        max_frame_size: int | None,
        max_message_size: int | None,
        validate_utf8: bool = True,
    ) -> None: ...
    @property
    def max_message_size(self) -> int | None: ...
    @max_message_size.setter
    def max_message_size(self, value: int | None) -> None: ...
    def take_partial_message(self) -> tuple[int, int, list[bytes], int] | None: ...

MODE_TLS_HANDSHAKE: str
MODE_HTTP: str
MODE_CLIENT_HANDSHAKE: str
MODE_WEBSOCKET: str
MODE_CLOSED: str
SEPARATE_PAYLOAD_SIZE: int

def next_masking_key() -> int: ...

class ConnectionCore:
    _mode: str
    _close_sent: bool
    is_client: bool
    _fused: bool
    _stages: list[Any]
    _write_queue: collections.deque[bytes | memoryview]
    _write_size: int
    _write_cap: int
    _high_water: int
    _corked: bool
    _eager: bool
    _writing_paused: bool
    loop: Loop
    _sock: Any
    _fd: int
    _tls: bool
    _writer_registered: bool
    _shutdown_after_flush: bool
    _input_closed: bool
    _parser: FusedReader | None
    _read_buffer: bytearray
    @property
    def is_open(self) -> bool: ...
    def send(self, frame: Frame) -> None: ...
    def send_text(self, text: str) -> None: ...
    def send_binary(self, data: Buffer) -> None: ...
    def _write_data(self, opcode: int, data: Buffer, fin: bool = True, rsv: int = 0) -> None: ...
    def _write(self, data: bytes | memoryview, corked: bool = False) -> None: ...
    def _on_readable(self) -> None: ...
    def _cork(self) -> None: ...
    def flush(self) -> None: ...
    # Provided by the Python subclass (fastws.connection.Connection):
    def _state_name(self) -> str: ...
    def _write_large(self, opcode: int, data: Buffer, fin: bool, rsv: int) -> None: ...
    def _send_queued(self) -> None: ...
    def _after_send(self) -> None: ...
    def _on_readable_py(self) -> None: ...
    def _read_failed(self, exc: OSError) -> None: ...
    def _on_eof(self) -> None: ...
    def _internal_error(self, exc: BaseException) -> None: ...
    def _shutdown_output(self) -> None: ...
    def _notify(self, name: str, *args: Any) -> None: ...
