// Node's ws fan-out server for the benchmark: /sub clients are kept in a set, every
// message received on /pub is sent to each with client.send (a loop over them).
"use strict";
const { WebSocketServer } = require("ws");

const port = Number(process.argv[process.argv.indexOf("--port") + 1]);
const server = new WebSocketServer({ host: "127.0.0.1", port, perMessageDeflate: false,
                                     maxPayload: 64 * 1024 * 1024 });
const subscribers = new Set();
server.on("connection", (ws, request) => {
  if (request.url === "/sub") {
    subscribers.add(ws);
    ws.on("close", () => subscribers.delete(ws));
  } else {
    ws.on("message", (data, isBinary) => {
      for (const client of subscribers) client.send(data, { binary: isBinary });
    });
  }
});
process.on("SIGTERM", () => process.exit(0));
