"""A FastAPI WebSocket endpoint on fastws' protocol: uvicorn with
`--ws fastws.uvicorn:WebSocketProtocol`, here started from Python.

Run:  python examples/uvicorn_fastapi.py
The same as `uvicorn uvicorn_fastapi:app --ws fastws.uvicorn:WebSocketProtocol`: it starts
uvicorn on a free port, talks to the endpoint with the fastws.asyncio client (a denied
request, an echo, a subprotocol, the app's close code), and stops uvicorn.
"""

from __future__ import annotations

import asyncio

import uvicorn
from fastapi import FastAPI, WebSocket, WebSocketDisconnect

import fastws.asyncio

app = FastAPI()


@app.websocket("/echo")
async def echo(websocket: WebSocket) -> None:
    if websocket.query_params.get("token") != "secret":
        await websocket.close()                       # before accepting: HTTP 403
        return
    chosen = "echo.v1" if "echo.v1" in websocket.scope["subprotocols"] else None
    await websocket.accept(subprotocol=chosen)
    try:
        while True:
            text = await websocket.receive_text()
            if text == "bye":
                await websocket.close(4000, "bye to you too")
                return
            await websocket.send_text(f"echo: {text}")
    except WebSocketDisconnect as gone:
        print(f"app: the client left with {gone.code}")


async def main() -> None:
    # The import string, as on the command line (uvicorn imports it).
    config = uvicorn.Config(app, host="127.0.0.1", port=0,
                            ws="fastws.uvicorn:WebSocketProtocol", log_level="warning")
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    base = f"ws://127.0.0.1:{port}/echo"
    try:
        await fastws.asyncio.connect(base)
    except fastws.HandshakeError as denied:
        print(f"client: without the token: {denied}")
    async with fastws.asyncio.connect(f"{base}?token=secret", subprotocols=["echo.v1"]) as ws:
        print(f"client: subprotocol {ws.subprotocol}")
        await ws.send("hello")
        print(f"client: {await ws.recv()}")
        await ws.send("bye")
        try:
            await ws.recv()
        except fastws.asyncio.ConnectionClosed as closed:
            print(f"client: closed by the app: {closed.code} {closed.reason!r}")
    server.should_exit = True
    await serving


if __name__ == "__main__":
    asyncio.run(main())
