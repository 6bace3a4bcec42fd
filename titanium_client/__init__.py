"""Titanium Cluster's consumer library: what a bot imports to read events and send commands.

One API over both ways a cluster delivers events::

    from titanium_client import subscribe

    async with subscribe("tcp://127.0.0.1:5555", events=["MESSAGE_"]) as events:
        async for event in events:            # the PUB tap: fast, never redelivers
            print(event.shard_id, event.seq, event.name, event.d["content"])

    async with subscribe("redis://127.0.0.1:6379/0", group="mybot",
                         events=["MESSAGE_CREATE"]) as events:
        async for event in events:            # the Redis Streams sink: at least once
            await handle(event)               # acked when the body returns; an
                                              # exception leaves it pending

and commands back to the shards::

    from titanium_client import connect

    async with connect("tcp://127.0.0.1:5556") as cluster:   # or redis://..., shard_count=N
        await cluster.update_presence("idle", [{"name": "the shards", "type": 3}])
        await cluster.request_guild_members(guild_id, query="", limit=0)

Modules: :mod:`~titanium_client.events` (the event and its ack),
:mod:`~titanium_client.pub` and :mod:`~titanium_client.streams` (the two
transports), :mod:`~titanium_client.sequence` (gap and duplicate detection),
:mod:`~titanium_client.codec` (the ``@discordjs/brokers`` layout),
:mod:`~titanium_client.commands` (the control socket and ``gateway_send``),
:mod:`~titanium_client.errors` (the typed errors). It depends on
:mod:`protocol` (wire formats, payload builders), never on the cluster itself.
"""

from __future__ import annotations

from protocol.payloads import Status
from titanium_client.api import subscribe
from titanium_client.codec import COMMAND_STREAM, Encoding, StreamRecord, decode_data
from titanium_client.commands import Cluster, ControlCluster, StreamCluster, connect
from titanium_client.errors import (
    AlreadyAcknowledgedError,
    ClientError,
    CommandError,
    CommandRefusedError,
    CommandTimeoutError,
    DecodeError,
    InvalidCommandError,
    NotSupportedError,
    ReplyFormatError,
    SubscriptionFailedError,
    TransportError,
)
from titanium_client.events import AckState, Event
from titanium_client.pub import CurveClient, PubSubscription, read_key_file
from titanium_client.sequence import Gap, SequenceTracker, Verdict
from titanium_client.stats import Stats
from titanium_client.streams import StreamSubscription
from titanium_client.subscription import GapCallback, Subscription

__all__ = [
    "COMMAND_STREAM",
    "AckState",
    "AlreadyAcknowledgedError",
    "ClientError",
    "Cluster",
    "CommandError",
    "CommandRefusedError",
    "CommandTimeoutError",
    "ControlCluster",
    "CurveClient",
    "DecodeError",
    "Encoding",
    "Event",
    "Gap",
    "GapCallback",
    "InvalidCommandError",
    "NotSupportedError",
    "PubSubscription",
    "ReplyFormatError",
    "SequenceTracker",
    "Stats",
    "Status",
    "StreamCluster",
    "StreamRecord",
    "StreamSubscription",
    "Subscription",
    "SubscriptionFailedError",
    "TransportError",
    "Verdict",
    "connect",
    "decode_data",
    "read_key_file",
    "subscribe",
]
