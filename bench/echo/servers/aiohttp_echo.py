"""aiohttp echo server (web.Application + WebSocketResponse), compression off.

python aiohttp_echo.py --port P [--certfile CERT --keyfile KEY]
"""
import argparse
import ssl

from aiohttp import WSMsgType, web


async def handler(request):
    ws = web.WebSocketResponse(compress=False, max_msg_size=64 * 1024 * 1024, autoping=True)
    await ws.prepare(request)
    async for msg in ws:
        if msg.type == WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
        elif msg.type == WSMsgType.TEXT:
            await ws.send_str(msg.data)
    return ws


def server_tls(certfile, keyfile):
    """A server-side TLS context for --certfile/--keyfile, or None for ws://."""
    if not certfile:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certfile, keyfile)
    return context


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--certfile", help="TLS certificate chain (PEM): serve wss://")
    ap.add_argument("--keyfile", help="TLS private key (PEM)")
    args = ap.parse_args()
    app = web.Application()
    app.router.add_get("/", handler)
    web.run_app(app, host=args.host, port=args.port,
                ssl_context=server_tls(args.certfile, args.keyfile),
                print=lambda *a: print("listening", flush=True), access_log=None)
