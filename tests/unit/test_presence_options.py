"""``--status``, ``--activity`` and ``--large-threshold``: pure parsing into Identify's fields."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cluster.config import ConfigError, parse_large_threshold, parse_presence
from protocol.errors import InvalidCommandError
from protocol.payloads import parse_activity


@pytest.mark.parametrize(
    ("text", "activity"),
    [
        ("playing:chess", {"name": "chess", "type": 0}),
        ("Listening: lo-fi ", {"name": "lo-fi", "type": 2}),
        ("watching:the shards", {"name": "the shards", "type": 3}),
        ("competing:a: colon", {"name": "a: colon", "type": 5}),
        ("custom:back at 5", {"name": "Custom Status", "type": 4, "state": "back at 5"}),
    ],
)
def test_each_activity_form(text: str, activity: dict[str, object]) -> None:
    assert parse_activity(text) == activity


@pytest.mark.parametrize("text", ["streaming:x", "playing", "playing:", "custom: ", "x" * 300])
def test_bad_activities_name_the_forms(text: str) -> None:
    with pytest.raises(InvalidCommandError, match="activity"):
        parse_activity(text)


@given(st.text(max_size=200))
def test_any_text_is_an_activity_or_one_clear_error(text: str) -> None:
    try:
        activity = parse_activity(text)
    except InvalidCommandError as exc:
        assert "activity" in str(exc)
        return
    assert (
        activity["type"] in (0, 2, 3, 4, 5)
        and 0 < len(str(activity.get("state", activity["name"]))) <= 128
    )


def test_presence_from_status_and_activity() -> None:
    assert parse_presence(None, None) is None
    assert parse_presence("IDLE", None) == {
        "since": None,
        "activities": [],
        "status": "idle",
        "afk": False,
    }
    assert parse_presence(None, "playing:x") == {
        "since": None,
        "activities": [{"name": "x", "type": 0}],
        "status": "online",
        "afk": False,
    }
    with pytest.raises(ConfigError, match="--status"):
        parse_presence("busy", None)
    with pytest.raises(ConfigError, match="--activity"):
        parse_presence("dnd", "dancing:x")


def test_large_threshold_bounds() -> None:
    assert parse_large_threshold(None) is None
    assert parse_large_threshold(250) == 250
    for bad in (49, 251):
        with pytest.raises(ConfigError, match="--large-threshold must be 50-250"):
            parse_large_threshold(bad)
