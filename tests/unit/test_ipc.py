"""protocol.ipc: round trips and malformed input (hypothesis)."""

from __future__ import annotations

import contextlib
import dataclasses
import struct
from collections.abc import Sequence

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.errors import WireFormatError
from protocol.ipc import (
    HEADER_SIZE,
    IPC_VERSION,
    MAX_RUN_EVENTS,
    MAX_RUNS,
    RUN_HEAD,
    Command,
    DispatchDrop,
    EventBatch,
    EventRuns,
    EventRunsEncoder,
    EventRunsReader,
    EventSlices,
    Hello,
    MessageKind,
    ShardReport,
    Stop,
    WorkerStatus,
    decode,
    encode_command,
    encode_hello,
    encode_shard_report,
    encode_stop,
    encode_worker_status,
    pub_events,
    read_header,
    session_epoch,
)
from protocol.jsonframe import load_object
from protocol.pubframe import event_frames

u32 = st.integers(0, 2**32 - 1)
opt_text = st.none() | st.text(max_size=30)

Runs = Sequence[tuple[int, int, int, Sequence[tuple[bytes, bytes]]]]


def encode_runs(runs: Runs) -> list[bytes]:
    """One EVENT_RUNS message of ``(shard, epoch, first_seq, [(topic, payload), ...])``
    runs, each a run of its own, built by the one encoder (the worker's)."""
    encoder = EventRunsEncoder()
    for shard, epoch, first, events in runs:
        for i, (topic, payload) in enumerate(events):
            assert encoder.add(shard, epoch, first + i, topic, payload)
        encoder.close_runs()
    head = encoder.next_head()
    assert head is not None
    body = encoder.next_body()
    assert encoder.next_head() is None, "more than one message"
    return [head, body]


@given(u32, u32, st.integers(0, 2**64 - 1), st.lists(st.binary(max_size=40), max_size=4))
def test_the_withdrawn_events_kind_is_refused_not_misread(
    shard: int, epoch: int, seq: int, rest: list[bytes]
) -> None:
    # kind 1 was EVENTS (binary frame + three PUB frames per event); it stays reserved
    head = struct.pack("<BBHIIQ", IPC_VERSION, 1, 1, shard, epoch, seq)
    assert 1 not in set(MessageKind)
    with pytest.raises(WireFormatError, match="unknown ipc message kind 1"):
        decode([head, *rest])


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
        "t_invalid",
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
    good = encode_runs([(1, 2, 3, [(b"T", b"{}")])])
    assert len(good[0]) == HEADER_SIZE
    with pytest.raises(WireFormatError, match="version"):
        decode([bytes((IPC_VERSION - 1,)) + good[0][1:], *good[1:]])
    with pytest.raises(WireFormatError, match="exactly one frame"):
        decode([*good, good[1]])
    with pytest.raises(WireFormatError, match="unknown"):
        decode([good[0][:1] + b"\x63" + good[0][2:]])
    with pytest.raises(WireFormatError):
        decode([])
    report = encode_shard_report(ShardReport(1, "ready", 5, "s", "u"))
    with pytest.raises(WireFormatError, match="SHARD_STATE body is not JSON"):
        decode([report[0], b"{not json"])
    with pytest.raises(WireFormatError, match="SHARD_STATE body must be a JSON object, not list"):
        decode([report[0], b"[1]"])
    with pytest.raises(WireFormatError, match="fields"):
        decode([report[0], b'{"shard_id":1,"seq":2,"bogus":1}'])
    with pytest.raises(WireFormatError, match="disagree"):
        decode([report[0], encode_shard_report(ShardReport(9, "ready", 5, "s", "u"))[1]])


run_events = st.lists(
    st.tuples(st.binary(min_size=1, max_size=30), st.binary(max_size=300)), min_size=1, max_size=5
)
event_runs = st.lists(
    st.tuples(u32, u32, st.integers(0, 2**63), run_events), min_size=1, max_size=6
)


