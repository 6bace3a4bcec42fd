"""A client session of the endpoint (cluster/endpoint/session.py): seq numbering, replay, bounds."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from cluster.endpoint.session import ClientSession, SendWindow


def test_seqs_are_the_sessions_own_from_one() -> None:
    session = ClientSession(3, 4, 513)
    session.snapshot([(b"READY", b"{}"), (b"GUILD_CREATE", b'{"id":"1"}')])
    assert [session.push(b"MESSAGE_CREATE", b"{}") for _ in range(3)] == [3, 4, 5]
    assert [seq for seq, _, _ in session.unsent()] == [1, 2, 3, 4, 5]
    session.mark_sent(5)
    assert session.unsent() == [] and session.backlog == 0


def test_resume_replays_exactly_what_came_after_the_clients_seq() -> None:
    session = ClientSession(0, 1, 1)
    for i in range(10):
        session.push(b"E", b"%d" % i)
    session.mark_sent(10)
    replay = session.replay_after(6)
    assert replay is not None and [seq for seq, _, _ in replay] == [7, 8, 9, 10]
    assert session.replay_after(10) == []
    assert session.replay_after(11) is None  # more than was ever written
    session.acknowledge(4)  # a heartbeat: 1-4 can never be asked for again
    assert session.buffered == 6
    assert session.replay_after(3) is None
    assert session.replay_after(4) is not None


def test_a_client_that_does_not_read_overflows_and_cannot_resume() -> None:
    session = ClientSession(0, 1, 1, max_events=5, max_bytes=1 << 20)
    session.push(b"E", b"x")
    session.mark_sent(1)
    for _ in range(5):
        session.push(b"E", b"x")
    assert not session.overflowed  # 6 buffered? no: at most 5, the written one fell out
    session.push(b"E", b"x")
    assert session.overflowed  # seq 2 was never written and is gone
    assert session.replay_after(1) is None


def test_the_snapshot_is_allowed_on_top_of_the_byte_bound_until_acknowledged() -> None:
    session = ClientSession(0, 1, 1, max_events=1000, max_bytes=2048)
    big = b"g" * 10_000
    session.snapshot([(b"READY", b"{}"), (b"GUILD_CREATE", big), (b"GUILD_CREATE", big)])
    session.push(b"E", b"x" * 100)
    assert session.buffered == 4 and not session.overflowed
    session.mark_sent(session.seq)
    session.acknowledge(3)
    assert session.buffered == 1
    for _ in range(40):
        session.push(b"E", b"x" * 100)
    assert session.buffered_bytes <= 2048


def test_a_saved_session_comes_back_detached_and_resumable() -> None:
    session = ClientSession(2, 4, 513)
    session.snapshot([(b"READY", b"{}")])
    for i in range(4):
        session.push(b"MESSAGE_CREATE", b"%d" % i)
    session.mark_sent(3)
    back = ClientSession.load(session.dump(), 100, 1 << 20)
    assert (back.session_id, back.shard_id, back.num_shards, back.intents) == (
        session.session_id,
        2,
        4,
        513,
    )
    assert back.replay_after(2) == session.replay_after(2)
    assert back.state.value == "detached"


@settings(max_examples=200)
@given(
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("push"), st.binary(min_size=0, max_size=300)),
            st.tuples(st.just("write"), st.integers(0, 20)),
            st.tuples(st.just("ack"), st.integers(-2, 200)),
        ),
        max_size=120,
    ),
    max_events=st.integers(1, 30),
    max_bytes=st.integers(1024, 4096),
)
def test_replay_is_exact_or_refused_and_memory_stays_bounded(
    ops: list[tuple[str, object]], max_events: int, max_bytes: int
) -> None:
    session = ClientSession(0, 1, 1, max_events=max_events, max_bytes=max_bytes)
    model: list[bytes] = []  # every d ever pushed; seq n is model[n - 1]
    acked = 0
    for op, arg in ops:
        if op == "push":
            assert isinstance(arg, bytes)
            model.append(arg)
            assert session.push(b"E", arg) == len(model)  # contiguous, from 1
        elif op == "write":
            assert isinstance(arg, int)
            session.mark_sent(min(session.seq, session.sent + arg))
        else:
            assert isinstance(arg, int)
            session.acknowledge(arg)
            if 0 <= arg <= session.sent:
                acked = max(acked, arg)
        assert session.buffered <= max_events
        assert session.buffered_bytes <= max_bytes + 100 * max_events + 300 + 100
        for seq in range(0, session.sent + 1):
            replay = session.replay_after(seq)
            if replay is None:
                continue
            # a replay is exactly what came after seq: nothing lost, nothing twice
            assert seq >= acked
            assert [s for s, _, _ in replay] == list(range(seq + 1, session.seq + 1))
            assert [d for _, _, d in replay] == model[seq:]


def test_send_window_is_discords_120_per_60_s() -> None:
    window = SendWindow(120, 60.0)
    assert all(window.hit(0.1 * i) for i in range(120))
    assert not window.hit(12.0)
    assert window.hit(60.05)  # the first one left the window
