"""The chat relay of `python -m fastws chat`: rooms are topics.

A client joins room R by opening a WebSocket to /chat/R. Every text message it sends is
published to topic R and so relayed, verbatim, to every client in the room, the sender
included, on this worker and (with a backplane, `--redis`) on every other worker and
machine; one sender's messages arrive in the order it sent them. Binary messages are
refused (1003). GET / (or /chat/R) serves a small chat page whose messages are JSON
objects of its own ({"user": ..., "text": ...}); the relay does not look inside them.

The relay adds messages of its own, JSON objects with a "system" key, when its link to
the other servers fails or comes back ({"system": "backplane lost", "reason": ...},
{"system": "backplane restored", "down": seconds}) and when publishes were lost
({"system": "messages lost", "count": n}): a client then knows it may have missed
messages, and when.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING
from urllib.parse import unquote

import fastws
from fastws import CloseCode, Connection, Frame, OpCode, Request, Response

if TYPE_CHECKING:
    from .server import Server

__all__ = ["CHAT_PAGE", "ChatRelay", "room_of"]

MAX_ROOM = 100            # characters in a room name

CHAT_PAGE = """<!doctype html>
<meta charset="utf-8"><title>fastws chat</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body { font: 15px system-ui, sans-serif; max-width: 42em; margin: 1em auto; padding: 0 1em; }
#log { border: 1px solid #ccc; height: 22em; overflow-y: auto; padding: .5em; margin: .5em 0; }
#log p { margin: .2em 0; } .system { color: #a60; } .me b { color: #06c; }
form { display: flex; gap: .4em; } #text { flex: 1; }
</style>
<h1>fastws chat</h1>
<p>Room <input id="room" size="12"> as <input id="user" size="12">
<button id="join" type="button">join</button> <span id="status">not connected</span></p>
<div id="log"></div>
<form id="say"><input id="text" autocomplete="off" placeholder="message">
<button id="send">send</button></form>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
let ws = null;
const params = new URLSearchParams(location.search);
$("room").value = params.get("room") || decodeURIComponent(
  location.pathname.startsWith("/chat/") ? location.pathname.slice(6) : "") || "lobby";
$("user").value = params.get("user") || "guest" + Math.floor(Math.random() * 1000);
function show(html, cls) {
  const p = document.createElement("p");
  if (cls) p.className = cls;
  p.innerHTML = html;
  $("log").appendChild(p);
  $("log").scrollTop = $("log").scrollHeight;
}
function esc(s) {
  return String(s).replace(/[&<>"]/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c]));
}
function join() {
  if (ws) ws.close(1000);
  const scheme = location.protocol === "https:" ? "wss://" : "ws://";
  const socket = ws = new WebSocket(scheme + location.host + "/chat/" + encodeURIComponent($("room").value));
  $("status").textContent = "connecting";
  socket.onopen = () => { $("status").textContent = "in room " + $("room").value; };
  socket.onclose = (e) => {
    if (socket === ws) { $("status").textContent = "disconnected (" + e.code + ")"; ws = null; }
  };
  socket.onmessage = (e) => {
    let m;
    try { m = JSON.parse(e.data); } catch (err) { m = {text: e.data}; }
    if (m === null || typeof m !== "object") m = {text: String(e.data)};
    if (m.system) { show(esc(m.system) + (m.reason ? ": " + esc(m.reason) : ""), "system"); return; }
    const mine = m.user === $("user").value;
    show("<b>" + esc(m.user || "?") + "</b>: " + esc(m.text), mine ? "me" : "");
  };
}
$("join").onclick = join;
$("say").onsubmit = (e) => {
  e.preventDefault();
  const text = $("text").value;
  if (!ws || ws.readyState !== WebSocket.OPEN || !text) return;
  ws.send(JSON.stringify({user: $("user").value, text: text}));
  $("text").value = "";
};
join();
</script>
"""  # noqa: E501 (lines of the page's script)


def room_of(path: str) -> str | None:
    """The room of a /chat/ROOM path (percent-decoded), or None."""
    if not path.startswith("/chat/"):
        return None
    room = unquote(path[len("/chat/"):], errors="strict") if "%" in path else path[6:]
    if not room or len(room) > MAX_ROOM or any(ord(c) < 32 for c in room):
        return None
    return room


class ChatRelay:
    """The chat server's handler (see the module doc)."""

    def __init__(self) -> None:
        self.rooms: dict[Connection, str] = {}

    def on_request(self, conn: Connection, request: Request) -> None:
        try:
            room = room_of(request.path)
        except UnicodeDecodeError:
            room = None
        if request.upgrade:
            if room is None:
                conn.respond(Response.text(404, "Not Found: join a room at /chat/ROOM\n"))
            elif conn.upgrade(fastws.accept(request)):
                self.rooms[conn] = room
                conn.subscribe(room)
            return
        if request.method in ("GET", "HEAD") and (request.path == "/" or room is not None):
            response = Response.html(200, CHAT_PAGE)
            if request.method == "HEAD":
                response.headers.set("Content-Length", str(len(response.body)))
                response.body = b""
            conn.respond(response)
        else:
            conn.respond(Response.text(404, "Not Found\n"))

    def on_frame(self, conn: Connection, frame: Frame) -> None:
        room = self.rooms.get(conn)
        if room is None or not conn.is_open:
            return
        if frame.opcode == OpCode.TEXT:
            # Verbatim to the whole room, the sender included, on every server.
            conn.server.publish(room, frame.string_data)
        elif frame.opcode == OpCode.BINARY:
            conn.close(CloseCode.UNSUPPORTED_DATA, "text messages only")

    def on_closed(self, conn: Connection, code: int, reason: str) -> None:
        self.rooms.pop(conn, None)

    # The backplane's news goes to every client of this server: they may miss messages.
    def on_backplane_lost(self, server: Server, reason: str) -> None:
        fastws.broadcast(server.connections,
                         json.dumps({"system": "backplane lost", "reason": reason}))

    def on_backplane_restored(self, server: Server, down: float) -> None:
        fastws.broadcast(server.connections,
                         json.dumps({"system": "backplane restored", "down": round(down, 3)}))

    def on_backplane_dropped(self, server: Server, count: int) -> None:
        fastws.broadcast(server.connections,
                         json.dumps({"system": "messages lost", "count": count}))
