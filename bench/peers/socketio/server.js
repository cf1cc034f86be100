// The Socket.IO 4 peer that `herald-bench --protocol socketio` measures Herald against.
//
// It does what the Herald edge does for the benchmark, in the idiomatic Socket.IO way:
//   - a client joins a room: `socket.emit("join", room, ack)`; the ack carries the room's
//     current offset, like Herald's `subscribed` position;
//   - a publish gives the room its next offset and broadcasts once to the room:
//     `io.to(room).emit("event", {topic, offset, id, time, type, data, publisher})`, the same
//     fields as a Herald event, so frames are of comparable size;
//   - publishers are sockets that connected with `auth: {key: PUBLISH_KEY}` and emit
//     `publish` with an ack (the ack carries the offset), or anyone with the key may
//     `POST /publish` `{"topic","type","data"}` with header `x-publish-key`.
// Offsets are per room, 1, 2, 3…, so the load generator detects loss, duplicates and
// reordering exactly as it does for Herald. Nothing is retained: Socket.IO has no history,
// so a client that reconnects has lost what was sent meanwhile.
//
// Usage: node server.js [--port 3000]   (listens on 127.0.0.1 only)
//   GET /stats → {"sockets": N, "rss": bytes}

"use strict";

const http = require("node:http");
const crypto = require("node:crypto");
const { Server } = require("socket.io");

function option(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}

const port = Number(option("port", process.env.PORT || "3000"));
const publishKey = option("publish-key", process.env.PUBLISH_KEY || "bench");

/** room → last offset given. */
const offsets = new Map();

function publish(topic, type, data) {
  const offset = (offsets.get(topic) || 0) + 1;
  offsets.set(topic, offset);
  io.to(topic).emit("event", {
    topic,
    offset,
    id: crypto.randomUUID(),
    time: new Date().toISOString(),
    type,
    data,
    publisher: "herald-bench",
  });
  return offset;
}

function reply(res, status, body) {
  res.writeHead(status, { "content-type": "application/json" });
  res.end(JSON.stringify(body));
}

// socket.io answers /socket.io/ itself and hands every other request to this handler.
const httpServer = http.createServer((req, res) => {
  if (req.method === "GET" && req.url === "/stats") {
    return reply(res, 200, { sockets: io.engine.clientsCount, rss: process.memoryUsage().rss });
  }
  if (req.method === "POST" && req.url === "/publish") {
    if (req.headers["x-publish-key"] !== publishKey) {
      return reply(res, 403, { error: "x-publish-key required" });
    }
    let body = "";
    req.setEncoding("utf8");
    req.on("data", (chunk) => {
      body += chunk;
    });
    req.on("end", () => {
      try {
        const { topic, type, data } = JSON.parse(body);
        if (typeof topic !== "string") throw new Error("topic must be a string");
        reply(res, 200, { offset: publish(topic, type, data) });
      } catch (error) {
        reply(res, 400, { error: String(error) });
      }
    });
    return;
  }
  reply(res, 404, { error: "not found" });
});

const io = new Server(httpServer, {
  // The benchmark speaks WebSocket only, like Herald's edge; no long-polling fallback.
  transports: ["websocket"],
  serveClient: false,
});

io.on("connection", (socket) => {
  socket.on("join", (room, ack) => {
    if (typeof room !== "string") return;
    socket.join(room);
    if (typeof ack === "function") ack({ offset: offsets.get(room) || 0 });
  });
  const auth = socket.handshake.auth || {};
  if (auth.key === publishKey) {
    socket.on("publish", (message, ack) => {
      const { topic, type, data } = message || {};
      if (typeof topic !== "string") return;
      const offset = publish(topic, type, data);
      if (typeof ack === "function") ack({ offset });
    });
  }
});

httpServer.listen(port, "127.0.0.1", () => {
  console.log(`socket.io ${require("socket.io/package.json").version} peer on 127.0.0.1:${port}`);
});

function stop() {
  io.close();
  process.exit(0);
}
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
