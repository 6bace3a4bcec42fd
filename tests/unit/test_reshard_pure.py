"""The pure parts of a reshard: fingerprints, the hold, the marker, the saved layout."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cluster.reshard import (
    Fingerprints,
    HeldRuns,
    Layout,
    effective_shards,
    fingerprint,
    load_layout,
    marker_payload,
    save_layout,
)
from titanium_client.sequence import SequenceTracker, Verdict


def event(t: str, seq: int, d: object) -> tuple[bytes, bytes]:
    return t.encode(), orjson.dumps({"t": t, "s": seq, "op": 0, "d": d})


def test_the_same_event_on_two_shard_sets_has_one_fingerprint() -> None:
    # different seq, key order and spacing: the same event
    a = (b"MESSAGE_CREATE", b'{"t":"MESSAGE_CREATE","s":5,"op":0,"d":{"id":"1","content":"hi"}}')
    b = (b"MESSAGE_CREATE", b'{"op":0,"d":{"content":"hi", "id":"1"},"s":77,"t":"MESSAGE_CREATE"}')
    assert fingerprint(*a) == fingerprint(*b)
    assert fingerprint(*a) != fingerprint(b"MESSAGE_UPDATE", a[1])
    assert fingerprint(*a) != fingerprint(*event("MESSAGE_CREATE", 5, {"id": "2", "content": "hi"}))


def test_each_recorded_fingerprint_matches_once() -> None:
    prints = Fingerprints()
    twice = event("TYPING_START", 1, {"user_id": "1"})
    prints.record(*twice)
    prints.record(*twice)
    assert prints.take(*twice) and prints.take(*twice)
    assert not prints.take(*twice)
    assert prints.matched == 2
    assert not prints.take(*event("TYPING_START", 1, {"user_id": "2"}))


def test_old_fingerprints_expire() -> None:
    prints = Fingerprints(window_s=0.0)
    prints.record(*event("A", 1, 1))
    prints.record(*event("B", 2, 2))  # the first is older than the window now
    assert not prints.take(*event("A", 1, 1))


def test_the_hold_knows_when_every_guild_arrived() -> None:
    held = HeldRuns()
    ready = event("READY", 1, {"guilds": [{"id": "1"}, {"id": "2"}]})
    held.add(0, 7, 1, [ready])
    assert not held.settled((0,))
    held.add(
        0, 7, 2, [event("GUILD_CREATE", 2, {"id": "1"}), event("GUILD_CREATE", 3, {"id": "2"})]
    )
    assert held.settled((0,))
    assert not held.settled((0, 1))  # shard 1 has had no READY yet
    assert held.events == 3
    runs = held.take_all()
    assert [r.first_seq for r in runs] == [1, 2] and held.events == 0


def test_the_hold_drops_what_is_older_than_its_window() -> None:
    held = HeldRuns(window_s=0.0)
    held.add(0, 1, 1, [event("A", 1, 1)])
    held.add(0, 1, 2, [event("A", 2, 2)])
    assert [r.first_seq for r in held.runs] == [2] and held.expired == 1


def test_the_marker_is_a_dispatch_with_the_new_shards() -> None:
    payload = orjson.loads(marker_payload(8, 16, 123.5, {0: ("s0", 4), 1: (None, 1)}))
    assert payload["t"] == "TITANIUM_RESHARD" and payload["op"] == 0 and payload["s"] is None
    assert payload["d"] == {
        "old_shards": 8,
        "new_shards": 16,
        "switched_at": 123.5,
        "shards": {
            "0": {"session_id": "s0", "contiguous_from": 4},
            "1": {"session_id": None, "contiguous_from": 1},
        },
    }


def test_after_the_marker_seqs_below_contiguous_from_are_neither_gaps_nor_repeats() -> None:
    tracker = SequenceTracker()
    tracker.observe(0, "old", 1, starts_session=True)
    tracker.observe(0, "old", 2)
    tracker.reshard({0: ("new", 10)})
    # held events released after the marker: some dropped as duplicates (no 3, 5)
    for seq in (1, 2, 4, 6):
        assert tracker.observe(0, "new", seq).verdict is Verdict.LATE
    first_live = tracker.observe(0, "new", 10)
    assert first_live.verdict is Verdict.NEW and first_live.gap is None
    assert tracker.observe(0, "new", 10).verdict is Verdict.DUPLICATE
    assert tracker.observe(0, "new", 12).gap is not None  # live gaps are still seen


def test_the_saved_layout_round_trips(tmp_path: Path) -> None:
    assert load_layout(tmp_path) is None
    save_layout(tmp_path, Layout(32, 16))
    assert load_layout(tmp_path) == Layout(32, 16)
    (tmp_path / "layout.json").write_text("{not json")
    assert load_layout(tmp_path) is None


@given(
    asked=st.none() | st.integers(1, 64),
    recommended=st.integers(1, 64),
    saved=st.none() | st.builds(Layout, st.integers(1, 64), st.integers(1, 64)),
)
def test_a_saved_reshard_wins_over_auto_and_over_the_count_it_replaced(
    asked: int | None, recommended: int, saved: Layout | None
) -> None:
    got = effective_shards(asked, recommended, saved)
    if saved is not None and asked in (None, saved.resharded_from):
        assert got == saved.shards
    elif asked is not None:
        assert got == asked
    else:
        assert got == recommended


@pytest.mark.parametrize("bad", [b"[]", b'{"shards": 0, "resharded_from": 1}', b'{"shards": "8"}'])
def test_a_bad_layout_file_is_ignored(tmp_path: Path, bad: bytes) -> None:
    (tmp_path / "layout.json").write_bytes(bad)
    assert load_layout(tmp_path) is None


def test_a_running_or_abandoned_reshard_shows_in_cluster_status() -> None:
    from cluster.cli_client import render_status
    from cluster.reshard import describe_progress

    running = {
        "phase": "starting",
        "old_shards": 16,
        "new_shards": 32,
        "new_ready": 12,
        "elapsed_s": 4.25,
        "error": None,
    }
    assert describe_progress(running) == "16 -> 32 shards: starting, 12/32 new shards ready, 4.2 s"
    text = render_status({"shards": [{"shard_id": 0, "state": "ready"}], "reshard": running})
    assert (
        text.splitlines()[-1] == "reshard: 16 -> 32 shards: starting, 12/32 new shards ready, 4.2 s"
    )
    done = {**running, "phase": "switched", "new_ready": 32}
    assert "reshard" not in render_status({"shards": [], "reshard": done})
    abandoned = {**running, "phase": "abandoned", "error": "the identify budget ran out"}
    assert render_status({"shards": [], "reshard": abandoned}).endswith(
        ": the identify budget ran out"
    )
    assert describe_progress({}) == "? -> ? shards: ?, ?/? new shards ready"
