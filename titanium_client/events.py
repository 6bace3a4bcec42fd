"""One dispatch event as a consumer sees it, and its acknowledgement.

An :class:`Event` carries the header fields (``name``, ``shard_id``, ``seq``,
``session_id``), the gateway payload as raw JSON bytes (``raw``), and parses
the payload only when asked (``payload``, ``d``: orjson, once, then cached).

Acknowledgement lives on the event, as in nats.py (``msg.ack()``): ``ack()``,
``nak(delay)``, ``term()`` and ``in_progress()``. The first settlement wins; a
second ``ack``/``nak``/``term`` raises :class:`AlreadyAcknowledgedError`. On a
Redis Streams subscription these are XACK, a scheduled redelivery, a move to the
dead-letter stream, and an idle-time reset. On a PUB tap nothing can be
redelivered: ``ack``, ``term`` and ``in_progress`` only record the state (so one
loop works on both transports) and ``nak`` raises :class:`NotSupportedError`.
"""

from __future__ import annotations

import enum
from typing import Any, Protocol

import orjson

from titanium_client.errors import AlreadyAcknowledgedError, DecodeError, NotSupportedError


class AckState(enum.Enum):
    """Where an event is in its acknowledgement."""

    PENDING = "pending"  #: delivered, not settled
    ACKED = "acked"  #: handled (XACK)
    NAKED = "naked"  #: to be delivered again after a delay
    TERMINATED = "terminated"  #: never to be delivered again (dead-lettered)


class Acknowledger(Protocol):
    """What settles events of one subscription (implemented by the Redis Streams subscription)."""

    async def ack(self, event: Event) -> None:
        """Acknowledge ``event`` as handled."""

    async def nak(self, event: Event, delay: float) -> None:
        """Have ``event`` delivered again after ``delay`` seconds."""

    async def term(self, event: Event, reason: str) -> None:
        """Never deliver ``event`` again; keep it in the dead-letter stream."""

    async def in_progress(self, event: Event) -> None:
        """Restart ``event``'s ack wait (the handler needs more time)."""


class Event:
    """One dispatch event: header fields, the raw payload, lazy parsing, acknowledgement.

    ``raw`` is the gateway payload (UTF-8 JSON with ``op``, ``s``, ``t``, ``d``)
    exactly as published on PUB, or as stored in a JSON sink entry; for a msgpack
    sink entry it is re-encoded from the decoded payload on first access.
    ``delivery_count`` is 1 on a PUB tap and Redis's delivery counter on a stream.
    """

    __slots__ = (
        "_acker",
        "_payload",
        "_raw",
        "_state",
        "delivery_count",
        "entry_data",
        "entry_id",
        "name",
        "seq",
        "session_id",
        "shard_id",
        "stream",
    )

    def __init__(
        self,
        name: str,
        shard_id: int,
        seq: int,
        session_id: str | None,
        *,
        raw: bytes | None = None,
        payload: dict[str, Any] | None = None,
        stream: str | None = None,
        entry_id: str | None = None,
        delivery_count: int = 1,
        entry_data: bytes | None = None,
        acker: Acknowledger | None = None,
    ) -> None:
        if raw is None and payload is None:
            raise ValueError("an Event needs its raw payload bytes or the decoded payload")
        self.name = name
        self.shard_id = shard_id
        self.seq = seq
        self.session_id = session_id
        #: The Redis stream the entry came from (``None`` on a PUB tap).
        self.stream = stream
        #: The Redis stream entry ID, e.g. ``"1718000000000-0"`` (``None`` on a PUB tap).
        self.entry_id = entry_id
        self.delivery_count = delivery_count
        #: The Redis entry's ``data`` field as stored (``None`` on a PUB tap).
        self.entry_data = entry_data
        self._raw = raw
        self._payload = payload
        self._acker = acker
        self._state = AckState.PENDING

    def __repr__(self) -> str:
        where = f" {self.stream}/{self.entry_id}" if self.entry_id is not None else ""
        return (
            f"<Event {self.name} shard={self.shard_id} seq={self.seq} "
            f"session={self.session_id}{where} {self._state.value}>"
        )

    # -- the payload ------------------------------------------------------------------------

    @property
    def raw(self) -> bytes:
        """The gateway payload as JSON bytes; DecodeError if a msgpack entry holds no JSON value."""
        if self._raw is None:
            try:
                self._raw = orjson.dumps(self._payload)
            except (orjson.JSONEncodeError, TypeError) as exc:
                raise DecodeError(f"the payload cannot be written as JSON: {exc}") from None
        return self._raw

    @property
    def payload(self) -> dict[str, Any]:
        """The whole gateway payload (``op``, ``s``, ``t``, ``d``), parsed on first access."""
        if self._payload is None:
            try:
                value = orjson.loads(self.raw)
            except orjson.JSONDecodeError as exc:
                raise DecodeError(f"the payload is not JSON: {exc}") from None
            if not isinstance(value, dict):
                raise DecodeError(f"the payload is not a JSON object but {type(value).__name__}")
            self._payload = value
        return self._payload

    @property
    def d(self) -> Any:
        """The event data (the payload's ``d``), parsed with orjson on first access, then cached."""
        return self.payload.get("d")

    # -- acknowledgement --------------------------------------------------------------------

    @property
    def state(self) -> AckState:
        """Where the event is in its acknowledgement."""
        return self._state

    @property
    def settled(self) -> bool:
        """True once acked, naked or terminated."""
        return self._state is not AckState.PENDING

    def _settle(self, state: AckState) -> None:
        if self._state is not AckState.PENDING:
            raise AlreadyAcknowledgedError(self._state)
        self._state = state

    def _unsettle(self) -> None:
        """Back to PENDING after a settlement whose I/O failed (the caller may retry)."""
        self._state = AckState.PENDING

    async def ack(self) -> None:
        """Acknowledge the event as handled; raises AlreadyAcknowledgedError the second time."""
        self._settle(AckState.ACKED)
        if self._acker is not None:
            try:
                await self._acker.ack(self)
            except BaseException:
                self._unsettle()
                raise

    async def nak(self, delay: float = 0.0) -> None:
        """Ask for the event again after ``delay`` seconds (at most the ack wait).

        On a PUB tap nothing can be redelivered: raises NotSupportedError.
        """
        if delay < 0:
            raise ValueError(f"delay must not be negative, got {delay}")
        if self._acker is None:
            raise NotSupportedError("a PUB tap cannot deliver an event again")
        self._settle(AckState.NAKED)
        try:
            await self._acker.nak(self, delay)
        except BaseException:
            self._unsettle()
            raise

    async def term(self, reason: str = "terminated by the handler") -> None:
        """Never deliver this event again; on Redis it is moved to the dead-letter stream."""
        self._settle(AckState.TERMINATED)
        if self._acker is not None:
            try:
                await self._acker.term(self, reason)
            except BaseException:
                self._unsettle()
                raise

    async def in_progress(self) -> None:
        """Tell the stream the handler is still working: restarts the ack wait."""
        if self._state is not AckState.PENDING:
            raise AlreadyAcknowledgedError(self._state)
        if self._acker is not None:
            await self._acker.in_progress(self)
