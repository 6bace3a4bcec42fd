"""Pure parts of the supervisor: dedupe bookkeeping, resume points, config validation, progress."""

from __future__ import annotations

import io
import logging
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cluster.config import (
    ConfigError,
    LogFormat,
    SupervisorConfig,
    check_endpoint,
    parse_compression,
    parse_health,
    parse_intent_option,
    parse_log_format,
    parse_range,
    parse_shards,
    parse_workers,
)
from cluster.logging_setup import JsonFormatter, TokenRedactor
from cluster.progress import Progress, progress_line
from cluster.relay import SessionBook
from protocol.compression import Compression
from protocol.intents import NON_PRIVILEGED_INTENTS
from protocol.ipc import session_epoch
from protocol.session import Session

# -- SessionBook: dedupe by (shard, epoch, seq) ---------------------------------------------


def test_new_events_are_admitted_and_repeats_are_not() -> None:
    book = SessionBook()
    assert book.admit(0, 7, 1, 1) == 0
    assert book.admit(0, 7, 2, 1) == 0
    assert book.admit(0, 7, 2, 1) == 1  # a replayed event
    assert book.admit(0, 7, 1, 1) == 1
    assert book.published(0, 7) == 2
    assert book.admit(1, 7, 1, 1) == 0  # shards are independent


def test_a_batch_overlapping_what_was_published_skips_only_the_overlap() -> None:
    book = SessionBook()
    assert book.admit(0, 7, 1, 5) == 0
    assert book.admit(0, 7, 3, 5) == 3  # seqs 3..7: 3, 4, 5 are old
    assert book.published(0, 7) == 7
    assert book.admit(0, 7, 1, 7) == 7


def test_a_new_session_starts_over_and_old_stragglers_still_dedupe() -> None:
    book = SessionBook()
    book.admit(0, 1, 1, 10)
    assert book.admit(0, 2, 1, 1) == 0  # a new session's READY
    assert book.published(0, 2) == 1
    assert book.published(0, 1) == 10
    assert book.admit(0, 1, 10, 1) == 1  # an old session's replay, already published
    assert book.admit(0, 1, 11, 1) == 0  # ... and a genuinely new one
    assert book.published(0, 1) == 11


events = st.lists(
    st.tuples(st.integers(0, 2), st.integers(1, 3), st.integers(1, 30), st.integers(1, 4)),
    max_size=80,
)


@given(events)
def test_every_shard_epoch_seq_is_admitted_at_most_once_and_never_lost_going_forward(
    batches: list[tuple[int, int, int, int]],
) -> None:
    book = SessionBook()
    admitted: set[tuple[int, int, int]] = set()
    for shard, epoch, seq, count in batches:
        before = book.published(shard, epoch)
        skip = book.admit(shard, epoch, seq, count)
        assert 0 <= skip <= count
        new = [(shard, epoch, s) for s in range(seq + skip, seq + count)]
        assert not admitted & set(new), "admitted twice"
        admitted.update(new)
        # everything after what was published before is admitted
        assert all(
            s in range(seq + skip, seq + count) for s in range(max(seq, before + 1), seq + count)
        )
        assert book.published(shard, epoch) == max(before, seq + count - 1)


def test_resume_point_is_the_reported_session_at_the_last_published_seq() -> None:
    book = SessionBook()
    assert book.resume_point(3) is None
    book.on_session(3, "abc", "wss://resume")
    epoch = session_epoch("abc")
    book.admit(3, epoch, 1, 41)
    assert book.resume_point(3) == Session("abc", 41, "wss://resume")
    # a new session is reported before its READY: resume it from 0, not from the old seq
    book.on_session(3, "def", "wss://resume2")
    assert book.resume_point(3) == Session("def", 0, "wss://resume2")
    book.on_session(3, None, None)  # the session ended
    assert book.resume_point(3) is None
    assert book.resume_points([3]) == {}


def test_a_seeded_session_dedupes_what_the_previous_run_published() -> None:
    book = SessionBook()
    book.seed(2, Session("sess", 100, "wss://r"))
    assert book.resume_point(2) == Session("sess", 100, "wss://r")
    assert book.admit(2, session_epoch("sess"), 100, 1) == 1
    assert book.admit(2, session_epoch("sess"), 101, 1) == 0
    assert book.resume_points([2, 3]) == {2: Session("sess", 101, "wss://r")}


def test_the_version_moves_exactly_when_a_resume_point_may_have_changed() -> None:
    book = SessionBook()
    epoch = session_epoch("abc")
    seen = book.version

    def changed() -> bool:
        nonlocal seen
        moved, seen = book.version != seen, book.version
        return moved

    book.on_session(0, "abc", "wss://r")
    assert changed()
    book.on_session(0, "abc", "wss://r")  # every periodic report says the same
    assert not changed()
    book.admit(0, epoch, 1, 5)
    assert changed()
    book.admit(0, epoch, 4, 4)  # 6 and 7 are new
    assert changed()
    book.admit(0, epoch, 2, 6)  # a replay: nothing new published
    assert not changed()
    book.admit(0, session_epoch("def"), 1, 1)  # another epoch
    assert changed()
    book.on_session(0, "abc", "wss://other")  # a new resume URL
    assert changed()
    book.on_session(0, None, None)
    assert changed()
    book.on_session(0, None, None)
    assert not changed()
    book.seed(1, Session("xyz", 9, "wss://r"))
    assert changed()


