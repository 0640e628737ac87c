"""One blocking client doing one benchmark, in its own process; prints a JSON line.

    python bench/sync/clients.py CLIENT TASK PORT N

CLIENT: fastws | websockets | websocket-client. TASK: recv (N messages from /flood, each
checked for its sequence number) or pingpong (N round trips of 32 B, each echo compared).
Compression is off for every client (the server does not offer it either).
"""

from __future__ import annotations

import json
import resource
import sys
import time


def fastws_client(url):
    import fastws.sync
    ws = fastws.sync.connect(url, compression=False, proxy=None).open()
    return ws, ws.send, ws.recv, ws.close


def websockets_client(url):
    from websockets.sync.client import connect
    ws = connect(url, compression=None, max_size=None, proxy=None)
    return ws, ws.send, ws.recv, ws.close


def websocket_client_client(url):
    import websocket
    ws = websocket.create_connection(url, enable_multithread=True)
    return ws, ws.send_binary, ws.recv, ws.close


CLIENTS = {"fastws": fastws_client, "websockets": websockets_client,
           "websocket-client": websocket_client_client}


def run_recv(client, port, n):
    _, _, recv, close = CLIENTS[client](f"ws://127.0.0.1:{port}/flood?n={n}&size=32")
    start = time.perf_counter()
    for expected in range(n):
        message = recv()
        if int.from_bytes(message[:8], "big") != expected or len(message) != 32:
            raise SystemExit(f"{client}: message {expected} is wrong: {message[:8]!r}")
    elapsed = time.perf_counter() - start
    close()
    return elapsed


def run_pingpong(client, port, n):
    _, send, recv, close = CLIENTS[client](f"ws://127.0.0.1:{port}/echo")
    payload = b"p" * 32
    for _ in range(1000):      # warm-up
        send(payload)
        recv()
    start = time.perf_counter()
    for _ in range(n):
        send(payload)
        if recv() != payload:
            raise SystemExit(f"{client}: wrong echo")
    elapsed = time.perf_counter() - start
    close()
    return elapsed


if __name__ == "__main__":
    client, task, port, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    before = resource.getrusage(resource.RUSAGE_SELF)
    elapsed = (run_recv if task == "recv" else run_pingpong)(client, port, n)
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(json.dumps({"client": client, "task": task, "n": n, "seconds": elapsed,
                      "per_second": n / elapsed, "cpu_seconds": cpu}))
