"""The simulated application's settings, pure: privileged intents, session starts, the 4014 line."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cluster.config import ConfigError, SimulateSettings
from protocol.errors import UnknownIntentError
from protocol.gateway import DEFAULT_SESSION_START_LIMIT, FATAL_EXPLANATIONS, explain_fatal
from protocol.intents import (
    PRIVILEGED_INTENTS,
    PRIVILEGED_NAMES,
    Intent,
    intent_names,
    parse_privileged_intents,
)
from simulator.sessions import SessionStartBudget

PRIVILEGED = [Intent.GUILD_MEMBERS, Intent.GUILD_PRESENCES, Intent.MESSAGE_CONTENT]
OTHERS = [i for i in Intent if i not in PRIVILEGED]


# -- --privileged-intents -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("GUILD_MEMBERS,GUILD_PRESENCES,MESSAGE_CONTENT", PRIVILEGED_INTENTS),
        ("all", PRIVILEGED_INTENTS),
        (" ALL ", PRIVILEGED_INTENTS),
        ("none", 0),
        ("", 0),
        ("0", 0),
        ("message_content", 1 << 15),
        ("GUILD_MEMBERS|GUILD_PRESENCES", 2 | 256),
        ("33026", PRIVILEGED_INTENTS),
        (256, 256),
    ],
)
def test_privileged_intents_parse(text: str | int, value: int) -> None:
    assert parse_privileged_intents(text) == value


def test_privileged_names_are_the_three() -> None:
    assert PRIVILEGED_NAMES == "GUILD_MEMBERS,GUILD_PRESENCES,MESSAGE_CONTENT"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("GUILDS", "GUILDS is not privileged; privileged intents: GUILD_MEMBERS, GUILD_PRESENCES"),
        ("GUILD_MEMBERS,GUILDS,GUILD_MESSAGES", "GUILDS, GUILD_MESSAGES are not privileged"),
        ("513", "are not privileged"),
        ("GUILD_MEMBRES", "unknown intent 'GUILD_MEMBRES'"),
        ("131072", "undefined bits"),
        ("-2", "unknown intent"),
    ],
)
def test_privileged_intents_reject_what_needs_no_enabling(text: str, fragment: str) -> None:
    with pytest.raises(UnknownIntentError, match=fragment):
        parse_privileged_intents(text)


@given(
    st.sets(st.sampled_from(PRIVILEGED)),
    st.sampled_from([",", "|", " ", ", "]),
    st.booleans(),
)
def test_privileged_names_round_trip(chosen: set[Intent], sep: str, lower: bool) -> None:
    value = sum(i.value for i in chosen)
    names = intent_names(value)
    text = sep.join(n.lower() if lower else n for n in names)
    assert parse_privileged_intents(text) == value
    assert parse_privileged_intents(str(value)) == value


@given(st.sets(st.sampled_from(PRIVILEGED)), st.sets(st.sampled_from(OTHERS), min_size=1))
def test_any_non_privileged_name_is_refused_by_name(
    chosen: set[Intent], others: set[Intent]
) -> None:
    text = ",".join(i.name or "" for i in [*chosen, *others])
    with pytest.raises(UnknownIntentError) as info:
        parse_privileged_intents(text)
    for other in others:
        assert other.name is not None and other.name in str(info.value)


@given(st.text(max_size=40) | st.integers(-(1 << 30), 1 << 30))
def test_any_input_is_a_privileged_subset_or_a_clear_error(text: str | int) -> None:
    try:
        value = parse_privileged_intents(text)
    except UnknownIntentError as exc:
        assert str(exc) and "\n" not in str(exc)
    else:
        assert value & ~PRIVILEGED_INTENTS == 0


# -- the 4014 line ---------------------------------------------------------------------------------


def test_4014_says_how_to_enable_on_discord_and_on_the_simulator() -> None:
    line = explain_fatal(4014)
    assert line == FATAL_EXPLANATIONS[4014]
    assert line.startswith("disallowed intents (4014): ")
    assert "Developer Portal (Bot -> Privileged Gateway Intents)" in line
    assert "--privileged-intents GUILD_MEMBERS,GUILD_PRESENCES,MESSAGE_CONTENT" in line
    assert "`cluster simulate`" in line and "`cluster up --simulate`" in line
    assert "\n" not in line


def test_4014_with_the_intents_names_the_ones_asked_for() -> None:
    line = explain_fatal(4014, int(Intent.GUILDS | Intent.GUILD_PRESENCES | Intent.MESSAGE_CONTENT))
    assert "--intents asks for GUILD_PRESENCES, MESSAGE_CONTENT" in line
    assert "--privileged-intents GUILD_PRESENCES,MESSAGE_CONTENT (`cluster simulate`" in line
    assert "Developer Portal (Bot -> Privileged Gateway Intents)" in line
    # nothing privileged asked for (the server disagrees): the general line
    assert explain_fatal(4014, 513) == FATAL_EXPLANATIONS[4014]
    # other codes ignore the intents
    assert explain_fatal(4004, PRIVILEGED_INTENTS) == FATAL_EXPLANATIONS[4004]


# -- cluster up --simulate settings ----------------------------------------------------------------


def test_simulate_settings_from_the_up_options() -> None:
    assert SimulateSettings.from_options(False, 4, 4, 5.0, None, None) is None
    default = SimulateSettings.from_options(True, 4, 4, 5.0, None, None)
    assert default == SimulateSettings(4, 4, 5.0)
    assert default is not None
    assert default.privileged_intents == 0
    assert default.session_start_limit == DEFAULT_SESSION_START_LIMIT == 1000
    settings = SimulateSettings.from_options(True, 8, 2, 1.0, "GUILD_MEMBERS,MESSAGE_CONTENT", 5000)
    assert settings == SimulateSettings(8, 2, 1.0, (1 << 1) | (1 << 15), 5000)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        ((False, 4, 4, 5.0, "GUILD_MEMBERS", None), "--privileged-intents goes with --simulate"),
        ((False, 4, 4, 5.0, None, 5000), "--session-start-limit goes with --simulate"),
        ((True, 4, 4, 5.0, "GUILDS", None), "--privileged-intents: GUILDS is not privileged"),
        ((True, 4, 4, 5.0, None, 0), "--session-start-limit must be between 1 and"),
    ],
)
def test_simulate_settings_refuse_bad_options(
    args: tuple[bool, int, int, float, str | None, int | None], fragment: str
) -> None:
    with pytest.raises(ConfigError, match=fragment):
        SimulateSettings.from_options(*args)


def test_simulate_settings_refuse_non_privileged_bits() -> None:
    with pytest.raises(ConfigError, match="--privileged-intents may only name"):
        SimulateSettings(privileged_intents=1)


# -- the session-start budget ----------------------------------------------------------------------


def test_raising_the_total_keeps_the_starts_spent() -> None:
    budget = SessionStartBudget(1000, 1000, 3_600_000, now=0.0)
    for _ in range(992):
        budget.spend(1.0)
    budget.set_limit(2.0, total=5000)
    assert (budget.total, budget.available(2.0)) == (5000, 4008)
    assert budget.to_json(2.0, 16) == {
        "total": 5000,
        "remaining": 4008,
        "reset_after": 3_598_000,
        "max_concurrency": 16,
    }


def test_lowering_the_total_below_the_spent_leaves_none() -> None:
    budget = SessionStartBudget(1000, 10, 1000, now=0.0)
    budget.set_limit(0.0, total=500)
    assert budget.available(0.0) == 0


def test_remaining_and_reset_can_be_set_too() -> None:
    budget = SessionStartBudget(1000, 0, 1000, now=0.0)
    budget.set_limit(0.5, total=3000, remaining=2000, reset_after_ms=60_000)
    assert (budget.total, budget.available(0.5), budget.reset_after_ms(0.5)) == (3000, 2000, 60_000)
    budget.set_limit(0.5, remaining=5000)  # capped at the total
    assert budget.available(0.5) == 3000
    # the window still resets to the (new) total
    budget.spend(1.0)
    assert budget.available(61.0) == 3000
