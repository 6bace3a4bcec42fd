"""The config file of ``cluster up``, pure: keys, types, one-line errors, rendering, redaction."""

from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path
from typing import Optional

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cluster.config import redact_url
from cluster.config_file import (
    REDACTED,
    ConfigFileError,
    Kind,
    OptionSpec,
    Setting,
    Source,
    check_value,
    envvar_in_use,
    kind_of,
    load_config_file,
    parse_config_file,
    redacted,
    render_json,
    render_toml,
    toml_literal,
    with_origin,
)

SPECS = {
    spec.name: spec
    for spec in (
        OptionSpec("token", Kind.STR, "--token", ("DISCORD_TOKEN", "CLUSTER_TOKEN")),
        OptionSpec("shards", Kind.STR, "--shards", ("CLUSTER_SHARDS",)),
        OptionSpec("shard_ids", Kind.STR, "--shard-ids", ("CLUSTER_SHARD_IDS",)),
        OptionSpec("redis", Kind.STR, "--redis", ("CLUSTER_REDIS",)),
        OptionSpec("hosts", Kind.INT, "--hosts", ("CLUSTER_HOSTS",)),
        OptionSpec("identify_interval", Kind.FLOAT, "--identify-interval", ()),
        OptionSpec("simulate", Kind.BOOL, "--simulate", ("CLUSTER_SIMULATE",)),
        OptionSpec("pub_hwm", Kind.INT, "--pub-hwm", ("CLUSTER_PUB_HWM",), hidden=True),
    )
}
PATH = "conf/cluster.toml"


def parse(text: str) -> dict[str, object]:
    return dict(parse_config_file(text.encode(), PATH, SPECS).values)


def refusal(text: str) -> str:
    with pytest.raises(ConfigFileError) as caught:
        parse(text)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{PATH}: ")
    return message


# -- kinds ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("annotation", "kind"),
    [
        (str, Kind.STR),
        (str | None, Kind.STR),
        (Path, Kind.STR),
        (int, Kind.INT),
        (int | None, Kind.INT),
        (float, Kind.FLOAT),
        (float | None, Kind.FLOAT),
        (bool, Kind.BOOL),
        (Optional[bool], Kind.BOOL),  # noqa: UP045 (the older spelling of a union)
        (int | str, Kind.STR),
        (Source, Kind.STR),  # an Enum: its choices are strings
    ],
)
def test_kind_of_an_option_type(annotation: object, kind: Kind) -> None:
    assert kind_of(annotation) is kind


# -- reading a file -------------------------------------------------------------------------------


def test_dashes_and_underscores_name_the_same_option() -> None:
    values = parse(
        'shard-ids = "0-3"\nidentify_interval = 2\npub-hwm = 5\nsimulate = true\nhosts = 2\n'
    )
    assert values == {
        "shard_ids": "0-3",
        "identify_interval": 2.0,
        "pub_hwm": 5,
        "simulate": True,
        "hosts": 2,
    }
    assert isinstance(values["identify_interval"], float)


def test_a_string_option_takes_an_integer() -> None:
    assert parse("shards = 16\n") == {"shards": "16"}


def test_the_key_as_written_is_kept_for_messages() -> None:
    loaded = parse_config_file(b"pub_hwm = 5\n", PATH, SPECS)
    assert loaded.keys == {"pub_hwm": "pub_hwm"}
    assert loaded.origin("pub_hwm") == f"{PATH}, key pub_hwm"


def test_both_spellings_of_one_option_is_an_error() -> None:
    message = refusal("pub-hwm = 5\npub_hwm = 6\n")
    assert "pub-hwm and pub_hwm are the same option" in message


def test_an_unknown_key_is_named_with_a_suggestion() -> None:
    message = refusal('shard-idz = "0-3"\n')
    assert message == (
        f"{PATH}: unknown key 'shard-idz': not an option of cluster up; did you mean 'shard-ids'?"
    )


