"""picows echo server (binary and text messages come back unchanged; no compression in picows).

python picows_echo.py --port P [--uvloop]
"""
import argparse
import asyncio

from picows import WSListener, WSMsgType, ws_create_server


class Echo(WSListener):
    def on_ws_frame(self, transport, frame):
        op = frame.msg_type
        if op == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()
        elif op == WSMsgType.PING or op == WSMsgType.PONG:
            pass  # auto-pong is on
        else:
            # picows hands over frames as they arrive; echo each one with the same fin bit
            transport.send(op, frame.get_payload_as_memoryview(), frame.fin)


async def main(host, port):
    server = await ws_create_server(lambda request: Echo(), host, port,
                                    max_frame_size=64 * 1024 * 1024)
    print("listening", flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--uvloop", action="store_true")
    args = ap.parse_args()
    if args.uvloop:
        import uvloop
        uvloop.run(main(args.host, args.port))
    else:
        asyncio.run(main(args.host, args.port))
