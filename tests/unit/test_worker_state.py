"""The shard state machine, table by table: every close code and every event kind."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.gateway import CloseCode
from protocol.session import Session, ShardPhase
from worker.state import (
    RESUME_URL_ATTEMPTS,
    ConnectMode,
    Decision,
    GatewayUrl,
    Reconnect,
    ShardState,
    Wait,
    first_connect,
    initial_state,
    on_bad_input,
    on_connect_failed,
    on_connected,
    on_connecting,
    on_hello,
    on_invalid_session,
    on_missed_ack,
    on_permit,
    on_ready,
    on_reconnect_request,
    on_resumed,
    on_server_close,
    on_stop,
    on_transport_error,
)

SESSION = Session("abc", 42, "ws://resume.example/")
READY = ShardState(ShardPhase.READY, SESSION)
IDENTIFYING = ShardState(ShardPhase.IDENTIFYING, None)

RESUME_NOW = Reconnect(ConnectMode.RESUME, GatewayUrl.RESUME, Wait.NONE)
RESUME_LATER = Reconnect(ConnectMode.RESUME, GatewayUrl.RESUME, Wait.BACKOFF)
IDENTIFY_LATER = Reconnect(ConnectMode.IDENTIFY, GatewayUrl.MAIN, Wait.BACKOFF)
NEW_SESSION = Reconnect(ConnectMode.IDENTIFY, GatewayUrl.MAIN, Wait.NEW_SESSION)

# Discord's documented table (shared/PROTOCOL.md section 2), spelled out: code -> plan
# for a shard that holds a session. None means fatal.
CLOSE_TABLE: list[tuple[int | None, Reconnect | None]] = [
    (None, RESUME_LATER),  # TCP dropped, no close frame
    (1000, RESUME_LATER),  # a server 1000 is an improper close, reconnectable
    (1001, RESUME_LATER),
    (1006, RESUME_LATER),
    (1011, RESUME_LATER),
    (4000, RESUME_LATER),
    (4001, RESUME_LATER),
    (4002, RESUME_LATER),
    (4003, NEW_SESSION),
    (4004, None),
    (4005, RESUME_LATER),
    (4006, RESUME_LATER),  # not a gateway code: unknown codes keep the session
    (4007, NEW_SESSION),
    (4008, RESUME_LATER),
    (4009, NEW_SESSION),
    (4010, None),
    (4011, None),
    (4012, None),
    (4013, None),
    (4014, None),
    (4999, RESUME_LATER),
]


@pytest.mark.parametrize(("code", "plan"), CLOSE_TABLE)
def test_server_close_with_a_session(code: int | None, plan: Reconnect | None) -> None:
    d = on_server_close(READY, code)
    assert d.reconnect == plan
    assert d.close_code is None  # the server closed; there is nothing left to close
    if plan is None:
        assert d.phase is ShardPhase.FATAL
        assert d.fatal_code == code
        assert d.session is None
    elif plan.mode is ConnectMode.RESUME:
        assert d.phase is ShardPhase.DISCONNECTED
        assert d.session == SESSION
    else:
        assert d.session is None


@pytest.mark.parametrize(("code", "plan"), CLOSE_TABLE)
def test_server_close_without_a_session_never_resumes(
    code: int | None, plan: Reconnect | None
) -> None:
    d = on_server_close(IDENTIFYING, code)
    if plan is None:
        assert d.reconnect is None and d.phase is ShardPhase.FATAL
    else:
        assert d.reconnect is not None
        assert d.reconnect.mode is ConnectMode.IDENTIFY
        assert d.reconnect.url is GatewayUrl.MAIN
        assert d.session is None


def test_every_gateway_close_code_is_in_the_table() -> None:
    covered = {code for code, _ in CLOSE_TABLE}
    assert {int(c) for c in CloseCode} <= covered


# Events the shard sees while connected: (decision function, expected plan with a session,
# expected plan without one, close code the shard sends)
EVENT_TABLE = [
    (
        "op 7 reconnect",
        on_reconnect_request,
        RESUME_NOW,
        Reconnect(ConnectMode.IDENTIFY, GatewayUrl.MAIN, Wait.NONE),
    ),
    ("op 9 d=true", lambda s: on_invalid_session(s, True), RESUME_LATER, IDENTIFY_LATER),
    ("op 9 d=false", lambda s: on_invalid_session(s, False), NEW_SESSION, NEW_SESSION),
    (
        "missed ack",
        on_missed_ack,
        RESUME_NOW,
        Reconnect(ConnectMode.IDENTIFY, GatewayUrl.MAIN, Wait.NONE),
    ),
    ("bad input", on_bad_input, RESUME_LATER, IDENTIFY_LATER),
]


@pytest.mark.parametrize(("name", "decide", "with_session", "without"), EVENT_TABLE)
def test_events_close_with_4000_and_reconnect(
    name: str, decide: object, with_session: Reconnect, without: Reconnect
) -> None:
    assert callable(decide)
    d: Decision = decide(READY)
    assert d.close_code == 4000, name  # never 1000/1001: they end the session
    assert d.reconnect == with_session, name
    assert d.phase is ShardPhase.DISCONNECTED
    if with_session.mode is ConnectMode.RESUME:
        assert d.session == SESSION
    else:
        assert d.session is None
    d2: Decision = decide(IDENTIFYING)
    assert d2.reconnect == without, name
    assert d2.close_code == 4000


def test_transport_error_resumes_like_a_dropped_connection() -> None:
    d = on_transport_error(READY)
    assert d.reconnect == RESUME_LATER and d.session == SESSION and d.close_code is None


def test_failed_connects_to_the_resume_url_fall_back_to_the_main_url() -> None:
    state = ShardState(ShardPhase.CONNECTING, SESSION)
    url = GatewayUrl.RESUME
    urls = []
    for _ in range(RESUME_URL_ATTEMPTS + 1):
        d = on_connect_failed(state, url)
        assert d.reconnect is not None
        assert d.reconnect.mode is ConnectMode.RESUME  # a resume never costs a session start
        assert d.reconnect.wait is Wait.BACKOFF
        url = d.reconnect.url
        urls.append(url)
        state = d.state
    assert urls[: RESUME_URL_ATTEMPTS - 1] == [GatewayUrl.RESUME] * (RESUME_URL_ATTEMPTS - 1)
    assert urls[RESUME_URL_ATTEMPTS - 1 :] == [GatewayUrl.MAIN, GatewayUrl.MAIN]
    # a successful connection forgets the failures
    assert on_connected(state, ConnectMode.RESUME).connect_failures == 0


def test_failed_connect_without_session_identifies_on_main_url() -> None:
    d = on_connect_failed(ShardState(ShardPhase.CONNECTING), GatewayUrl.MAIN)
    assert d.reconnect == IDENTIFY_LATER


def test_first_connect_resumes_a_saved_session() -> None:
    assert first_connect(initial_state(SESSION)) == RESUME_NOW
    assert first_connect(initial_state(None)) == Reconnect(
        ConnectMode.IDENTIFY, GatewayUrl.MAIN, Wait.NONE
    )


def test_the_happy_paths() -> None:
    s = on_connected(initial_state(None), ConnectMode.IDENTIFY)
    assert s.phase is ShardPhase.AWAITING_HELLO
    s = on_hello(s, ConnectMode.IDENTIFY)
    assert s.phase is ShardPhase.AWAITING_PERMIT
    s = on_permit(s)
    assert s.phase is ShardPhase.IDENTIFYING
    s = on_ready(s, SESSION)
    assert s == ShardState(ShardPhase.READY, SESSION)

    r = on_hello(on_connected(initial_state(SESSION), ConnectMode.RESUME), ConnectMode.RESUME)
    assert r.phase is ShardPhase.RESUMING and r.session == SESSION
    assert on_resumed(r).phase is ShardPhase.READY


def test_connecting_keeps_the_session_and_the_failed_connects() -> None:
    s = on_connecting(ShardState(ShardPhase.DISCONNECTED, SESSION, 2))
    assert s == ShardState(ShardPhase.CONNECTING, SESSION, 2)
    assert on_connecting(initial_state(None)) == ShardState(ShardPhase.CONNECTING, None, 0)


def test_stop_keeps_the_session_and_closes_resumably() -> None:
    d = on_stop(READY)
    assert d.phase is ShardPhase.STOPPED
    assert d.session == SESSION
    assert d.close_code == 4000
    assert d.reconnect is None


def test_session_seq_update_is_a_new_record() -> None:
    assert SESSION.with_seq(50) == Session("abc", 50, "ws://resume.example/")
    assert SESSION.seq == 42


# -- properties over random event sequences -------------------------------------------


events = st.lists(
    st.one_of(
        st.tuples(st.just("close"), st.none() | st.integers(1000, 1015) | st.integers(4000, 4999)),
        st.tuples(st.just("op7"), st.none()),
        st.tuples(st.just("op9"), st.booleans()),
        st.tuples(st.just("zombie"), st.none()),
        st.tuples(st.just("transport"), st.none()),
        st.tuples(st.just("bad"), st.none()),
        st.tuples(st.just("connect_failed"), st.sampled_from(list(GatewayUrl))),
        st.tuples(st.just("ready"), st.none()),
    ),
    max_size=40,
)


@given(st.booleans(), events)
def test_no_event_sequence_ends_a_session_by_accident(
    saved: bool, seq: list[tuple[str, object]]
) -> None:
    state = initial_state(SESSION if saved else None)
    for kind, arg in seq:
        if state.phase is ShardPhase.FATAL:
            break
        if kind == "ready":
            state = on_ready(state, SESSION)
            continue
        if kind == "close":
            d = on_server_close(state, arg)  # type: ignore[arg-type]
        elif kind == "op7":
            d = on_reconnect_request(state)
        elif kind == "op9":
            d = on_invalid_session(state, bool(arg))
        elif kind == "zombie":
            d = on_missed_ack(state)
        elif kind == "transport":
            d = on_transport_error(state)
        elif kind == "bad":
            d = on_bad_input(state)
        else:
            d = on_connect_failed(state, arg)  # type: ignore[arg-type]
        # the shard never sends the close codes that end a Discord session
        assert d.close_code not in (1000, 1001)
        if d.reconnect is None:
            assert d.phase is ShardPhase.FATAL and d.fatal_code is not None
        elif d.reconnect.mode is ConnectMode.RESUME:
            assert d.session is not None  # never RESUME without a session
        else:
            assert d.session is None and d.reconnect.url is GatewayUrl.MAIN
        # a session is only dropped by what Discord says ends it
        if state.session is not None and d.session is None and d.phase is not ShardPhase.FATAL:
            assert (kind, arg) in {("op9", False)} or (
                kind == "close" and arg in (4003, 4007, 4009)
            )
        state = d.state
