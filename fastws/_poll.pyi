"""Type stubs for fastws._poll (internal): the loop's wait and dispatch in C."""

import selectors
from collections.abc import Callable
from typing import Any

from typing_extensions import disjoint_base

@disjoint_base
class FdCallbacks:
    reader: Callable[..., object] | None
    reader_args: tuple[object, ...]
    writer: Callable[..., object] | None
    writer_args: tuple[object, ...]

@disjoint_base
class EpollDispatcher:
    def __init__(self, selector: selectors.BaseSelector, loop: Any,
                 report: Callable[[str, Callable[..., object]], None]) -> None: ...
    def add(self, fileobj: Any, event: int, callback: Callable[..., object],
            args: tuple[object, ...]) -> None: ...
    def remove(self, fileobj: Any, event: int) -> bool: ...
    def register(self, fileobj: Any, events: int, data: FdCallbacks) -> selectors.SelectorKey: ...
    def get_key(self, fileobj: Any) -> selectors.SelectorKey: ...
    def close(self) -> None: ...
    def dispatch(self, timeout: float) -> int: ...
