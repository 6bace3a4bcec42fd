// A bot that reads Titanium Cluster's Redis Streams sink with @discordjs/brokers, unchanged.
//
//   npm install            (in this folder)
//   node brokers.mjs --redis redis://127.0.0.1:6379/0 --group mybot --event MESSAGE_CREATE [--count N]
//
// The cluster runs with `cluster up --redis URL --sink redis`: every dispatch is an entry
// of the stream named after the event, field `data` = msgpack of {shardId, payload}, the
// layout PubSubRedisBroker reads. Each event is printed as one JSON line and acknowledged
// after it is handled; entries nobody acknowledged stay pending for the group.
// With --count N the script stops after N events.
import { PubSubRedisBroker } from "@discordjs/brokers";
import { Redis } from "ioredis";

function parseArgs(argv) {
  const opts = { redis: process.env.CLUSTER_REDIS ?? "redis://127.0.0.1:6379/0", group: "mybot", events: [], count: 0 };
  for (let i = 0; i < argv.length; i++) {
    const value = argv[i + 1];
    if (argv[i] === "--redis") { opts.redis = value; i++; }
    else if (argv[i] === "--group") { opts.group = value; i++; }
    else if (argv[i] === "--event") { opts.events.push(value); i++; }
    else if (argv[i] === "--count") { opts.count = Number(value); i++; }
    else { throw new Error(`unknown argument ${argv[i]}`); }
  }
  if (!opts.events.length) opts.events.push("MESSAGE_CREATE");
  return opts;
}

const opts = parseArgs(process.argv.slice(2));
const redis = new Redis(opts.redis);
const broker = new PubSubRedisBroker(redis, { group: opts.group, blockTimeout: 1000 });

let handled = 0;
let done = false;
async function stop() {
  if (done) return;
  done = true;
  // Not destroy(): it would delete this consumer from the group (XGROUP DELCONSUMER).
  broker.streamReadClient.disconnect();
  redis.disconnect();
}

broker.on("error", (error) => {
  if (done) return; // the read loop ends with "Connection is closed" after stop()
  console.error(`broker error: ${error}`);
  process.exitCode = 1;
  void stop();
});

for (const event of opts.events) {
  broker.on(event, async ({ data, ack }) => {
    // The broker hands out up to maxChunk events at once: after stop() they stay
    // pending in the group, for this consumer name, as if the process had died.
    if (done || (opts.count && handled >= opts.count)) return;
    handled += 1;
    // data = {shardId, payload: {op: 0, t, s, d}}: what discord.js's WebSocketManager emits
    console.log(JSON.stringify({ event, shardId: data.shardId, payload: data.payload }));
    await ack();
    if (opts.count && handled >= opts.count) await stop();
  });
}

process.on("SIGINT", () => void stop());
process.on("SIGTERM", () => void stop());
await broker.subscribe(opts.events);
