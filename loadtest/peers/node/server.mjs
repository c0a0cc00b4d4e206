// A "tutorial-style" SSE server, as a second reference point for the benchmarks: Node's
// http module, one Redis pub/sub subscription per channel, every subscriber's response
// kept in a Set and written to on each message. No event ids, no history, no resume:
// what most blog posts show. URL shapes match the nchan peer:
//   GET  /sub/{channel}   text/event-stream
//   POST /pub/{channel}   body = the event data
// Environment: PORT (required), REDIS_URL (default redis://127.0.0.1:6379).
import http from "node:http";
import { createClient } from "redis";

const port = Number(process.env.PORT);
const redisUrl = process.env.REDIS_URL ?? "redis://127.0.0.1:6379";
const publisher = createClient({ url: redisUrl });
const subscriber = publisher.duplicate();
await publisher.connect();
await subscriber.connect();

/** channel -> Set of open responses */
const clients = new Map();

async function join(channel, res) {
  let set = clients.get(channel);
  if (!set) {
    set = new Set();
    clients.set(channel, set);
    await subscriber.subscribe(channel, (message) => {
      const frame = `data: ${message.replace(/\r?\n/g, "\ndata: ")}\n\n`;
      for (const r of clients.get(channel) ?? []) r.write(frame);
    });
  }
  set.add(res);
}

const server = http.createServer((req, res) => {
  const m = /^\/(sub|pub)\/([A-Za-z0-9_.:-]+)$/.exec(req.url ?? "");
  if (!m) {
    res.writeHead(404).end();
    return;
  }
  const [, kind, channel] = m;
  if (kind === "sub" && req.method === "GET") {
    res.writeHead(200, {
      "Content-Type": "text/event-stream",
      "Cache-Control": "no-cache",
      Connection: "keep-alive",
    });
    res.write(": hi\n\n");
    join(channel, res).catch(() => res.end());
    req.on("close", () => clients.get(channel)?.delete(res));
  } else if (kind === "pub" && req.method === "POST") {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      publisher
        .publish(channel, Buffer.concat(chunks).toString())
        .then(() => res.writeHead(201).end())
        .catch(() => res.writeHead(503).end());
    });
  } else {
    res.writeHead(405).end();
  }
});
server.keepAliveTimeout = 60_000;
server.headersTimeout = 65_000;
server.requestTimeout = 0;
server.listen(port, "127.0.0.1", () => console.log(`listening http=127.0.0.1:${port}`));
