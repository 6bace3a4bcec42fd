"""titanium_client.events: lazy parsing and the acknowledgement state machine."""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson
import pytest

from titanium_client import (
    AckState,
    AlreadyAcknowledgedError,
    DecodeError,
    Event,
    NotSupportedError,
    TransportError,
)


@dataclass
class RecordingAcker:
    """An Acknowledger that records calls and can be made to fail like an unreachable Redis."""

    calls: list[tuple[str, float | str | None]] = field(default_factory=list)
    fail: bool = False

    async def _do(self, what: str, arg: float | str | None) -> None:
        if self.fail:
            raise TransportError("Redis is down")
        self.calls.append((what, arg))

    async def ack(self, event: Event) -> None:
        await self._do("ack", None)

    async def nak(self, event: Event, delay: float) -> None:
        await self._do("nak", delay)

    async def term(self, event: Event, reason: str) -> None:
        await self._do("term", reason)

    async def in_progress(self, event: Event) -> None:
        await self._do("in_progress", None)


def stream_event(acker: RecordingAcker) -> Event:
    return Event(
        "MESSAGE_CREATE", 1, 5, None, payload={"op": 0, "s": 5, "d": {"a": 1}}, acker=acker
    )


def test_payload_only_events_write_raw_json_on_demand() -> None:
    event = Event("X", 0, 1, "s", payload={"op": 0, "d": {"k": [1, 2]}})
    assert event.d == {"k": [1, 2]}
    assert orjson.loads(event.raw) == {"op": 0, "d": {"k": [1, 2]}}
    assert event.raw is event.raw


def test_payloads_that_are_no_json_object_raise_decode_error_on_access() -> None:
    assert Event("X", 0, 1, None, raw=b"[1]").raw == b"[1]"
    with pytest.raises(DecodeError, match="not a JSON object"):
        _ = Event("X", 0, 1, None, raw=b"[1]").d
    with pytest.raises(DecodeError, match="JSON"):
        _ = Event("X", 0, 1, None, payload={"d": b"\x00bytes"}).raw
    with pytest.raises(ValueError):
        Event("X", 0, 1, None)


async def test_the_first_settlement_wins() -> None:
    acker = RecordingAcker()
    event = stream_event(acker)
    await event.in_progress()
    await event.nak(1.5)
    assert event.state is AckState.NAKED and event.settled
    for settle in (event.ack(), event.nak(), event.term(), event.in_progress()):
        with pytest.raises(AlreadyAcknowledgedError):
            await settle
    assert acker.calls == [("in_progress", None), ("nak", 1.5)]


async def test_a_failed_settlement_leaves_the_event_pending_for_a_retry() -> None:
    acker = RecordingAcker(fail=True)
    event = stream_event(acker)
    with pytest.raises(TransportError):
        await event.ack()
    assert event.state is AckState.PENDING
    acker.fail = False
    await event.term("poison")
    assert event.state is AckState.TERMINATED and acker.calls == [("term", "poison")]


async def test_tap_events_have_nothing_to_redeliver() -> None:
    event = Event("X", 0, 1, None, raw=b"{}")
    with pytest.raises(NotSupportedError):
        await event.nak()
    await event.term()
    assert event.state is AckState.TERMINATED
    with pytest.raises(ValueError):
        await Event("X", 0, 1, None, raw=b"{}").nak(-1)
