"""Commands from the Redis stream ``gateway_send`` to the shards this host runs.

A bot writes ``{"shardId": n, "payload": {"op": 3, "d": {...}}}`` (msgpack, as
``@discordjs/brokers`` publishes, or JSON) to the stream ``gateway_send``
(:mod:`protocol.brokerformat`). Every owned range reads the whole stream
through its own consumer group, ``titanium:<first>-<last>``: a host takes the
commands for its shards and acknowledges the others unsent (another range's
group has them too). A host that takes a range over continues the group where
the last owner stopped, and first claims what that owner read and never
acknowledged.

Each entry passes the checks of the control socket (:mod:`cluster.control`):
the opcode allow-list and the shape of ``d`` (:func:`protocol.payloads.validate_command`),
the 4096-byte gateway limit, a known shard, and the shard's own send limit
(the command waits in the shard's queue). An entry that fails is counted by
reason, logged (the first of each reason, then at most one line per reason
every :data:`LOG_EVERY_S`) and acknowledged: bad input never blocks the stream.
Entries older than :data:`MAX_AGE_S` (a cluster that was down) are
acknowledged unsent.

:func:`parse_stream_command` is the pure decision; :class:`CommandReader` only
reads, sends and acknowledges.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import Any, Final

from cluster.control import SEND_TIMEOUT_S, ControlErrorKind, ControlRequestError, local_shard
from cluster.state.redis_state import RedisStateError
from cluster.state.redis_streams import Command, StreamStore
from protocol.brokerformat import COMMAND_STREAM, decode_object
from protocol.errors import InvalidCommandError, PayloadTooLargeError, WireFormatError
from protocol.payloads import encode_client_payload, validate_command

log = logging.getLogger(__name__)

#: An entry larger than this is refused without being decoded.
MAX_ENTRY_BYTES: Final = 64 * 1024
#: Entries older than this (by their id, Redis's clock at the append) are not sent.
MAX_AGE_S: Final = 60.0
#: At most one log line per refusal reason this often (each refusal is still counted).
LOG_EVERY_S: Final = 10.0
READ_COUNT: Final = 100
#: XREADGROUP's BLOCK; below the Redis client's socket timeout (1 s).
READ_BLOCK_MS: Final = 500
_RETRY_S: Final = 1.0

SendCommand = Callable[[int, bytes], Awaitable[None]]


class CommandOutcome(enum.Enum):
    """What became of one ``gateway_send`` entry (the label of the counter)."""

    SENT = "sent"
    OTHER_HOST = "other_host"  #: a shard of another range: that range's group sends it
    STALE = "stale"
    SEND_FAILED = "send_failed"  #: the shard is not running now
    TOO_LARGE = "too_large"
    BAD_DATA = "bad_data"  #: neither msgpack nor JSON, or not a map
    BAD_TARGET = "bad_target"  #: no integer shardId
    UNKNOWN_SHARD = "unknown_shard"
    BAD_COMMAND = "bad_command"  #: an opcode not allowed, or a malformed d
    PAYLOAD_TOO_LARGE = "payload_too_large"


_REFUSALS: Final = {
    ControlErrorKind.UNKNOWN_SHARD: CommandOutcome.UNKNOWN_SHARD,
    ControlErrorKind.NOT_LOCAL: CommandOutcome.OTHER_HOST,
    ControlErrorKind.BAD_COMMAND: CommandOutcome.BAD_COMMAND,
    ControlErrorKind.PAYLOAD_TOO_LARGE: CommandOutcome.PAYLOAD_TOO_LARGE,
    ControlErrorKind.BAD_TARGET: CommandOutcome.BAD_TARGET,
}


class CommandRefusedError(ValueError):
    def __init__(self, outcome: CommandOutcome, message: str) -> None:
        super().__init__(message)
        self.outcome = outcome


@dataclass(frozen=True, slots=True)
class StreamCommand:
    shard_id: int
    #: ``{"op", "d"}`` encoded for the gateway
    payload: bytes


def parse_stream_command(
    data: bytes | None, total_shards: int, local_shard_ids: Collection[int]
) -> StreamCommand:
    """Decide what one entry's ``data`` asks; raise :class:`CommandRefusedError` if nothing."""
    if data is None:
        raise CommandRefusedError(CommandOutcome.BAD_DATA, "the entry has no data field")
    if len(data) > MAX_ENTRY_BYTES:
        raise CommandRefusedError(
            CommandOutcome.TOO_LARGE,
            f"the entry is {len(data)} bytes, over the limit of {MAX_ENTRY_BYTES}",
        )
    try:
        obj, _ = decode_object(data)
    except WireFormatError as exc:
        raise CommandRefusedError(CommandOutcome.BAD_DATA, str(exc)) from None
    shard_id = obj.get("shardId")
    if isinstance(shard_id, bool) or not isinstance(shard_id, int):
        raise CommandRefusedError(
            CommandOutcome.BAD_TARGET,
            f"shardId must be an integer, not {type(shard_id).__name__}",
        )
    payload = obj.get("payload")
    if not isinstance(payload, dict) or "op" not in payload or "d" not in payload:
        raise CommandRefusedError(
            CommandOutcome.BAD_COMMAND, 'payload must be a map with "op" and "d"'
        )
    try:
        shard_id = local_shard(shard_id, total_shards, local_shard_ids)
        op = validate_command(payload["op"], payload["d"])
        encoded = encode_client_payload({"op": op.value, "d": payload["d"]})
    except ControlRequestError as exc:
        raise CommandRefusedError(_REFUSALS[exc.kind], str(exc)) from None
    except PayloadTooLargeError as exc:
        raise CommandRefusedError(CommandOutcome.PAYLOAD_TOO_LARGE, str(exc)) from None
    except InvalidCommandError as exc:
        raise CommandRefusedError(CommandOutcome.BAD_COMMAND, str(exc)) from None
    return StreamCommand(shard_id, encoded)


