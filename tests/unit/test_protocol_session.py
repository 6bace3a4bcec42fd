"""The one session record and the shard phase enum: the parsers never raise anything else."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.session import Session, ShardPhase

SESSION = Session("abc", 42, "wss://resume.example/")

json_values: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=12,
)
#: Objects that look like sessions, each field often right and often not.
session_like = st.fixed_dictionaries(
    {},
    optional={
        "session_id": st.one_of(st.text(max_size=8), json_values),
        "seq": st.one_of(st.integers(-3, 2**70), json_values),
        "resume_url": st.one_of(st.text(max_size=8), json_values),
    },
)


def test_to_json_and_back() -> None:
    assert SESSION.to_json() == {
        "session_id": "abc",
        "seq": 42,
        "resume_url": "wss://resume.example/",
    }
    assert Session.from_json(SESSION.to_json()) == SESSION
    assert Session.from_json(orjson.loads(orjson.dumps(SESSION.to_json()))) == SESSION
    assert Session.from_json(SESSION.to_json() | {"saved_at": 1.0}) == SESSION  # extra keys
    assert Session.from_json(SESSION.to_json() | {"seq": 0}).seq == 0


@pytest.mark.parametrize(
    "raw",
    [
        None,
        [],
        "abc",
        {},
        {"session_id": "", "seq": 1, "resume_url": "u"},
        {"session_id": "a", "seq": 1, "resume_url": ""},
        {"session_id": "a", "seq": -1, "resume_url": "u"},
        {"session_id": "a", "seq": True, "resume_url": "u"},
        {"session_id": "a", "seq": 1.0, "resume_url": "u"},
        {"session_id": "a", "seq": "1", "resume_url": "u"},
        {"session_id": 1, "seq": 1, "resume_url": "u"},
        {"session_id": "a", "resume_url": "u"},
    ],
)
def test_from_json_refuses_anything_but_a_session(raw: object) -> None:
    with pytest.raises(ValueError):
        Session.from_json(raw)


@given(st.one_of(json_values, session_like))
def test_from_json_of_any_json_returns_a_valid_session_or_raises_value_error(raw: Any) -> None:
    try:
        session = Session.from_json(raw)
    except ValueError:
        return
    assert isinstance(session.session_id, str) and session.session_id
    assert type(session.seq) is int and session.seq >= 0
    assert isinstance(session.resume_url, str) and session.resume_url
    assert Session.from_json(session.to_json()) == session


@given(st.integers(0, 2**63))
def test_with_seq_is_a_new_record(seq: int) -> None:
    assert SESSION.with_seq(seq) == Session("abc", seq, "wss://resume.example/")
    assert SESSION.seq == 42


def test_phases_parse_from_their_wire_value_and_unknown_reads_disconnected() -> None:
    for phase in ShardPhase:
        assert ShardPhase.parse(phase.value) is phase
    assert ShardPhase.parse("") is ShardPhase.DISCONNECTED
    assert ShardPhase.parse("READY") is ShardPhase.DISCONNECTED
    assert ShardPhase.parse("sleeping") is ShardPhase.DISCONNECTED