def test_a_table_is_not_an_unknown_option_but_a_wrong_type() -> None:
    assert refusal('[redis]\nurl = "redis://r"\n') == (
        f"{PATH}: redis must be a string, got a table (options are top-level keys)"
    )
    assert "unknown key 'cluster'" in refusal("[cluster]\nshards = 1\n")


@pytest.mark.parametrize("key", ["config", "config-file", "config_file"])
def test_the_file_cannot_name_another_config_file(key: str) -> None:
    assert "cannot be set in a config file" in refusal(f'{key} = "other.toml"\n')


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('pub-hwm = "many"', "pub-hwm must be an integer, got a string"),
        ("pub-hwm = 1.5", "pub-hwm must be an integer, got a float"),
        ("pub-hwm = true", "pub-hwm must be an integer, got a boolean"),
        ('identify-interval = "5"', "identify-interval must be a number, got a string"),
        ("identify-interval = false", "identify-interval must be a number, got a boolean"),
        ('simulate = "yes"', "simulate must be true or false, got a string"),
        ("simulate = 1", "simulate must be true or false, got an integer"),
        ("shards = true", "shards must be a string, got a boolean"),
        ("shards = [1, 2]", "shards must be a string, got an array"),
        ("shard_ids = 1979-05-27", "shard_ids must be a string, got a date or time"),
    ],
)
def test_a_wrong_type_names_the_key_and_the_expected_type(line: str, expected: str) -> None:
    assert refusal(line + "\n") == f"{PATH}: {expected.replace('shard_ids', 'shard-ids')}"


def test_bad_toml_names_the_file_and_the_line() -> None:
    message = refusal('shards = "auto"\nhosts = \n')
    assert "not valid TOML" in message and "line 2" in message


def test_text_that_is_not_utf8_is_refused() -> None:
    with pytest.raises(ConfigFileError, match="not UTF-8"):
        parse_config_file(b'shards = "\xff"\n', PATH, SPECS)


