"""The Starlette application that tests/test_uvicorn.py runs under uvicorn with
`--ws fastws.uvicorn:WebSocketProtocol` (and the browser test, and Autobahn's uvicorn mode).

/echo            text and binary messages come back unchanged
/subprotocol     accepts the first of the client's subprotocols the app knows, says which
/close-by-app    closes with 4001 "app says bye" after one message
/reject          closes before accepting: uvicorn's rule is 403
/deny            answers with its own HTTP response (the denial response extension): 401
/closes          (HTTP GET) the disconnect codes and reasons the endpoints saw, as JSON
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

KNOWN_SUBPROTOCOLS = ("v2.fastws.test", "v1.fastws.test")
closes: list[list[object]] = []


async def echo(websocket: WebSocket) -> None:
    await websocket.accept()
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            closes.append([message.get("code"), message.get("reason", "")])
            return
        if message.get("text") is not None:
            await websocket.send_text(message["text"])
        else:
            await websocket.send_bytes(message["bytes"])


async def subprotocol(websocket: WebSocket) -> None:
    offered = websocket.scope["subprotocols"]
    chosen = next((name for name in offered if name in KNOWN_SUBPROTOCOLS), None)
    await websocket.accept(subprotocol=chosen)
    await websocket.send_text(f"chosen: {chosen}")
    try:
        await websocket.receive_text()
    except WebSocketDisconnect:
        pass


async def close_by_app(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.receive_text()
    await websocket.close(4001, "app says bye")


async def reject(websocket: WebSocket) -> None:
    await websocket.close()


async def deny(websocket: WebSocket) -> None:
    await websocket.send_denial_response(PlainTextResponse("go away\n", status_code=401))


async def seen_closes(request: Request) -> JSONResponse:
    return JSONResponse(closes)


app = Starlette(routes=[
    WebSocketRoute("/echo", echo),
    WebSocketRoute("/subprotocol", subprotocol),
    WebSocketRoute("/close-by-app", close_by_app),
    WebSocketRoute("/reject", reject),
    WebSocketRoute("/deny", deny),
    Route("/closes", seen_closes),
])