@given(event_runs)
def test_event_runs_round_trip(runs: list[tuple[int, int, int, list[tuple[bytes, bytes]]]]) -> None:
    frames = encode_runs(runs)
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
            EventBatch(shard, epoch, first, events)  # slices of the body equal the bytes
            for shard, epoch, first, events in runs
        ]
    )


@given(event_runs, st.data())
def test_a_cut_or_padded_event_runs_body_is_refused_and_a_garbled_one_never_crashes(
    runs: list[tuple[int, int, int, list[tuple[bytes, bytes]]]], data: st.DataObject
) -> None:
    head, body = encode_runs(runs)
    cut = data.draw(st.integers(0, len(body) - 1))
    for damaged in (body[:cut], body + data.draw(st.binary(min_size=1, max_size=8))):
        with pytest.raises(WireFormatError):
            decode([head, damaged])
    garbled = body[:cut] + data.draw(st.binary(max_size=12))
    with contextlib.suppress(WireFormatError):
        decode([head, garbled])


def test_event_runs_specific_malformations() -> None:
    head, body = encode_runs([(1, 2, 3, [(b"T", b"{}")])])
    with pytest.raises(WireFormatError, match="at least one run"):
        decode([head])
    with pytest.raises(WireFormatError, match="disagree"):
        decode([struct.pack("<BBHIIQ", IPC_VERSION, MessageKind.EVENT_RUNS, 1, 0, 0, 2), body])
    no_events = RUN_HEAD.pack(1, 2, 3, 0, 0)
    with pytest.raises(WireFormatError, match="no events"):
        decode([struct.pack("<BBHIIQ", IPC_VERSION, MessageKind.EVENT_RUNS, 1, 0, 0, 0), no_events])
    with pytest.raises(WireFormatError, match="ends inside a head"):
        decode([head, body[: RUN_HEAD.size - 2]])
    with pytest.raises(WireFormatError, match="bytes after"):
        decode([head, body + b"x"])


def test_the_encoder_cuts_runs_and_splits_messages() -> None:
    encoder = EventRunsEncoder()
    assert encoder.next_head() is None
    for seq in range(1, MAX_RUN_EVENTS + 2):  # one more than a run holds
        assert encoder.add(0, 7, seq, b"T", b"%d" % seq)
    assert encoder.add(0, 7, MAX_RUN_EVENTS + 3, b"T", b"gap")  # a gap in the seqs
    assert encoder.add(0, 8, MAX_RUN_EVENTS + 4, b"T", b"session")  # another session
    assert encoder.add(1, 7, 1, b"U", b"other shard")
    head = encoder.next_head()
    assert head is not None
    message = decode([head, encoder.next_body()])
    assert isinstance(message, EventRuns)
    assert [(b.shard_id, b.epoch, b.first_seq, len(b.events)) for b in message.batches] == [
        (0, 7, 1, MAX_RUN_EVENTS),
        (0, 7, MAX_RUN_EVENTS + 1, 1),
        (0, 7, MAX_RUN_EVENTS + 3, 1),
        (0, 8, MAX_RUN_EVENTS + 4, 1),
        (1, 7, 1, 1),
    ]
    # more runs than one message holds: the rest go in the next message, in order
    for shard in range(MAX_RUNS + 3):
        encoder.add(shard, 1, 1, b"T", b"{}")
    firsts: list[list[int]] = []
    while (head := encoder.next_head()) is not None:
        message = decode([head, encoder.next_body()])
        assert isinstance(message, EventRuns)
        firsts.append([b.shard_id for b in message.batches])
    assert firsts == [list(range(MAX_RUNS)), [MAX_RUNS, MAX_RUNS + 1, MAX_RUNS + 2]]
    encoder.refusing = True
    assert not encoder.add(0, 1, 2, b"T", b"{}")
    assert encoder.next_head() is None