def test_load_names_a_file_that_cannot_be_read(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.toml")
    with pytest.raises(ConfigFileError) as caught:
        load_config_file(missing, SPECS)
    assert str(caught.value) == f"{missing}: cannot read the config file: No such file or directory"
    (tmp_path / "ok.toml").write_text("hosts = 3\n")
    assert load_config_file(str(tmp_path / "ok.toml"), SPECS).values == {"hosts": 3}


def test_a_mistyped_token_is_never_echoed() -> None:
    message = refusal("token = [918273645546372819]\n")
    assert message == f"{PATH}: token must be a string, got an array"


# -- properties of the parser ----------------------------------------------------------------------

VALUES = {
    Kind.STR: st.text(),
    Kind.INT: st.integers(-(2**63), 2**63 - 1),
    Kind.FLOAT: st.floats(allow_nan=False),
    Kind.BOOL: st.booleans(),
}
WRONG = {
    Kind.STR: st.booleans() | st.floats(allow_nan=False) | st.lists(st.integers(), max_size=2),
    Kind.INT: st.text() | st.booleans() | st.floats(allow_nan=False),
    Kind.FLOAT: st.text() | st.booleans(),
    Kind.BOOL: st.text() | st.integers() | st.floats(allow_nan=False),
}


def toml_value(value: object) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    assert isinstance(value, str | int | float)
    return toml_literal(value)


@st.composite
def documents(draw: st.DrawFn) -> tuple[str, dict[str, object]]:
    """A file setting some options (either spelling) and the values it must read as."""
    names = draw(st.lists(st.sampled_from(sorted(SPECS)), unique=True))
    lines, expected = [], {}
    for name in names:
        spec = SPECS[name]
        value = draw(VALUES[spec.kind])
        key = draw(st.sampled_from([spec.key, spec.name]))
        lines.append(f"{key} = {toml_value(value)}")
        expected[name] = value
    return "\n".join(lines) + "\n", expected


@given(documents())
def test_every_option_reads_back_as_written(document: tuple[str, dict[str, object]]) -> None:
    text, expected = document
    assert parse(text) == expected


@given(st.text(min_size=1, max_size=60))
def test_any_unknown_key_is_one_line_naming_the_file(key: str) -> None:
    if key.replace("-", "_") in SPECS:
        return
    message = refusal(f"{toml_literal(key)} = 1\n")
    assert "unknown key" in message or "cannot be set in a config file" in message


@given(st.sampled_from(sorted(SPECS)), st.data())
def test_any_wrong_type_names_key_and_kind_never_the_value(name: str, data: st.DataObject) -> None:
    spec = SPECS[name]
    raw = data.draw(WRONG[spec.kind])
    if spec.kind is Kind.STR and isinstance(raw, int) and not isinstance(raw, bool):
        return
    with pytest.raises(ConfigFileError) as caught:
        check_value(spec, raw, PATH)
    message = str(caught.value)
    assert message.startswith(f"{PATH}: {spec.key} must be {spec.kind.value}, got ")
    assert "\n" not in message
    if isinstance(raw, str) and len(raw) >= 3:
        assert raw not in message.removeprefix(f"{PATH}: {spec.key} must be {spec.kind.value}")


@given(st.text())
def test_toml_literal_of_any_text_reads_back(text: str) -> None:
    assert tomllib.loads(f"k = {toml_literal(text)}")["k"] == text


@given(st.floats() | st.integers() | st.booleans())
def test_toml_literal_of_any_number_reads_back(value: float | int | bool) -> None:
    read = tomllib.loads(f"k = {toml_literal(value)}")["k"]
    assert type(read) is type(value)
    assert read == value or (math.isnan(read) and math.isnan(value))


def test_a_lone_surrogate_is_replaced_not_written() -> None:
    literal = toml_literal("a\udcffb")
    assert tomllib.loads(f"k = {literal}")["k"] == "a\ufffdb"


# -- sources, redaction and rendering ------------------------------------------------------------


def test_redaction_of_secrets_and_url_passwords() -> None:
    assert redacted(SPECS["token"], "Bot abc.def") == REDACTED
    assert redacted(SPECS["token"], None) is None
    redis = SPECS["redis"]
    assert redacted(redis, "redis://user:hunter2@r:6379/0") == "redis://user:***@r:6379/0"
    assert redacted(redis, "rediss://:hunter2@r/0") == "rediss://:***@r/0"
    assert redacted(redis, "unix:///run/r.sock?db=0&password=hunter2") == (
        "unix:///run/r.sock?db=0&password=***"
    )
    assert redacted(SPECS["shards"], "16") == "16"
    secret_key = OptionSpec("curve_secret_key", Kind.STR, "--curve-secret-key")
    assert redacted(secret_key, "Yne@$w-vo<fVvi]a<NY6T1ed:M$fCG*[IaLV{hID") == REDACTED


@given(st.text(alphabet=st.characters(blacklist_characters="/?&#"), min_size=1))
def test_redact_url_hides_any_password(password: str) -> None:
    assert redact_url(f"redis://user:{password}@host:6379/0") == "redis://user:***@host:6379/0"
    assert redact_url(f"rediss://:{password}@host/0") == "rediss://:***@host/0"
    assert redact_url(f"unix:///r.sock?db=1&password={password}&x=1#f") == (
        "unix:///r.sock?db=1&password=***&x=1#f"
    )


def test_envvar_in_use_is_the_first_set() -> None:
    token = SPECS["token"]
    assert envvar_in_use(token, {"CLUSTER_TOKEN": "b", "DISCORD_TOKEN": "a"}) == "DISCORD_TOKEN"
    assert envvar_in_use(token, {"CLUSTER_TOKEN": "b", "DISCORD_TOKEN": ""}) == "CLUSTER_TOKEN"
    assert envvar_in_use(token, {}) is None


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("--sink must be none or redis", "--sink must be none or redis (from f.toml, key sink)"),
        (
            "--sink redis needs --redis URL",
            "--sink redis needs --redis URL (from f.toml, key sink)",
        ),
        ("--hosts goes with --sink", "--hosts goes with --sink (from f.toml, key sink)"),
        (
            "Invalid value for '--pub-hwm': not an integer",
            "Invalid value for '--pub-hwm': not an integer (from CLUSTER_PUB_HWM)",
        ),
        ("--shards: not a number", "--shards: not a number"),
        ("no option named", "no option named"),
    ],
)
def test_an_error_line_says_where_its_option_came_from(message: str, expected: str) -> None:
    origins = {"--sink": "f.toml, key sink", "--pub-hwm": "CLUSTER_PUB_HWM"}
    assert with_origin(message, origins) == expected


