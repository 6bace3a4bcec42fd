"""protocol.ipc: round trips and malformed input (hypothesis)."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.errors import WireFormatError
from protocol.ipc import (
    HEADER_SIZE,
    IPC_VERSION,
    Command,
    DispatchDrop,
    EventBatch,
    EventRuns,
    Hello,
    MessageKind,
    ShardReport,
    Stop,
    WorkerStatus,
    decode,
    encode_command,
    encode_event_runs,
    encode_hello,
    encode_shard_report,
    encode_stop,
    encode_worker_status,
    event_message,
    read_header,
    session_epoch,
)
from protocol.pubframe import encode_header as encode_pub_header

u32 = st.integers(0, 2**32 - 1)
opt_text = st.none() | st.text(max_size=30)


@given(u32, u32, st.integers(0, 2**64 - 1), st.binary(max_size=30), st.binary(), st.binary())
def test_event_round_trip(
    shard: int, epoch: int, seq: int, topic: bytes, hdr: bytes, payload: bytes
) -> None:
    frames = event_message(shard, epoch, seq, topic, hdr, payload)
    assert len(frames[0]) == HEADER_SIZE
    h = read_header(frames[0])
    assert (h.kind, h.count, h.shard_id, h.epoch, h.seq) == (
        MessageKind.EVENTS,
        1,
        shard,
        epoch,
        seq,
    )
    assert decode(frames) == EventBatch(shard, epoch, seq, [(topic, hdr, payload)])
    assert frames[1:] == [topic, hdr, payload]  # untouched


reports = st.builds(
    ShardReport,
    shard_id=u32,
    phase=st.sampled_from(["ready", "resuming", "fatal"]),
    seq=st.integers(0, 2**53),
    session_id=opt_text,
    resume_url=opt_text,
    latency_ms=st.none() | st.floats(0, 1e6),
    identifies=st.integers(0, 1000),
    resumes=st.integers(0, 1000),
    reconnects=st.integers(0, 1000),
    events=st.integers(0, 2**40),
    session_started=st.booleans(),
    fatal_code=st.none() | st.integers(4000, 4999),
    reason=opt_text,
    dropped=st.dictionaries(
        st.sampled_from([r.value for r in DispatchDrop]), st.integers(0, 2**40)
    ),
)


@given(reports)
def test_shard_report_round_trip(report: ShardReport) -> None:
    frames = encode_shard_report(report)
    h = read_header(frames[0])
    assert h.epoch == session_epoch(report.session_id) and h.shard_id == report.shard_id
    assert decode(frames) == report


@given(
    st.integers(0, 1000),
    st.integers(1, 2**22),
    st.sampled_from(["started", "drained", "fatal"]),
    st.none() | st.integers(4000, 4014),
    opt_text,
    st.lists(st.integers(0, 1000)),
)
def test_worker_messages_round_trip(
    wid: int, pid: int, status: str, code: int | None, detail: str | None, shards: list[int]
) -> None:
    ws = WorkerStatus(wid, pid, status, code, detail, shards)
    assert decode(encode_worker_status(ws)) == ws
    assert decode(encode_hello(Hello(wid, pid))) == Hello(wid, pid)


@given(u32, st.binary(max_size=5000))
def test_command_round_trip(shard: int, payload: bytes) -> None:
    assert decode(encode_command(shard, payload)) == Command(shard, payload)
    assert decode(encode_stop()) == Stop()


def test_a_report_without_drop_counts_reads_as_none_dropped_and_bad_counts_are_refused() -> None:
    # ``dropped`` was added with a default (no version bump): an older worker's report reads
    report = encode_shard_report(ShardReport(1, "ready", 5, "s", "u", dropped={"seq_invalid": 2}))
    decoded = decode(report)
    assert isinstance(decoded, ShardReport) and decoded.dropped == {"seq_invalid": 2}
    older = b'{"shard_id":1,"phase":"ready","seq":5,"session_id":"s","resume_url":"u"}'
    decoded = decode([report[0], older])
    assert isinstance(decoded, ShardReport) and decoded.dropped == {}
    for bad in (b'"x"', b'{"a":-1}', b'{"a":1.5}', b'{"a":true}', b"[1]"):
        body = older[:-1] + b',"dropped":' + bad + b"}"
        with pytest.raises(WireFormatError, match="dropped"):
            decode([report[0], body])
    assert [r.value for r in DispatchDrop] == [
        "seq_not_increasing",
        "seq_invalid",
        "seq_missing",
        "t_missing",
    ]


def test_epoch_is_stable_per_session() -> None:
    assert session_epoch("abc") == session_epoch("abc") != session_epoch("abd")
    assert session_epoch(None) == 0 == session_epoch("")


@given(st.lists(st.binary(max_size=64), max_size=8))
def test_garbage_is_refused_with_a_wire_format_error(frames: list[bytes]) -> None:
    with contextlib.suppress(WireFormatError):
        decode(frames)


@given(st.integers(0, 255), st.lists(st.binary(max_size=40), max_size=7), st.integers(0, 5))
def test_any_header_with_garbage_frames_decodes_or_raises_wire_format_error(
    kind: int, rest: list[bytes], count: int
) -> None:
    head = struct.pack("<BBHIIQ", IPC_VERSION, kind, count, 1, 2, 3)
    with contextlib.suppress(WireFormatError):
        decode([head, *rest])


def test_specific_malformations() -> None:
    good = event_message(1, 2, 3, b"T", b"{}", b"{}")
    with pytest.raises(WireFormatError, match="version"):
        decode([b"\x02" + good[0][1:], *good[1:]])
    with pytest.raises(WireFormatError, match="frames"):
        decode(good[:3])
    with pytest.raises(WireFormatError, match="unknown"):
        decode([good[0][:1] + b"\x63" + good[0][2:]])
    with pytest.raises(WireFormatError):
        decode([])
    report = encode_shard_report(ShardReport(1, "ready", 5, "s", "u"))
    with pytest.raises(WireFormatError, match="JSON"):
        decode([report[0], b"{not json"])
    with pytest.raises(WireFormatError, match="fields"):
        decode([report[0], b'{"shard_id":1,"seq":2,"bogus":1}'])
    with pytest.raises(WireFormatError, match="disagree"):
        decode([report[0], encode_shard_report(ShardReport(9, "ready", 5, "s", "u"))[1]])


def test_a_batch_of_consecutive_events_decodes_with_consecutive_seqs() -> None:
    # Version 1 workers send one event per message; readers already accept batches.
    from protocol.ipc import pack_header

    events = [(b"T%d" % i, b'{"shard_id":3,"seq":%d}' % (10 + i), b"{}") for i in range(3)]
    frames = [pack_header(MessageKind.EVENTS, 3, 77, 10, count=3)]
    for e in events:
        frames.extend(e)
    batch = decode(frames)
    assert batch == EventBatch(3, 77, 10, events)


run_events = st.lists(
    st.tuples(st.binary(min_size=1, max_size=30), st.binary(max_size=300)), min_size=1, max_size=5
)
event_runs = st.lists(
    st.tuples(u32, u32, st.integers(0, 2**63), run_events), min_size=1, max_size=6
)


@given(event_runs)
def test_event_runs_round_trip(runs: list[tuple[int, int, int, list[tuple[bytes, bytes]]]]) -> None:
    frames = encode_event_runs(runs)
    assert len(frames) == 2
    h = read_header(frames[0])
    assert (h.kind, h.count, h.seq) == (
        MessageKind.EVENT_RUNS,
        len(runs),
        sum(len(events) for *_, events in runs),
    )
    message = decode(frames)
    assert message == EventRuns(
        [
            EventBatch(
                shard,
                epoch,
                first,
                [(t, encode_pub_header(shard, first + i), p) for i, (t, p) in enumerate(events)],
            )
            for shard, epoch, first, events in runs
        ]
    )


@given(event_runs, st.data())
def test_a_cut_or_padded_event_runs_body_is_refused_and_a_garbled_one_never_crashes(
    runs: list[tuple[int, int, int, list[tuple[bytes, bytes]]]], data: st.DataObject
) -> None:
    head, body = encode_event_runs(runs)
    cut = data.draw(st.integers(0, len(body) - 1))
    for damaged in (body[:cut], body + data.draw(st.binary(min_size=1, max_size=8))):
        with pytest.raises(WireFormatError):
            decode([head, damaged])
    garbled = body[:cut] + data.draw(st.binary(max_size=12))
    with contextlib.suppress(WireFormatError):
        decode([head, garbled])


def test_event_runs_specific_malformations() -> None:
    head, body = encode_event_runs([(1, 2, 3, [(b"T", b"{}")])])
    with pytest.raises(WireFormatError, match="at least one run"):
        decode([head])
    with pytest.raises(WireFormatError, match="disagree"):
        decode([struct.pack("<BBHIIQ", IPC_VERSION, MessageKind.EVENT_RUNS, 1, 0, 0, 2), body])
    no_events = struct.pack("<IIQI", 1, 2, 3, 0)
    with pytest.raises(WireFormatError, match="no events"):
        decode([struct.pack("<BBHIIQ", IPC_VERSION, MessageKind.EVENT_RUNS, 1, 0, 0, 0), no_events])
    with pytest.raises(WireFormatError):
        encode_event_runs([(1, 2, 3, [(b"", b"{}")])])  # a topic is never empty
    with pytest.raises(WireFormatError):
        encode_event_runs([])