def zmtp_messages(data: bytes) -> list[list[bytes]]:
    """The messages of a stream of ZMTP frames (a plain reading of the spec, no shortcut)."""
    messages: list[list[bytes]] = []
    frames: list[bytes] = []
    at = 0
    while at < len(data):
        flags = data[at]
        if flags & 0x02:
            (size,) = struct.unpack_from(">Q", data, at + 1)
            at += 9
        else:
            size = data[at + 1]
            at += 2
        frames.append(data[at : at + size])
        at += size
        if not flags & 0x01:
            messages.append(frames)
            frames = []
    assert not frames and at == len(data)
    return messages


def test_the_reader_dedupes_by_admit_and_hands_on_runs_and_lists() -> None:
    encoder = EventRunsEncoder()
    encoder.name_session(3, "sess-3")
    for i, event in enumerate([(b"A", b"a10"), (b"B", b"b11"), (b"C", b"c12")]):
        encoder.add(3, session_epoch("sess-3"), 10 + i, *event)
    encoder.add(4, 1, 1, b"D", b"d1")  # an epoch no session was named for
    head = encoder.next_head()
    assert head is not None
    body = encoder.next_body()
    published: list[tuple[int, list[list[bytes]], list[tuple[bytes, bytes, bytes]]]] = []
    after: list[tuple[int, int, int, int, int, list[EventSlices] | None, list[EventSlices] | None]]
    after = []

    def admit(shard_id: int, epoch: int, first_seq: int, count: int) -> int:
        return 2 if shard_id == 3 else 0  # 10 and 11 of shard 3 seen already

    def publish(frames: memoryview, heads: memoryview, count: int) -> None:
        one_by_one = [tuple(map(bytes, event)) for event in pub_events(frames, heads)]
        assert len(one_by_one) == count
        published.append((count, zmtp_messages(bytes(frames)), one_by_one))  # type: ignore[arg-type]

    def ran(
        shard_id: int,
        epoch: int,
        first_seq: int,
        count: int,
        skip: int,
        kept: list[EventSlices] | None,
        skipped: list[EventSlices] | None,
    ) -> None:
        after.append((shard_id, epoch, first_seq, count, skip, kept, skipped))

    c12 = [b"C", b'{"shard_id":3,"seq":12,"session_id":"sess-3"}', b"c12"]
    d1 = [b"D", b'{"shard_id":4,"seq":1}', b"d1"]
    reader = EventRunsReader(admit, publish, ran)
    assert reader.read(2, 4, body) == (2, 2, None)
    # each run's rest as the PUB messages a subscriber gets, and readable one by one
    assert published == [(1, [c12], [tuple(c12)]), (1, [d1], [tuple(d1)])]
    assert after == []  # nothing collected: no list wanted
    published.clear()
    reader.keep = True
    reader.replaying = {3}
    assert reader.read(2, 4, body) == (2, 2, None)
    epoch = session_epoch("sess-3")
    assert after == [
        (3, epoch, 10, 3, 2, [(b"C", b"c12")], [(b"A", b"a10"), (b"B", b"b11")]),
        (4, 1, 1, 1, 0, [(b"D", b"d1")], None),
    ]
    published.clear()
    # a fault: what came before it was handed out, and the fault is said
    got = reader.read(2, 4, body[:-1])
    assert got[:2] == (1, 2) and got[2] is not None and "past the body" in got[2]
    assert [p[1] for p in published] == [[c12]]
    assert reader.read(2, 4, body + b"!")[2] == "EVENT_RUNS body has 1 bytes after its runs"
    # frames that disagree with their event heads: refused where they are read one by one
    first_event_head = 2 * RUN_HEAD.size  # after both run heads
    lying = bytearray(body)
    struct.pack_into("<H", lying, first_event_head, 2)  # topic "A" said to be 2 bytes
    assert (
        reader.read(2, 4, bytes(lying))[2]
        == "an EVENT_RUNS run's frames disagree with its event heads"
    )


long_text = st.text(
    st.characters(min_codepoint=32, max_codepoint=0x10FFFF, exclude_categories=("Cs",)),
    max_size=300,
)


