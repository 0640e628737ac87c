"""The echo application Autobahn's uvicorn mode runs: Starlette under uvicorn with
`--ws fastws.uvicorn:WebSocketProtocol` (see run.py). Every path echoes; text comes back as
text and binary as binary, whole messages (the ASGI server reassembles fragments)."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect


async def echo(websocket: WebSocket) -> None:
    await websocket.accept()
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") is not None:
                await websocket.send_text(message["text"])
            else:
                await websocket.send_bytes(message["bytes"])
    except WebSocketDisconnect:
        pass          # the peer closed (or failed) while an echo was on its way


app = Starlette(routes=[WebSocketRoute("/{path:path}", echo)])
