// An unchanged @discordjs/ws WebSocketManager on the cluster's gateway endpoint (cluster up --gateway).
//
//   npm install   # in this folder, once
//   GATEWAY=http://127.0.0.1:7878 DISCORD_TOKEN=... node gateway_ws.mjs
//
// The manager asks its `rest` for GET /gateway/bot only (the gateway URL, the shard
// count and the identify concurrency): ask the endpoint instead of Discord. Everything
// else (IDENTIFY, RESUME, heartbeats, zlib-stream) is the library's own. Prints one JSON
// line per dispatch: {"shard", "t", "s", "guild_id", "event_id"}.
import { CompressionMethod, WebSocketManager, WebSocketShardEvents } from '@discordjs/ws';

const gateway = process.env.GATEWAY ?? 'http://127.0.0.1:7878';
const token = process.env.DISCORD_TOKEN;
const GUILDS = 1 << 0;
const GUILD_MESSAGES = 1 << 9;

const manager = new WebSocketManager({
  token,
  intents: GUILDS | GUILD_MESSAGES,
  rest: {
    async get() {
      const response = await fetch(`${gateway}/api/v10/gateway/bot`, {
        headers: { Authorization: `Bot ${token}` },
      });
      if (!response.ok) throw new Error(`GET /gateway/bot at the endpoint: ${response.status}`);
      return response.json();
    },
  },
  compression: CompressionMethod.ZlibNative,
});

manager.on(WebSocketShardEvents.Dispatch, (payload, shardId) => {
  const d = payload.d ?? {};
  const guildId = d.guild_id ?? (payload.t === 'GUILD_CREATE' ? d.id : null);
  const line = { shard: shardId, t: payload.t, s: payload.s, guild_id: guildId ?? null };
  if (d._sim_event_id !== undefined) line.event_id = d._sim_event_id;
  if (payload.t === 'GUILD_CREATE') {
    line.channels = d.channels.length;
    line.roles = d.roles.length;
  }
  process.stdout.write(`${JSON.stringify(line)}\n`);
});
manager.on(WebSocketShardEvents.Error, (error, shardId) => {
  process.stderr.write(`shard ${shardId}: ${error}\n`);
});
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, async () => {
    await manager.destroy();
    process.exit(0);
  });
}
await manager.connect();
