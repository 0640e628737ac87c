"""picows echo server (binary and text messages come back unchanged; no compression in picows).

python picows_echo.py --port P [--uvloop] [--certfile CERT --keyfile KEY]
"""
import argparse
import asyncio
import ssl

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


def server_tls(certfile, keyfile):
    """A server-side TLS context for --certfile/--keyfile, or None for ws://."""
    if not certfile:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certfile, keyfile)
    return context


async def main(host, port, tls):
    server = await ws_create_server(lambda request: Echo(), host, port, ssl=tls,
                                    max_frame_size=64 * 1024 * 1024)
    print("listening", flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--uvloop", action="store_true")
    ap.add_argument("--certfile", help="TLS certificate chain (PEM): serve wss://")
    ap.add_argument("--keyfile", help="TLS private key (PEM)")
    args = ap.parse_args()
    tls = server_tls(args.certfile, args.keyfile)
    if args.uvloop:
        import uvloop
        uvloop.run(main(args.host, args.port, tls))
    else:
        asyncio.run(main(args.host, args.port, tls))
