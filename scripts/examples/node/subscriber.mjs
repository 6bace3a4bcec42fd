// Subscribe to a Titanium Cluster's event stream from Node.js (zeromq v6).
//
//   npm install            (in this folder)
//   node subscriber.mjs --pub tcp://127.0.0.1:5555 --filter MESSAGE_ [--count N]
//
// Each event is three frames (PUB format v1): the event name, a JSON header with
// shard_id and seq, and the gateway payload exactly as Discord sent it.
import { Subscriber } from "zeromq";

function parseArgs(argv) {
  const opts = { pub: process.env.CLUSTER_PUB ?? "tcp://127.0.0.1:5555", filters: [], count: 0 };
  for (let i = 0; i < argv.length; i++) {
    const value = argv[i + 1];
    if (argv[i] === "--pub") { opts.pub = value; i++; }
    else if (argv[i] === "--filter") { opts.filters.push(value); i++; }
    else if (argv[i] === "--count") { opts.count = Number(value); i++; }
    else { throw new Error(`unknown argument ${argv[i]}`); }
  }
  return opts;
}

const opts = parseArgs(process.argv.slice(2));
const sub = new Subscriber({ linger: 0 });
sub.connect(opts.pub);
for (const prefix of opts.filters.length ? opts.filters : [""]) sub.subscribe(prefix);
process.on("SIGINT", () => sub.close());

let received = 0;
try {
  for await (const frames of sub) {
    if (frames.length !== 3) continue;
    const [topic, header, payload] = frames;
    const { shard_id: shardId, seq } = JSON.parse(header.toString());
    const event = JSON.parse(payload.toString());
    const guild = event.d && event.d.guild_id ? ` guild ${event.d.guild_id}` : "";
    console.log(`shard ${shardId} seq ${seq} ${topic.toString()}${guild}`);
    received++;
    if (opts.count && received >= opts.count) break;
  }
} catch (err) {
  if (!sub.closed) throw err;
} finally {
  if (!sub.closed) sub.close();
}
console.error(`${received} events`);
