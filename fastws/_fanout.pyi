"""Type stubs for fastws._fanout (internal): the hot loop of a broadcast."""

from collections.abc import Callable, Iterable
from typing import Any

from typing_extensions import disjoint_base

from ._protocol import Sink
from .eventloop import EventLoop

@disjoint_base
class Fanout:
    after_release: Callable[[], object] | None
    def __init__(self, loop: EventLoop) -> None: ...
    @property
    def deliveries(self) -> int: ...
    @property
    def releases(self) -> int: ...
    @property
    def held(self) -> int: ...
    def deliver(
        self,
        subscribers: dict[Any, Any] | Iterable[Any],
        opcode: int,
        data: bytes,
        frame: bytes,
        exclude: object,
        max_backlog: int,
        slow: list[Any] | None,
        shared_frame: Callable[[int, bytes, int], bytes | None] | None,
    ) -> int: ...
    def hold(self, sink: Sink) -> None: ...
    def _release_all(self) -> None: ...