@given(
    st.integers(0, 2**32 - 1),
    st.none() | long_text,
    st.integers(1, 2**63),
    st.lists(
        st.tuples(st.binary(min_size=1, max_size=300), st.binary(max_size=700)),
        min_size=1,
        max_size=4,
    ),
)
def test_the_encoder_writes_each_event_as_the_pub_message_a_subscriber_gets(
    shard: int, session_id: str | None, first: int, events: list[tuple[bytes, bytes]]
) -> None:
    encoder = EventRunsEncoder()
    encoder.name_session(shard, session_id)
    for i, (topic, payload) in enumerate(events):
        encoder.add(shard, session_epoch(session_id), first + i, topic, payload)
    head = encoder.next_head()
    assert head is not None
    body = encoder.next_body()
    got: list[memoryview] = []
    reader = EventRunsReader(lambda *_: 0, lambda frames, heads, n: got.append(frames), _no_ran)
    assert reader.read(1, len(events), body) == (len(events), 0, None)
    assert zmtp_messages(bytes(got[0])) == [
        # an empty session id is no session (epoch 0), as the relay has always read it
        event_frames(topic, shard, first + i, payload, session_id or None)
        for i, (topic, payload) in enumerate(events)
    ]


def _no_ran(*_: object) -> None:
    raise AssertionError("nothing was collected")


def test_a_json_frame_must_hold_an_object() -> None:
    assert load_object(b'{"a":1}', "X") == {"a": 1}
    with pytest.raises(WireFormatError, match=r"^X is not JSON"):
        load_object(b"{", "X")
    with pytest.raises(WireFormatError, match=r"^X must be a JSON object, not int"):
        load_object(b"3", "X")


def _text(size: int) -> st.SearchStrategy[str]:
    return st.text(
        st.characters(exclude_categories=("Cs",)), max_size=size
    )  # JSON: no lone surrogates


@given(
    st.builds(
        ShardReport,
        shard_id=st.integers(0, 2**31 - 1),
        phase=st.sampled_from(["ready", "resuming", "identifying"]),
        seq=st.integers(0, 2**40),
        session_id=st.none() | _text(20),
        resume_url=st.none() | _text(40),
        latency_ms=st.none() | st.floats(0, 1e6),
        events=st.integers(0, 2**40),
        events_by_type=st.dictionaries(_text(20), st.integers(0, 2**40), max_size=5),
        dropped=st.dictionaries(
            st.sampled_from([d.value for d in DispatchDrop]), st.integers(0, 9)
        ),
        fatal_code=st.none() | st.integers(4000, 4999),
    )
)
def test_a_report_is_the_json_of_its_fields_as_dataclasses_asdict_wrote_it(
    report: ShardReport,
) -> None:
    body = encode_shard_report(report)[1]
    assert body == orjson.dumps(dataclasses.asdict(report))
    decoded = decode(encode_shard_report(report))
    assert decoded == report


def test_a_run_whose_frames_disagree_with_its_heads_is_not_admitted() -> None:
    _, body = encode_runs([(3, 9, 10, [(b"A", b"a10"), (b"B", b"b11")])])
    lying = bytearray(body)
    struct.pack_into("<H", lying, RUN_HEAD.size, 2)  # topic "A" said to be 2 bytes
    admitted: list[int] = []

    def admit(shard_id: int, epoch: int, first_seq: int, count: int) -> int:
        admitted.append(shard_id)
        return 0

    reader = EventRunsReader(admit, lambda *_: None, lambda *_: None)
    reader.keep = True  # the sink or a tap reads the events one by one
    assert reader.read(1, 2, bytes(lying))[2] == (
        "an EVENT_RUNS run's frames disagree with its event heads"
    )
    assert admitted == []  # not taken as published: a resend is not deduped away


def test_a_session_id_too_long_for_a_header_is_left_out_of_it() -> None:
    encoder = EventRunsEncoder()
    huge = "\u00e9" * 20_000  # 120,000 bytes once JSON-escaped
    encoder.name_session(0, huge)
    encoder.name_session(1, "s1")
    for shard, session in ((0, huge), (1, "s1")):
        assert encoder.add(shard, session_epoch(session), 1, b"T", b"{}")
    head = encoder.next_head()
    assert head is not None
    got: list[bytes] = []
    reader = EventRunsReader(
        lambda *_: 0, lambda frames, heads, n: got.append(bytes(frames)), _no_ran
    )
    assert reader.read(2, 2, encoder.next_body()) == (2, 0, None)
    assert [message[1] for frames in got for message in zmtp_messages(frames)] == [
        b'{"shard_id":0,"seq":1}',
        b'{"shard_id":1,"seq":1,"session_id":"s1"}',
    ]


