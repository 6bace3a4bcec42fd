"""titanium_client on a real PUB socket publishing frames exactly as the cluster does.

The test's socket is an XPUB (the same frames on the wire as PUB) so the test can
wait for the library's subscriptions to arrive instead of sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import zmq
import zmq.asyncio

from protocol.pubframe import event_frames
from titanium_client import (
    AckState,
    AlreadyAcknowledgedError,
    DecodeError,
    Event,
    NotSupportedError,
    PubSubscription,
    Subscription,
    subscribe,
)

pytestmark = pytest.mark.timeout(20)


def payload(t: str, seq: int, d: Any = None) -> bytes:
    return orjson.dumps({"op": 0, "t": t, "s": seq, "d": d if d is not None else {"n": seq}})


class Publisher:
    """An XPUB bound on 127.0.0.1:0 that knows when subscriptions arrived."""

    def __init__(self, context: zmq.asyncio.Context) -> None:
        self.sock = context.socket(zmq.XPUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind("tcp://127.0.0.1:0")
        self.endpoint: str = self.sock.getsockopt(zmq.LAST_ENDPOINT).decode()

    async def wait_subscribed(self, prefixes: int = 1) -> None:
        async with asyncio.timeout(5):
            for _ in range(prefixes):
                frame = await self.sock.recv()
                assert frame[:1] == b"\x01", frame

    async def publish(
        self,
        topic: str,
        shard_id: int,
        seq: int,
        session_id: str | None = None,
        body: bytes | None = None,
    ) -> None:
        raw = payload(topic, seq) if body is None else body
        await self.sock.send_multipart(
            event_frames(topic.encode(), shard_id, seq, raw, session_id=session_id)
        )


@pytest.fixture
async def context() -> AsyncIterator[zmq.asyncio.Context]:
    ctx = zmq.asyncio.Context()
    try:
        yield ctx
    finally:
        ctx.destroy(linger=0)


@pytest.fixture
def publisher(context: zmq.asyncio.Context) -> Publisher:
    return Publisher(context)


async def take(sub: Subscription, n: int) -> list[Event]:
    out: list[Event] = []
    async with asyncio.timeout(5):
        async for event in sub:
            out.append(event)
            if len(out) == n:
                break
    return out


async def test_events_are_decoded_with_header_fields_and_raw_payload(publisher: Publisher) -> None:
    async with subscribe(publisher.endpoint) as sub:
        await publisher.wait_subscribed()
        await publisher.publish("READY", 2, 1, "sess-a")
        await publisher.publish("MESSAGE_CREATE", 2, 2, "sess-a")
        ready, message = await take(sub, 2)
    assert (ready.name, ready.shard_id, ready.seq, ready.session_id) == ("READY", 2, 1, "sess-a")
    assert message.name == "MESSAGE_CREATE"
    assert message.raw == payload("MESSAGE_CREATE", 2)
    assert message.d == {"n": 2}
    assert message.payload["t"] == "MESSAGE_CREATE"
    assert message.delivery_count == 1 and message.entry_id is None
    assert sub.stats.delivered == 2 and sub.stats.gaps == 0


async def test_an_older_header_without_session_id_gives_none(
    publisher: Publisher, context: zmq.asyncio.Context
) -> None:
    async with subscribe(publisher.endpoint, context=context) as sub:
        await publisher.wait_subscribed()
        await publisher.publish("GUILD_CREATE", 0, 7)
        (event,) = await take(sub, 1)
    assert event.session_id is None and event.seq == 7


async def test_d_is_parsed_only_when_asked(publisher: Publisher) -> None:
    async with subscribe(publisher.endpoint) as sub:
        await publisher.wait_subscribed()
        # not JSON at all: delivery works because nothing parses the payload
        await publisher.publish("MESSAGE_CREATE", 0, 1, "s", body=b"\xffnot json")
        await publisher.publish("MESSAGE_CREATE", 0, 2, "s", body=b'{"op":0,"d":{"x":[1,2]}}')
        broken, good = await take(sub, 2)
    assert broken.raw == b"\xffnot json"
    with pytest.raises(DecodeError):
        _ = broken.d
    assert good.d == {"x": [1, 2]}
    assert good.d is good.d  # parsed once, cached


async def test_prefix_filtering_and_no_gap_reports_when_filtered(publisher: Publisher) -> None:
    gaps: list[tuple[int, str | None, int, int]] = []
    async with subscribe(
        publisher.endpoint,
        events=["MESSAGE_", "GUILD_MEMBER"],
        on_gap=lambda *gap: gaps.append(gap),
    ) as sub:
        assert not sub.detect_gaps
        await publisher.wait_subscribed(prefixes=2)
        topics = ["PRESENCE_UPDATE", "MESSAGE_CREATE", "TYPING_START", "GUILD_MEMBER_ADD"]
        topics += ["MESSAGE_DELETE", "GUILD_CREATE"]
        for seq, topic in enumerate(topics, start=1):
            await publisher.publish(topic, 0, seq, "s")
        got = await take(sub, 3)
    assert [(e.name, e.seq) for e in got] == [
        ("MESSAGE_CREATE", 2),
        ("GUILD_MEMBER_ADD", 4),
        ("MESSAGE_DELETE", 5),
    ]
    assert gaps == [] and sub.stats.gaps == 0


async def test_a_skipped_seq_is_a_gap_counted_and_reported(publisher: Publisher) -> None:
    gaps: list[tuple[int, str | None, int, int]] = []
    async with subscribe(publisher.endpoint, on_gap=lambda *gap: gaps.append(gap)) as sub:
        assert sub.detect_gaps
        await publisher.wait_subscribed()
        for seq in (1, 2, 3, 6, 7):
            await publisher.publish("MESSAGE_CREATE", 4, seq, "s")
        got = await take(sub, 5)
    assert [e.seq for e in got] == [1, 2, 3, 6, 7]
    assert gaps == [(4, "s", 4, 6)]
    assert (sub.stats.gaps, sub.stats.missed) == (1, 2)


async def test_duplicates_are_dropped_and_counted(publisher: Publisher) -> None:
    async with subscribe(publisher.endpoint) as sub:
        await publisher.wait_subscribed()
        for seq in (1, 2, 3, 2, 3, 4):  # a RESUME replaying 2-3
            await publisher.publish("MESSAGE_CREATE", 0, seq, "s")
        got = await take(sub, 4)
    assert [e.seq for e in got] == [1, 2, 3, 4]
    assert (sub.stats.received, sub.stats.duplicates, sub.stats.duplicates_dropped) == (6, 2, 2)
    assert sub.stats.gaps == 0


async def test_duplicates_are_kept_when_asked(publisher: Publisher) -> None:
    async with subscribe(publisher.endpoint, drop_duplicates=False) as sub:
        await publisher.wait_subscribed()
        for seq in (1, 2, 2, 3):
            await publisher.publish("MESSAGE_CREATE", 0, seq, "s")
        got = await take(sub, 4)
    assert [e.seq for e in got] == [1, 2, 2, 3]
    assert (sub.stats.duplicates, sub.stats.duplicates_dropped) == (1, 0)


async def test_a_new_session_restarts_seq_without_a_gap_or_duplicates(publisher: Publisher) -> None:
    gaps: list[tuple[int, str | None, int, int]] = []
    async with subscribe(publisher.endpoint, on_gap=lambda *gap: gaps.append(gap)) as sub:
        await publisher.wait_subscribed()
        for seq in (1, 2, 3, 4):
            await publisher.publish("READY" if seq == 1 else "MESSAGE_CREATE", 1, seq, "old")
        for seq in (1, 2, 3):  # IDENTIFY again: a new session numbers from 1
            await publisher.publish("READY" if seq == 1 else "MESSAGE_CREATE", 1, seq, "new")
        got = await take(sub, 7)
    assert [(e.session_id, e.seq) for e in got] == [
        ("old", 1),
        ("old", 2),
        ("old", 3),
        ("old", 4),
        ("new", 1),
        ("new", 2),
        ("new", 3),
    ]
    assert gaps == [] and sub.stats.duplicates == 0 and sub.stats.sessions == 2


async def test_without_session_ids_a_ready_starts_a_new_session(publisher: Publisher) -> None:
    async with subscribe(publisher.endpoint) as sub:
        await publisher.wait_subscribed()
        for seq in (1, 2, 3, 1, 2, 2, 3):
            await publisher.publish("READY" if seq == 1 else "MESSAGE_CREATE", 1, seq)
        got = await take(sub, 6)
    assert [e.seq for e in got] == [1, 2, 3, 1, 2, 3]
    assert (sub.stats.duplicates, sub.stats.gaps, sub.stats.sessions) == (1, 0, 2)


async def test_several_endpoints_one_per_host(context: zmq.asyncio.Context) -> None:
    hosts = [Publisher(context), Publisher(context)]
    async with subscribe([h.endpoint for h in hosts]) as sub:
        assert isinstance(sub, PubSubscription)
        for host in hosts:
            await host.wait_subscribed()
        # host 0 runs shards 0-1, host 1 runs shards 2-3
        for seq in (1, 2, 3):
            for shard_id in range(4):
                await hosts[shard_id // 2].publish("MESSAGE_CREATE", shard_id, seq, f"s{shard_id}")
        got = await take(sub, 12)
    assert sorted((e.shard_id, e.seq) for e in got) == [(s, q) for s in range(4) for q in (1, 2, 3)]
    assert sub.stats.gaps == 0 and sub.stats.duplicates == 0


async def test_malformed_messages_are_skipped_and_counted(publisher: Publisher) -> None:
    async with subscribe(publisher.endpoint) as sub:
        await publisher.wait_subscribed()
        await publisher.sock.send_multipart([b"MESSAGE_CREATE", b"not json", b"{}"])
        await publisher.sock.send_multipart([b"MESSAGE_CREATE", b'{"shard_id":0}', b"{}"])
        await publisher.sock.send_multipart([b"ONLY_TWO_FRAMES", b"{}"])
        await publisher.publish("MESSAGE_CREATE", 0, 1, "s")
        (event,) = await take(sub, 1)
    assert event.seq == 1 and sub.stats.malformed == 3


async def test_stop_ends_a_waiting_loop_with_stop_async_iteration(publisher: Publisher) -> None:
    sub = subscribe(publisher.endpoint)
    seen: list[Event] = []
    got_one = asyncio.Event()

    async def consume() -> None:
        async with sub:
            async for event in sub:
                seen.append(event)
                got_one.set()

    task = asyncio.create_task(consume())
    await publisher.wait_subscribed()
    await publisher.publish("MESSAGE_CREATE", 0, 1, "s")
    async with asyncio.timeout(5):
        await got_one.wait()
    sub.stop()  # the loop is waiting for the next event now
    async with asyncio.timeout(5):
        await task
    assert len(seen) == 1
    with pytest.raises(StopAsyncIteration):
        await sub.__anext__()


async def test_async_for_without_async_with_starts_and_close_ends(publisher: Publisher) -> None:
    sub = subscribe(publisher.endpoint, events=["MESSAGE_"])
    try:
        consumer = asyncio.create_task(take(sub, 1))
        await publisher.wait_subscribed()
        await publisher.publish("MESSAGE_CREATE", 0, 1)
        (event,) = await consumer
        assert event.seq == 1
    finally:
        await sub.close()
    with pytest.raises(StopAsyncIteration):
        await sub.__anext__()


async def test_tap_events_ack_records_state_and_nak_is_not_supported(publisher: Publisher) -> None:
    async with subscribe(publisher.endpoint) as sub:
        await publisher.wait_subscribed()
        await publisher.publish("MESSAGE_CREATE", 0, 1)
        (event,) = await take(sub, 1)
    with pytest.raises(NotSupportedError):
        await event.nak()
    await event.in_progress()
    await event.ack()
    assert event.state is AckState.ACKED
    with pytest.raises(AlreadyAcknowledgedError):
        await event.ack()
    with pytest.raises(AlreadyAcknowledgedError):
        await event.term()


async def test_the_socket_queue_is_bounded_by_hwm(publisher: Publisher) -> None:
    """A subscriber that does not read holds at most about ``hwm`` events; the rest is dropped."""
    total = 3000
    body = b'{"op":0,"d":"' + b"x" * 2000 + b'"}'  # large enough to fill TCP buffers quickly
    async with subscribe(publisher.endpoint, hwm=10) as sub:
        await publisher.wait_subscribed()
        # PUB's send HWM is the other half of the bound (the cluster's relay sets its own)
        publisher.sock.setsockopt(zmq.SNDHWM, 10)
        for seq in range(1, total + 1):
            await publisher.publish("MESSAGE_CREATE", 0, seq, "s", body=body)
        await asyncio.sleep(0.2)
        got: list[int] = []
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.5):
                async for event in sub:
                    got.append(event.seq)
    assert got[0] == 1
    assert len(got) < total / 2  # kernel TCP buffers hold some; ZeroMQ dropped the rest
    assert sub.stats.gaps >= 1
    assert sub.stats.missed == got[-1] - len(got)  # every skipped seq is counted


def test_bad_arguments_are_refused_early() -> None:
    with pytest.raises(ValueError, match=r"ZeroMQ endpoint|Redis"):
        subscribe("http://127.0.0.1:5555")
    with pytest.raises(TypeError, match="group"):
        subscribe("tcp://127.0.0.1:5555", group="mybot")
    with pytest.raises(ValueError, match="ASCII"):
        subscribe("tcp://127.0.0.1:5555", events=["MESSAGE_\u00e9"])
