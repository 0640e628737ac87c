"""Topics and broadcast: rooms in one process, each message encoded once for everyone.

A server puts each WebSocket into the room named by its path (`conn.subscribe(room)`);
what a client sends goes to the others in its room (`conn.publish`), and the server
announces to every room at once (`server.publish`) and to every connection
(`fastws.broadcast(server.connections, ...)`). Three clients join two rooms and print
what they hear. With `serve(pubsub="redis://...")` the same code spans workers and
machines (docs/scaling.md).

Run:  python examples/topics.py
"""

from __future__ import annotations

from collections.abc import Callable

import fastws
from fastws import Connection, Frame, Request, Response


class Rooms:
    def on_request(self, conn: Connection, request: Request) -> None:
        if not request.upgrade:
            conn.respond(Response.text(404, "rooms are WebSockets\n"))
        elif conn.upgrade(fastws.accept(request)):
            conn.subscribe(request.path.strip("/") or "lobby")

    def on_frame(self, conn: Connection, frame: Frame) -> None:
        for room in conn.topics:
            conn.publish(room, frame.string_data)       # to the others in the room


class Client:
    def __init__(self, name: str) -> None:
        self.name = name
        self.heard: list[str] = []

    def on_frame(self, conn: Connection, frame: Frame) -> None:
        self.heard.append(frame.string_data)


def run_until(loop: fastws.Loop, done: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = loop.time() + timeout
    while not done():
        if loop.time() > deadline:
            raise SystemExit("timed out")
        loop.run_once(0.01)


def main() -> None:
    loop = fastws.Loop()
    server = fastws.serve(Rooms(), "127.0.0.1", 0, loop=loop,
                          compression={"server_no_context_takeover": True})
    url = f"ws://127.0.0.1:{server.port}/"
    clients = {name: Client(name) for name in ("ann", "bob", "cyd")}
    conns = {name: fastws.connect(url + room, clients[name], loop=loop)
             for name, room in (("ann", "tea"), ("bob", "tea"), ("cyd", "coffee"))}
    run_until(loop, lambda: all(c.is_open for c in conns.values()))
    print(f"server.connections: {len(server.connections)}; rooms: {sorted(server.topics.names)}")

    conns["ann"].send_text("ann: anyone for tea?")
    server.publish("coffee", "server: the coffee is ready")
    count = fastws.broadcast(server.connections, "server: closing in a minute")
    run_until(loop, lambda: len(clients["bob"].heard) == 2 and len(clients["cyd"].heard) == 2)
    print(f"broadcast reached {count} connections")
    for name, client in clients.items():
        print(f"{name} heard: {client.heard}")
    compressed = server.topics.shared.compressed if server.topics.shared else 0
    print(f"messages compressed once for everyone: {compressed}")
    for conn in conns.values():
        conn.close()
    run_until(loop, lambda: not server.all_connections)
    server.close()
    loop.close()


if __name__ == "__main__":
    main()
