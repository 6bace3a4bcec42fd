// @discordjs/ws as a receiver of the Titanium Cluster benchmarks (scripts/bench/run.py).
//
//   node receiver.mjs REST_URL GATEWAY_URL SHARDS TOKEN EXPECT
//
// The WebSocketManager fetches GET /gateway/bot from REST_URL through a
// minimal `rest` object (its only use of REST), so it connects to the URL the
// load source announces. Transport compression zlib-stream: zlib-sync when it
// is installed (discord.js's recommendation), else node:zlib. Dispatches are
// counted on the manager's `dispatch` event; `DONE <n> <monotonic ns>` is
// printed after EXPECT of them (READY excluded).
import { CompressionMethod, WebSocketManager, WebSocketShardEvents } from '@discordjs/ws';

const [rest, , shards, token, expect] = process.argv.slice(2);
const expected = Number(expect);

let compression = CompressionMethod.ZlibNative;
try {
  await import('zlib-sync');
  compression = CompressionMethod.ZlibSync;
} catch {
  // zlib-sync is optional
}

const restClient = {
  async get() {
    const response = await fetch(`${rest}/gateway/bot`, { headers: { Authorization: `Bot ${token}` } });
    if (!response.ok) throw new Error(`GET /gateway/bot: ${response.status}`);
    return response.json();
  },
};

const manager = new WebSocketManager({
  token,
  intents: 1 | 512 | 256 | 32768,
  rest: restClient,
  shardCount: Number(shards),
  compression,
});

let count = 0;
manager.on(WebSocketShardEvents.Dispatch, (payload) => {
  if (payload.t === 'MESSAGE_CREATE' || payload.t === 'PRESENCE_UPDATE') {
    count += 1;
    if (count === expected) {
      process.stdout.write(`DONE ${count} ${process.hrtime.bigint()}\n`);
    }
  }
});
manager.on(WebSocketShardEvents.Error, (error, shardId) => {
  process.stderr.write(`shard ${shardId}: ${error}\n`);
});
process.stderr.write(`compression ${compression === CompressionMethod.ZlibSync ? 'zlib-sync' : 'node:zlib'}\n`);
await manager.connect();
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, async () => {
    await manager.destroy();
    process.exit(0);
  });
}
