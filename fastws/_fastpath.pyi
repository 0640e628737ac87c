"""Type stubs for fastws._fastpath (internal): the default chain fused into the parser."""

from collections.abc import Callable
from typing import Any

from typing_extensions import disjoint_base

from ._codec import Frame, FrameParser

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