def _published_by(
    body: bytes, runs: int, events: int, skips: dict[int, int]
) -> tuple[list[tuple[int, list[list[bytes]], list[tuple[bytes, bytes, bytes]]]], tuple]:
    """What a reader hands on of ``body`` when shard ``s``'s run has ``skips[s]`` events
    seen already: per publish, (count, its ZMTP messages, its events read one by one)."""
    calls: list[tuple[int, list[list[bytes]], list[tuple[bytes, bytes, bytes]]]] = []

    def publish(frames: memoryview, heads: memoryview, count: int) -> None:
        one_by_one = [(bytes(t), bytes(h), bytes(p)) for t, h, p in pub_events(frames, heads)]
        calls.append((count, zmtp_messages(bytes(frames)), one_by_one))

    reader = EventRunsReader(lambda shard, *_: skips.get(shard, 0), publish, _no_ran)
    return calls, reader.read(runs, events, body)


def test_runs_admitted_whole_go_out_as_one_slice_and_a_deduped_run_alone() -> None:
    runs = [(s, 1, 1, [(b"T%d" % s, b"p%d-%d" % (s, i)) for i in range(2)]) for s in range(4)]
    _, body = encode_runs(runs)
    every = [
        [b"T%d" % s, b'{"shard_id":%d,"seq":%d}' % (s, 1 + i), b"p%d-%d" % (s, i)]
        for s in range(4)
        for i in range(2)
    ]
    # no duplicates: the four runs are one publish
    calls, result = _published_by(body, 4, 8, {})
    assert result == (8, 0, None)
    assert [(count, messages) for count, messages, _ in calls] == [(8, every)]
    assert [list(event) for event in calls[0][2]] == every
    # shard 1's run seen whole, shard 2's first event: before, between and after them
    calls, result = _published_by(body, 4, 8, {1: 2, 2: 1})
    assert result == (5, 3, None)
    assert [(count, messages) for count, messages, _ in calls] == [
        (2, every[0:2]),
        (1, every[5:6]),
        (2, every[6:8]),
    ]


@given(
    st.lists(st.tuples(st.integers(1, 4), st.integers(0, 4)), min_size=1, max_size=8),
)
def test_the_reader_hands_on_exactly_the_events_not_seen_in_order(
    shape: list[tuple[int, int]],
) -> None:
    runs = [
        (shard, 7, 1, [(b"T", b"%d-%d" % (shard, i)) for i in range(size)])
        for shard, (size, _) in enumerate(shape)
    ]
    skips = {shard: min(skip, size) for shard, (size, skip) in enumerate(shape)}
    _, body = encode_runs(runs)
    events = sum(size for size, _ in shape)
    calls, result = _published_by(body, len(shape), events, skips)
    expected = [
        [b"T", b'{"shard_id":%d,"seq":%d}' % (shard, 1 + i), b"%d-%d" % (shard, i)]
        for shard, (size, _) in enumerate(shape)
        for i in range(skips[shard], size)
    ]
    assert result == (len(expected), sum(skips.values()), None)
    assert [m for _, messages, _ in calls for m in messages] == expected
    assert [list(e) for _, _, one_by_one in calls for e in one_by_one] == expected
    assert all(count == len(messages) for count, messages, _ in calls)
    # one publish per stretch of runs admitted whole, and one per run cut by its dedupe
    publishes = 0
    stretch = False
    for shard, (size, _) in enumerate(shape):
        whole = skips[shard] == 0
        publishes += (whole and not stretch) or 0 < skips[shard] < size
        stretch = whole
    assert len(calls) == publishes
