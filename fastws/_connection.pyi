"""Type stubs for fastws._connection (internal): the C half of fastws.Connection."""

from typing import Any

from typing_extensions import Buffer, disjoint_base

from ._codec import Frame
from ._protocol import Protocol, Receiver

@disjoint_base
class ConnectionBase(Receiver):
    _protocol: Protocol | None
    _stages: list[Any]
    _on_frame: Any
    @property
    def is_open(self) -> bool: ...
    def send(self, frame: Frame) -> None: ...
    def send_text(self, text: str) -> None: ...
    def send_binary(self, data: Buffer) -> None: ...
    def _send_from_chain(self, frame: Frame) -> None: ...
    def _deliver(self, frame: Frame) -> None: ...
