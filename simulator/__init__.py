"""A local stand-in for Discord: REST, the gateway, its rules, and fault injection.

In-process use (tests, benchmarks, ``cluster up --simulate``)::

    from simulator import Simulator, SimulatorConfig

    async with Simulator(SimulatorConfig(shards=4, guilds=20, event_rate=50)) as sim:
        sim.rest_url      # "http://127.0.0.1:PORT/api/v10"  (GET /gateway/bot ...)
        sim.gateway_url   # "ws://127.0.0.1:PORT/"           (append ?v=10&encoding=json[&compress=...])
        sim.resume_url    # "ws://127.0.0.1:PORT/resume/"    (what READY hands out; differs from the main URL)
        sim.admin_url     # "http://127.0.0.1:PORT/_sim"     (the same admin API over HTTP)

        sim.emit(0, 10)                         # 10 events now in shard 0's guilds (each live shard set)
        sim.emit(0, 10, num_shards=32)          # ... only in the guilds of shard 0 of 32
        sim.emit_guild(guild_id, 3)             # 3 events in one guild, to every session covering it
        sim.set_event_rate(100.0)               # per shard per second
        sim.set_privileged_intents("GUILD_MEMBERS,MESSAGE_CONTENT")  # Developer Portal toggles
        sim.set_session_start_limit(total=5000) # Discord raising the daily session starts
        sim.set_recommended_shards(32)          # GET /gateway/bot answers 32 from now on
        sim.inject(0, "reconnect")              # op 7; see simulator.faults for all kinds
        sim.inject("all", "close", code=4000)   # also: drop, zombie, invalid_session(resumable=),
                                                # malformed_json, truncated_frame, unknown_opcode,
                                                # heartbeat_request
        sim.inject("all", "drop", num_shards=16)  # only the connections of the 16-shard set
        await sim.record.wait_for(lambda r: len(r.accepted_resumes(0)) == 1, timeout=5)
        sim.record.identifies_for(0)            # IdentifyRecord(shard_id, num_shards, intents, at, outcome...)
        sim.record.sent_events(0)               # DispatchRecord(shard_id, session_id, seq, t, event_id,
                                                #   conn_id, at, num_shards)
        sim.record.deliveries()                 # {event_id: [DispatchRecord per session it reached]}
        sim.record.violations_of(ViolationKind.IDENTIFY_RATE_LIMIT)

Every generated dispatch carries ``d["_sim_event_id"]`` (unique per
simulator): a consumer proves exactly-once delivery by comparing the ids it
saw with ``[r.event_id for r in sim.record.sent_events()]``. Events are
produced into a session even while it has no connection, so only a correct
RESUME (replay after ``seq``) delivers them.

Resharding: sessions of different shard counts may live side by side, as
Discord allows while a bot moves to a new shard set. Each event happens in a
guild and reaches every live session whose ``(shard_id, num_shards)`` covers
it (``(guild_id >> 22) % num_shards == shard_id``) with the same
``_sim_event_id``, so "each event reached a subscriber exactly once" holds
across the overlap by id; the record keeps one DispatchRecord per session
(with its ``num_shards``). READY and GUILD_CREATE list each session's guilds
under its own count. 4011 refuses a shard over ``max_guilds_per_shard``
guilds and a count below ``ceil(guilds / max_guilds_per_shard)``.

Dispatches follow the identify's intents: PRESENCE_UPDATE needs
GUILD_PRESENCES, GUILD_MEMBER_UPDATE needs GUILD_MEMBERS (both privileged:
none is enabled by default, as for a new application; enable them with
``privileged_intents``, ``cluster simulate --privileged-intents`` or the admin
API, else IDENTIFY gets 4014), and MESSAGE_CREATE carries its ~1 KB
``content`` only with MESSAGE_CONTENT. For long benchmarks set ``record_dispatches=False`` (the record keeps one
tuple per dispatch otherwise). Cost on this machine: about 35 us of CPU per
event with zlib-stream (half of it compression), so 16 shards x 1000 events/s
take a little over half a core.

Rules enforced (shared/PROTOCOL.md): token (4004), shard (4010), sharding
required (4011), API version (4012), intents (4013/4014), second Identify
(4005), payload before Identify (4003), payload > 4096 bytes or bad JSON
(4002), unknown opcode (4001), 120 payloads / 60 s (4008), identify buckets
(op 9), session-start budget (op 9 + every session terminated), heartbeat
timeout (close 4000, session kept), resume seq (4007) and expiry (op 9).
Module map: config (SimulatorConfig), server (Simulator), gateway (shared
gateway state, load, the websocket handler), connection (one websocket and
the rules), routing (the shard formula across shard sets, pure), sessions
(sessions, limiters), events (payloads), faults (kinds, injection, chaos),
record, rest, admin, firehose (a benchmark load source).
"""

from simulator.config import SimulatorConfig
from simulator.events import bot_id_from_token, discord_shaped_token
from simulator.faults import FaultKind
from simulator.record import (
    ClosedBy,
    ConnectionRecord,
    DispatchRecord,
    IdentifyOutcome,
    IdentifyRecord,
    Record,
    ResumeOutcome,
    ResumeRecord,
    UrlKind,
    Violation,
    ViolationKind,
)
from simulator.server import Simulator

__all__ = [
    "ClosedBy",
    "ConnectionRecord",
    "DispatchRecord",
    "FaultKind",
    "IdentifyOutcome",
    "IdentifyRecord",
    "Record",
    "ResumeOutcome",
    "ResumeRecord",
    "Simulator",
    "SimulatorConfig",
    "UrlKind",
    "Violation",
    "ViolationKind",
    "bot_id_from_token",
    "discord_shaped_token",
]
