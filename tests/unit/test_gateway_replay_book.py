"""SessionBook.resume_from (cluster/relay.py): a shard RESUMEd below its published seq so the
gateway endpoint's saved cache catches up, without anything published twice."""

from __future__ import annotations

from cluster.relay import SessionBook
from protocol.ipc import session_epoch
from protocol.session import Session

SESSION = Session("abc", 10, "wss://resume")
EPOCH = session_epoch("abc")


def seeded() -> SessionBook:
    book = SessionBook()
    book.seed(0, SESSION)
    return book


def test_the_resume_point_is_the_caches_seq_until_the_replay_reaches_the_published_one() -> None:
    book = seeded()
    version = book.version
    book.resume_from(0, 4)
    assert book.version > version  # the checkpointer writes it
    assert book.resume_point(0) == Session("abc", 4, "wss://resume")
    assert book.admit(0, EPOCH, 5, 3) == 3  # replayed 5..7: published before
    book.replayed(0, EPOCH, 7)
    assert book.resume_point(0) == Session("abc", 7, "wss://resume")  # a new worker goes on
    assert book.admit(0, EPOCH, 8, 5) == 3  # 8..10 replayed, 11..12 new
    book.replayed(0, EPOCH, 10, new_after=True)
    assert book.resuming == {}
    assert book.resume_point(0) == Session("abc", 12, "wss://resume")


def test_a_replay_that_ends_exactly_at_the_published_seq_ends_it() -> None:
    book = seeded()
    book.resume_from(0, 4)
    book.admit(0, EPOCH, 5, 6)
    book.replayed(0, EPOCH, 10)
    assert book.resuming == {} and book.resume_point(0) == SESSION


def test_nothing_to_replay_and_other_sessions_change_nothing() -> None:
    book = seeded()
    book.resume_from(0, 10)  # at the published seq: a plain resume
    book.resume_from(1, 3)  # no session
    assert book.resuming == {}
    book.resume_from(0, 4)
    book.replayed(0, EPOCH + 1, 9)  # another session's events
    book.replayed(0, EPOCH, 3)  # behind the floor
    assert book.resuming == {0: 4}


def test_a_new_session_or_none_drops_the_replay() -> None:
    book = seeded()
    book.resume_from(0, 4)
    book.on_session(0, "abc", "wss://resume")  # the same session reported: kept
    assert book.resuming == {0: 4}
    book.on_session(0, "def", "wss://other")  # its RESUME was refused: it identified
    assert book.resuming == {}
    assert book.resume_point(0) == Session("def", 0, "wss://other")
    book = seeded()
    book.resume_from(0, 4)
    book.on_session(0, None, None)
    assert book.resuming == {} and book.resume_point(0) is None