SETTINGS = [
    Setting(SPECS["token"], "Bot.secret-token.xyz", Source.ENV, "DISCORD_TOKEN"),
    Setting(SPECS["shards"], "auto", Source.DEFAULT),
    Setting(SPECS["shard_ids"], None, Source.DEFAULT),
    Setting(SPECS["redis"], "redis://u:hunter2@r:6379/0", Source.FILE, "c.toml, key redis"),
    Setting(SPECS["hosts"], 3, Source.FLAG),
    Setting(SPECS["identify_interval"], 0.25, Source.FILE, "c.toml, key identify_interval"),
    Setting(SPECS["simulate"], False, Source.DEFAULT),
    Setting(SPECS["pub_hwm"], 77, Source.ENV, "CLUSTER_PUB_HWM"),
]


def test_render_toml_is_a_config_file_with_sources_and_no_secrets() -> None:
    text = render_toml(SETTINGS, "c.toml")
    assert "Bot.secret-token.xyz" not in text and "hunter2" not in text
    lines = text.splitlines()
    assert 'token = "***"' in lines[4] and lines[4].endswith("# env DISCORD_TOKEN")
    assert lines[6].startswith("# shard-ids (not set)") and lines[6].endswith("# default")
    assert lines[7].endswith("# file c.toml, key redis")
    assert lines[8].endswith("# flag")
    hidden_header = lines.index("# tuning and test knobs (hidden options of cluster up)")
    assert lines[hidden_header + 1].startswith("pub-hwm = 77 ")
    assert parse(text) == {
        "token": REDACTED,
        "shards": "auto",
        "redis": "redis://u:***@r:6379/0",
        "hosts": 3,
        "identify_interval": 0.25,
        "simulate": False,
        "pub_hwm": 77,
    }


def test_render_json_has_value_source_and_origin() -> None:
    document = json.loads(render_json(SETTINGS, None))
    assert document["config_file"] is None
    assert document["options"]["token"] == {
        "value": REDACTED,
        "source": "env",
        "from": "DISCORD_TOKEN",
    }
    assert document["options"]["redis"]["value"] == "redis://u:***@r:6379/0"
    assert document["options"]["shard-ids"] == {"value": None, "source": "default", "from": None}
    assert document["options"]["pub-hwm"]["value"] == 77


@st.composite
def settings_lists(draw: st.DrawFn) -> list[Setting]:
    made = []
    for spec in SPECS.values():
        value = draw(st.none() | VALUES[spec.kind])
        source = draw(st.sampled_from(Source))
        made.append(
            Setting(spec, value, source, "X" if source in (Source.ENV, Source.FILE) else None)
        )
    return made


@given(settings_lists())
def test_rendered_toml_always_reads_back_as_what_is_shown(settings: list[Setting]) -> None:
    text = render_toml(settings, "c.toml")
    expected = {s.spec.name: s.shown for s in settings if s.shown is not None}
    assert parse(text) == expected


@given(settings_lists())
def test_rendered_json_is_strict_json(settings: list[Setting]) -> None:
    document = json.loads(
        render_json(settings, "c.toml"),
        parse_constant=lambda name: pytest.fail(f"not JSON: {name}"),
    )
    assert set(document["options"]) == {s.spec.key for s in settings}
