"""The session store: atomic, token-safe, and only ever offers sessions that fit."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import orjson
import pytest

from cluster.sessions import STATE_FORMAT_VERSION, SessionStore, token_fingerprint
from protocol.session import Session

TOKEN = "MTIzNDU2Nzg5MDEyMzQ1Njc4.GhIjKl.secret-part-of-the-token"

SESSIONS = {
    0: Session("abc", 41, "ws://127.0.0.1:1/resume"),
    3: Session("def", 7, "ws://127.0.0.1:1/resume"),
}


def test_round_trip_and_file_is_private_and_token_free(tmp_path: Path) -> None:
    store = SessionStore(tmp_path / "state", TOKEN, 4)
    store.save(SESSIONS, saved_at=1000.0)
    assert store.load(now=1000.0) == SESSIONS
    text = store.path.read_text()
    assert TOKEN not in text and "secret-part" not in text
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert [p.name for p in store.path.parent.iterdir()] == ["sessions.json"]


def test_the_v2_document_has_one_saved_at_for_the_file(tmp_path: Path) -> None:
    store = SessionStore(tmp_path, TOKEN, 4)
    store.save(SESSIONS, saved_at=1000.5)
    assert orjson.loads(store.path.read_bytes()) == {
        "format": STATE_FORMAT_VERSION,
        "token_fingerprint": token_fingerprint(TOKEN),
        "total_shards": 4,
        "saved_at": 1000.5,
        "sessions": {
            "0": {"session_id": "abc", "seq": 41, "resume_url": "ws://127.0.0.1:1/resume"},
            "3": {"session_id": "def", "seq": 7, "resume_url": "ws://127.0.0.1:1/resume"},
        },
    }
    assert STATE_FORMAT_VERSION == 2


def test_saved_at_defaults_to_now(tmp_path: Path) -> None:
    store = SessionStore(tmp_path, TOKEN, 4)
    store.save(SESSIONS)
    assert store.load() == SESSIONS


def test_other_token_or_shard_count_gets_nothing(tmp_path: Path) -> None:
    SessionStore(tmp_path, TOKEN, 4).save(SESSIONS, saved_at=1000.0)
    assert SessionStore(tmp_path, TOKEN + "x", 4).load(now=1000.0) == {}
    assert SessionStore(tmp_path, TOKEN, 8).load(now=1000.0) == {}


def test_a_file_too_old_or_from_the_future_offers_nothing(tmp_path: Path) -> None:
    store = SessionStore(tmp_path, TOKEN, 4)
    store.save(SESSIONS, saved_at=1000.0)
    assert store.load(max_age_s=20, now=1020.0) == SESSIONS
    assert store.load(max_age_s=20, now=1020.5) == {}
    assert store.load(max_age_s=20, now=999.0) == {}


def write(store: SessionStore, document: dict[str, object]) -> None:
    store.path.parent.mkdir(parents=True, exist_ok=True)
    store.path.write_bytes(orjson.dumps(document))


def header(fmt: int = STATE_FORMAT_VERSION) -> dict[str, object]:
    return {"format": fmt, "token_fingerprint": token_fingerprint(TOKEN), "total_shards": 4}


def test_a_v1_file_is_still_read_with_a_saved_at_per_session(tmp_path: Path) -> None:
    store = SessionStore(tmp_path, TOKEN, 4)
    url = "ws://127.0.0.1:1/resume"
    write(
        store,
        header(1)
        | {
            "sessions": {
                "0": {"session_id": "abc", "seq": 41, "resume_url": url, "saved_at": 1000.0},
                "3": {"session_id": "def", "seq": 7, "resume_url": url, "saved_at": 970.0},
                "2": {"session_id": "ghi", "seq": 7, "resume_url": url},
            }
        },
    )
    assert store.load(max_age_s=20, now=1000.0) == {0: SESSIONS[0]}
    assert store.load(max_age_s=60, now=1000.0) == SESSIONS


@pytest.mark.parametrize(
    "bad",
    [
        {"session_id": "", "seq": 1, "resume_url": "ws://x/"},
        {"session_id": "a", "seq": -1, "resume_url": "ws://x/"},
        {"session_id": "a", "seq": True, "resume_url": "ws://x/"},
        {"session_id": "a", "seq": "1", "resume_url": "ws://x/"},
        {"session_id": "a", "seq": 1},
        ["a", 1, "ws://x/"],
        None,
    ],
)
def test_a_bad_entry_is_skipped_and_the_rest_is_read(tmp_path: Path, bad: object) -> None:
    store = SessionStore(tmp_path, TOKEN, 4)
    good = {"session_id": "a", "seq": 1, "resume_url": "ws://x/"}
    write(store, header() | {"saved_at": 1000.0, "sessions": {"0": bad, "1": good, "x": good}})
    assert store.load(now=1000.0) == {1: Session("a", 1, "ws://x/")}


@pytest.mark.parametrize("saved_at", [None, "1000", True])
def test_a_v2_file_without_a_usable_saved_at_offers_nothing(
    tmp_path: Path, saved_at: object
) -> None:
    store = SessionStore(tmp_path, TOKEN, 4)
    good = {"session_id": "a", "seq": 1, "resume_url": "ws://x/"}
    document = header() | {"sessions": {"1": good}}
    if saved_at is not None:
        document["saved_at"] = saved_at
    write(store, document)
    assert store.load(now=1000.0) == {}


def test_corrupt_missing_or_unknown_format_file_is_ignored(tmp_path: Path) -> None:
    store = SessionStore(tmp_path, TOKEN, 4)
    assert store.load() == {}
    store.path.write_bytes(b"{not json")
    assert store.load() == {}
    store.path.write_bytes(b'{"format":2,"sessions":[]}')
    assert store.load() == {}
    write(store, header(3) | {"saved_at": 1000.0, "sessions": {}})
    assert store.load(now=1000.0) == {}


def test_save_replaces_and_clear_removes(tmp_path: Path) -> None:
    store = SessionStore(tmp_path, TOKEN, 4)
    store.save(SESSIONS, saved_at=1000.0)
    store.save({1: Session("zzz", 1, "ws://x/")}, saved_at=1000.0)
    assert set(store.load(now=1000.0)) == {1}
    store.clear()
    assert store.load(now=1000.0) == {}


def test_save_syncs_the_file_and_then_its_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SessionStore(tmp_path, TOKEN, 4)
    synced: list[bool] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    store.save(SESSIONS, saved_at=1000.0)
    assert synced == [False, True]


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SessionStore(tmp_path, TOKEN, 4)
    store.save(SESSIONS, saved_at=1000.0)

    def broken(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(OSError):
        store.save({1: Session("zzz", 1, "ws://x/")}, saved_at=1000.0)
    assert store.load(now=1000.0) == SESSIONS
    assert [p.name for p in tmp_path.iterdir()] == ["sessions.json"]


def test_hosts_with_shard_ranges_keep_their_own_files(tmp_path: Path) -> None:
    whole = SessionStore(tmp_path, TOKEN, 4, (0, 3))
    low = SessionStore(tmp_path, TOKEN, 4, (0, 1))
    high = SessionStore(tmp_path, TOKEN, 4, (2, 3))
    assert whole.path.name == "sessions.json"
    low.save({0: Session("a", 1, "ws://x/")}, saved_at=1000.0)
    high.save({2: Session("c", 3, "ws://x/")}, saved_at=1000.0)
    assert set(low.load(now=1000.0)) == {0}
    assert set(high.load(now=1000.0)) == {2}
    assert whole.load(now=1000.0) == {}
