"""websockets (asyncio implementation) echo server, compression off.

python websockets_echo.py --port P [--certfile CERT --keyfile KEY]
"""
import argparse
import asyncio
import ssl

from websockets.asyncio.server import serve


async def echo(ws):
    async for message in ws:
        await ws.send(message)


def server_tls(certfile, keyfile):
    """A server-side TLS context for --certfile/--keyfile, or None for ws://."""
    if not certfile:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certfile, keyfile)
    return context


async def main(host, port, tls):
    async with serve(echo, host, port, ssl=tls, compression=None, max_size=64 * 1024 * 1024,
                     ping_interval=None) as server:
        print("listening", flush=True)
        await server.serve_forever()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--certfile", help="TLS certificate chain (PEM): serve wss://")
    ap.add_argument("--keyfile", help="TLS private key (PEM)")
    args = ap.parse_args()
    asyncio.run(main(args.host, args.port, server_tls(args.certfile, args.keyfile)))
