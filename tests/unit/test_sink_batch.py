"""The sink's script call as bytes: SinkBatch writes the ``SINK_APPEND`` request itself (RESP).

Read back with hiredis's RESP reader and the layout of cluster/state/redis_scripts.py,
every event must come out with its shard, session, seq, stream and data, in order; a
call names at most MAX_STREAMS streams (one byte per event says which) and a run that
would name more continues in the next call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import hiredis
from hypothesis import given, settings
from hypothesis import strategies as st

from cluster.state.redis_state import RedisState
from cluster.state.redis_streams import MAX_STREAMS, SinkBatch

PREFIX = "tc:{4711}:"


def batch() -> SinkBatch:
    # a client that never connects: the batch only uses its key names
    return SinkBatch(RedisState("redis://127.0.0.1:1/0", "4711", holder="h"))


@dataclass(frozen=True)
class Event:
    shard_id: int
    session_id: str
    resume_url: str
    seq: int
    stream: str
    data: bytes


def read_request(request: bytes) -> list[bytes]:
    reader = hiredis.Reader()
    reader.feed(request)
    args = reader.gets()
    assert isinstance(args, list)
    assert reader.gets() is False  # nothing after the one command
    return args


def decode(request: bytes) -> tuple[list[bytes], list[Event], dict[str, Any]]:
    """The keys and the events of one request, read as SINK_APPEND reads its arguments."""
    args = read_request(request)
    assert args[0] == b"EVALSHA"
    assert args[1] == b"f" * 40
    numkeys = int(args[2])
    keys, argv = args[3 : 3 + numkeys], args[3 + numkeys :]
    head = {"lease": argv[0], "token": int(argv[1]), "ttl": int(argv[2])}
    sessions, runs = int(argv[3]), int(argv[4])
    streams = keys[1 + sessions :]
    assert len(streams) <= MAX_STREAMS
    assert len(set(keys[1 : 1 + sessions])) == sessions
    events = []
    a = 5
    for _ in range(runs):
        k = int(argv[a])
        assert 1 <= k <= sessions
        shard_id = int(keys[k].decode().removeprefix(PREFIX + "sess:"))
        session_id, url, first, kinds = (
            argv[a + 1].decode(),
            argv[a + 2].decode(),
            argv[a + 3],
            argv[a + 4],
        )
        a += 5
        for i, j in enumerate(kinds):
            events.append(
                Event(
                    shard_id, session_id, url, int(first) + i, streams[j - 1].decode(), argv[a + i]
                )
            )
        a += len(kinds)
    assert a == len(argv)
    return keys, events, head


def test_one_call_names_each_shard_and_stream_once_in_keys() -> None:
    b = batch()
    assert (
        b.add_run(3, "s3", "wss://r/", 10, [("MESSAGE_CREATE", b"a"), ("TYPING_START", b"b")]) == 2
    )
    assert b.add_run(1, "s1", "", 7, [(memoryview(b"MESSAGE_CREATE"), b"c")]) == 1
    assert b.add_run(3, "s3", "wss://r/", 12, [(b"TYPING_START", b"d")]) == 1
    assert (b.runs, b.events) == (3, 4)
    assert b.streams == ["MESSAGE_CREATE", "TYPING_START"]
    keys, events, head = decode(b.request("f" * 40, PREFIX + "lease:0-3", "h|9", 9, 600_000))
    assert keys == [
        b"tc:{4711}:lease:0-3",
        b"tc:{4711}:sess:3",
        b"tc:{4711}:sess:1",
        b"MESSAGE_CREATE",
        b"TYPING_START",
    ]
    assert head == {"lease": b"h|9", "token": 9, "ttl": 600_000}
    assert events == [
        Event(3, "s3", "wss://r/", 10, "MESSAGE_CREATE", b"a"),
        Event(3, "s3", "wss://r/", 11, "TYPING_START", b"b"),
        Event(1, "s1", "", 7, "MESSAGE_CREATE", b"c"),
        Event(3, "s3", "wss://r/", 12, "TYPING_START", b"d"),
    ]


def test_a_run_that_would_name_too_many_streams_stops_there() -> None:
    b = batch()
    run = [(f"EVENT_{i}", b"%d" % i) for i in range(MAX_STREAMS + 10)]
    assert b.add_run(0, "s", "", 1, run) == MAX_STREAMS
    # a known stream still fits, a new one does not
    assert b.add_run(1, "s", "", 1, [("EVENT_0", b"x"), ("EVENT_999", b"y")]) == 1
    _, events, _ = decode(b.request("f" * 40, "lease", "h|1", 1, 1))
    assert [e.seq for e in events] == [*range(1, MAX_STREAMS + 1), 1]
    assert [e.data for e in events][-2:] == [b"%d" % (MAX_STREAMS - 1), b"x"]


runs_strategy = st.lists(
    st.tuples(
        st.integers(0, 7),
        st.sampled_from(["a", "b", "sess-é"]),
        st.sampled_from(["", "wss://resume/"]),
        st.integers(1, 2**40),
        st.lists(
            st.tuples(st.integers(0, 299).map(lambda i: f"T{i}"), st.binary(max_size=40)),
            min_size=1,
            max_size=120,
        ),
    ),
    max_size=12,
)


@settings(max_examples=150)
@given(runs=runs_strategy, per_call=st.integers(1, 300))
def test_every_event_reaches_the_calls_once_in_order(
    runs: list[tuple[int, str, str, int, list[tuple[str, bytes]]]], per_call: int
) -> None:
    # what StreamSink._take does: a full call (events or streams) is closed, the rest of
    # the run goes on in the next one
    calls = [batch()]
    for shard_id, session_id, url, first, events in runs:
        at = 0
        while at < len(events):
            took = calls[-1].add_run(shard_id, session_id, url, first + at, events[at:])
            at += took
            if at < len(events) or calls[-1].events >= per_call:
                assert took or calls[-1].runs  # a fresh call always takes something
                calls.append(batch())
    expected = [
        Event(shard_id, session_id, url, first + i, stream, data)
        for shard_id, session_id, url, first, events in runs
        for i, (stream, data) in enumerate(events)
    ]
    got = [
        event
        for call in calls
        if call.runs
        for event in decode(call.request("f" * 40, "lease", "h|1", 1, 1))[1]
    ]
    assert got == expected
