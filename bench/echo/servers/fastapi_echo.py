"""FastAPI echo endpoint for uvicorn: the same app under every `--ws` implementation.

python -m uvicorn fastapi_echo:app --app-dir bench/echo/servers --port P --ws IMPL ...

run.py starts it with `--ws fastws.uvicorn:WebSocketProtocol` and with `--ws
websockets-sansio` (uvicorn's own), on uvloop, compression off: only the WebSocket
implementation differs.
"""
from fastapi import FastAPI, WebSocket, WebSocketDisconnect

app = FastAPI()


@app.websocket("/")
async def echo(websocket: WebSocket) -> None:
    await websocket.accept()
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("bytes") is not None:
                await websocket.send_bytes(message["bytes"])
            else:
                await websocket.send_text(message["text"])
    except WebSocketDisconnect:
        pass