# -- config -----------------------------------------------------------------------------------


def test_config_defaults_follow_the_contract_and_hide_the_token() -> None:
    config = SupervisorConfig(token="secret-token-value")
    assert "secret-token-value" not in repr(config)
    assert config.pub == "tcp://127.0.0.1:5555"
    assert config.control == "tcp://127.0.0.1:5556"
    assert (config.health_host, config.health_port) == ("127.0.0.1", 8080)
    assert config.state_dir == Path(".cluster-state")
    assert config.identify_interval_s == 5.0
    assert config.compression is Compression.ZLIB_STREAM
    assert config.intents == NON_PRIVILEGED_INTENTS
    assert config.liveness_timeout_s == 10.0


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"token": ""}, "--token"),
        ({"token": "a b"}, "--token"),
        ({"pub": "127.0.0.1:5555"}, "--pub"),
        ({"control": "http://x"}, "--control"),
        ({"identify_interval_s": 0.0}, "--identify-interval"),
        ({"identify_interval_s": float("nan")}, "--identify-interval"),
        ({"identify_margin_s": -1.0}, "--identify-margin"),
        ({"report_interval_s": 0.0}, "--report-interval"),
        ({"liveness_intervals": 1}, "--liveness-intervals"),
        ({"pub_hwm": 0}, "--pub-hwm"),
        ({"api_url": "discord.com"}, "--api-url"),
    ],
)
def test_bad_config_values_name_the_option(changes: dict[str, object], message: str) -> None:
    fields: dict[str, object] = {"token": "t0ken", **changes}
    with pytest.raises(ConfigError, match=message) as info:
        SupervisorConfig(**fields)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)


def test_option_parsers() -> None:
    assert parse_health("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_health("[::1]:8080") == ("::1", 8080)
    for bad in ("8080", "host:", ":80", "h:99999", "h:x"):
        with pytest.raises(ConfigError, match="--health"):
            parse_health(bad)
    assert parse_shards("auto") is None
    assert parse_shards("16") == 16
    with pytest.raises(ConfigError, match="--shards"):
        parse_shards("0")
    assert parse_range(None) is None
    assert parse_range("4-7") == (4, 7)
    with pytest.raises(ConfigError, match="--shard-ids"):
        parse_range("7-4")
    assert parse_workers("auto") is None
    assert parse_workers("3") == 3
    with pytest.raises(ConfigError, match="--workers"):
        parse_workers("0")
    assert parse_intent_option("GUILDS,GUILD_MESSAGES") == 1 | 512
    with pytest.raises(ConfigError, match="--intents"):
        parse_intent_option("NOT_AN_INTENT")
    assert parse_compression("none") is Compression.NONE
    with pytest.raises(ConfigError, match="--compress"):
        parse_compression("gzip")
    assert parse_log_format("JSON") is LogFormat.JSON
    with pytest.raises(ConfigError, match="--log-format"):
        parse_log_format("xml")
    assert check_endpoint("--pub", "ipc:///tmp/x") == "ipc:///tmp/x"


# -- progress and logging ------------------------------------------------------------------------


def test_progress_line_names_ready_total_and_time_left() -> None:
    assert progress_line(3, 32, 1.25) == (
        "shards ready 3/32, about 1.2 s left by the identify schedule"
    )
    assert progress_line(32, 32, 0.0) == "shards ready 32/32"
    assert "-" not in progress_line(1, 2, -3.0)


def test_progress_on_a_terminal_rewrites_one_line_when_it_changes() -> None:
    out = io.StringIO()
    progress = Progress(4, 30.0, stream=out, interactive=True)
    progress.update(1)
    progress.update(1)
    assert "about 30.0 s left" in out.getvalue()  # the schedule has not started
    progress.schedule_started()
    assert 29.0 < progress.seconds_left(time.monotonic()) <= 30.0
    progress.update(4)
    progress.update(4)
    text = out.getvalue()
    assert text.count("\r") == 2
    assert "shards ready 1/4" in text
    assert text.endswith("s\n")


def test_progress_off_a_terminal_logs_plain_lines(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "cluster.progress")
    progress = Progress(2, 0.0, stream=io.StringIO(), interactive=False, log_every_s=0.0)
    progress.update(0)
    progress.update(2)
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == "shards ready 0/2, about 0.0 s left by the identify schedule"
    assert caplog.records[-1].getMessage().startswith("all 2 shards ready in ")


def test_the_token_is_redacted_from_log_records_and_json_lines_are_json() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "token is %s", ("s3cret",), None)
    assert TokenRedactor("s3cret").filter(record)
    assert record.getMessage() == "token is <token>"
    record.fields = {"event": "listening"}
    line = JsonFormatter().format(record)
    assert '"msg":"token is <token>"' in line
    assert '"event":"listening"' in line
