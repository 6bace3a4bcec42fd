"""The session store: atomic, token-safe, and only ever offers sessions that fit."""

from __future__ import annotations

import stat
from pathlib import Path

from cluster.sessions import SavedSession, SessionStore

TOKEN = "MTIzNDU2Nzg5MDEyMzQ1Njc4.GhIjKl.secret-part-of-the-token"


def sessions(now: float) -> dict[int, SavedSession]:
    return {
        0: SavedSession("abc", 41, "ws://127.0.0.1:1/resume", now),
        3: SavedSession("def", 7, "ws://127.0.0.1:1/resume", now - 30),
    }


def test_round_trip_and_file_is_private_and_token_free(tmp_path: Path) -> None:
    store = SessionStore(tmp_path / "state", TOKEN, 4)
    store.save(sessions(1000.0))
    assert store.load(now=1000.0) == sessions(1000.0)
    text = store.path.read_text()
    assert TOKEN not in text and "secret-part" not in text
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert [p.name for p in store.path.parent.iterdir()] == ["sessions.json"]


def test_other_token_or_shard_count_gets_nothing(tmp_path: Path) -> None:
    SessionStore(tmp_path, TOKEN, 4).save(sessions(1000.0))
    assert SessionStore(tmp_path, TOKEN + "x", 4).load(now=1000.0) == {}
    assert SessionStore(tmp_path, TOKEN, 8).load(now=1000.0) == {}


def test_sessions_too_old_are_skipped(tmp_path: Path) -> None:
    store = SessionStore(tmp_path, TOKEN, 4)
    store.save(sessions(1000.0))
    assert set(store.load(max_age_s=20, now=1000.0)) == {0}
    assert store.load(max_age_s=20, now=2000.0) == {}


def test_corrupt_or_missing_file_is_ignored(tmp_path: Path) -> None:
    store = SessionStore(tmp_path, TOKEN, 4)
    assert store.load() == {}
    store.path.write_bytes(b"{not json")
    assert store.load() == {}
    store.path.write_bytes(b'{"format":1,"sessions":[]}')
    assert store.load() == {}


def test_save_replaces_and_clear_removes(tmp_path: Path) -> None:
    store = SessionStore(tmp_path, TOKEN, 4)
    store.save(sessions(1000.0))
    store.save({1: SavedSession("zzz", 1, "ws://x/", 1000.0)})
    assert set(store.load(now=1000.0)) == {1}
    store.clear()
    assert store.load(now=1000.0) == {}


def test_hosts_with_shard_ranges_keep_their_own_files(tmp_path: Path) -> None:
    whole = SessionStore(tmp_path, TOKEN, 4, (0, 3))
    low = SessionStore(tmp_path, TOKEN, 4, (0, 1))
    high = SessionStore(tmp_path, TOKEN, 4, (2, 3))
    assert whole.path.name == "sessions.json"
    low.save({0: SavedSession("a", 1, "ws://x/", 1000.0)})
    high.save({2: SavedSession("c", 3, "ws://x/", 1000.0)})
    assert set(low.load(now=1000.0)) == {0}
    assert set(high.load(now=1000.0)) == {2}
    assert whole.load(now=1000.0) == {}