def entry_age_s(entry_id: bytes, now_s: float) -> float:
    """How old an entry is by its id (milliseconds of Redis time before the dash)."""
    try:
        millis = int(entry_id.split(b"-", 1)[0])
    except ValueError:
        return 0.0
    return now_s - millis / 1000.0


@dataclass(slots=True)
class CommandStats:
    outcomes: dict[str, int] = field(default_factory=dict)
    #: claimed entries the stream had trimmed before anyone sent them
    lost: int = 0
    errors: int = 0
    last_error: str | None = None

    def count(self, outcome: CommandOutcome) -> None:
        self.outcomes[outcome.value] = self.outcomes.get(outcome.value, 0) + 1


class CommandReader:
    """One range's consumer group on ``gateway_send``: read, send, acknowledge."""

    def __init__(
        self,
        store: StreamStore,
        shard_range: tuple[int, int],
        consumer: str,
        total_shards: int,
        local_shard_ids: Collection[int],
        send: SendCommand,
    ) -> None:
        self._store = store
        self.group = f"titanium:{shard_range[0]}-{shard_range[1]}"
        self._consumer = consumer
        self._total = total_shards
        self._local = frozenset(local_shard_ids)
        self._send = send
        self.stats = CommandStats()
        self._logged_at: dict[CommandOutcome, float] = {}

    async def run(self) -> None:
        """Read until cancelled; a Redis failure is retried every second."""
        joined = False
        while True:
            try:
                if not joined:
                    await self._store.ensure_group(COMMAND_STREAM, self.group)
                    claimed, lost = await self._store.claim_commands(
                        COMMAND_STREAM, self.group, self._consumer, READ_COUNT
                    )
                    self._lost(lost)
                    await self._handle(claimed)
                    joined = True
                commands = await self._store.read_commands(
                    COMMAND_STREAM, self.group, self._consumer, READ_COUNT, READ_BLOCK_MS
                )
                await self._handle(commands)
            except RedisStateError as exc:
                joined = False  # a Redis restarted empty has no group: create it again
                self.stats.errors += 1
                if self.stats.last_error is None:
                    log.warning("gateway_send: reading failed (retrying every second): %s", exc)
                self.stats.last_error = str(exc)
                await asyncio.sleep(_RETRY_S)
                continue
            self.stats.last_error = None

    def _lost(self, lost: int) -> None:
        if lost:
            self.stats.lost += lost
            log.warning(
                "gateway_send: %d commands read by the previous owner were trimmed "
                "before anyone sent them",
                lost,
            )

    async def _handle(self, commands: list[Command]) -> None:
        if not commands:
            return
        now = time.time()
        for command in commands:
            await self._one(command, now)
        await self._store.ack(COMMAND_STREAM, self.group, [c.entry_id for c in commands])

    async def _one(self, command: Command, now: float) -> None:
        try:
            parsed = parse_stream_command(command.data, self._total, self._local)
        except CommandRefusedError as exc:
            self._refused(exc.outcome, command.entry_id, str(exc))
            return
        if entry_age_s(command.entry_id, now) > MAX_AGE_S:
            self._refused(
                CommandOutcome.STALE,
                command.entry_id,
                f"older than {MAX_AGE_S:.0f} s; not sent",
            )
            return
        try:
            await asyncio.wait_for(self._send(parsed.shard_id, parsed.payload), SEND_TIMEOUT_S)
        except Exception as exc:  # a shard not running, a stuck worker: one entry's loss
            self._refused(CommandOutcome.SEND_FAILED, command.entry_id, str(exc))
            return
        self.stats.count(CommandOutcome.SENT)

    def _refused(self, outcome: CommandOutcome, entry_id: bytes, why: str) -> None:
        self.stats.count(outcome)
        if outcome is CommandOutcome.OTHER_HOST:
            return  # normal with several hosts: another range's group sends it
        now = time.monotonic()
        last = self._logged_at.get(outcome)
        if last is None or now - last >= LOG_EVERY_S:
            self._logged_at[outcome] = now
            log.warning(
                "gateway_send entry %s refused (%s): %s",
                entry_id.decode("ascii", "replace"),
                outcome.value,
                why,
            )

    def status_json(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "outcomes": dict(self.stats.outcomes),
            "lost": self.stats.lost,
            "errors": self.stats.errors,
            "last_error": self.stats.last_error,
        }
