"""picows fan-out server for the benchmark (uvloop): /sub transports are kept in a list,
every message received on /pub is sent to each with transport.send (a loop over them)."""

import argparse

import uvloop
from picows import WSListener, WSMsgType, ws_create_server

subscribers: list = []


class Subscriber(WSListener):
    def on_ws_connected(self, transport):
        subscribers.append(transport)

    def on_ws_disconnected(self, transport):
        subscribers.remove(transport)

    def on_ws_frame(self, transport, frame):
        if frame.msg_type == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()


class Publisher(WSListener):
    def on_ws_frame(self, transport, frame):
        if frame.msg_type == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()
        elif frame.msg_type == WSMsgType.BINARY:
            payload = frame.get_payload_as_bytes()
            for subscriber in subscribers:
                subscriber.send(WSMsgType.BINARY, payload)


def listener(request):
    return Subscriber() if request.path == b"/sub" else Publisher()


async def main(port):
    server = await ws_create_server(listener, "127.0.0.1", port,
                                    max_frame_size=64 * 1024 * 1024)
    await server.serve_forever()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    uvloop.run(main(ap.parse_args().port))
