"""Type stubs for fastws._inbox (internal): the blocking client's Receiver."""

import collections

from typing_extensions import disjoint_base

from ._protocol import Close, Receiver

@disjoint_base
class Inbox(Receiver):
    close: Close | None
    def __init__(self, messages: collections.deque[str | bytes]) -> None: ...
    @property
    def messages(self) -> collections.deque[str | bytes]: ...
    @property
    def pongs(self) -> list[bytes]: ...
