"""``--config FILE``, ``CLUSTER_*`` and ``cluster config`` through the real entry point.

Most tests call :func:`cluster.cli.main` in this process (``cluster config`` only
prints, and a refused ``cluster up`` stops before it runs anything); the last ones
run ``cluster up`` and ``cluster config`` as real processes.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import tempfile
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cluster.cli import main
from tests.e2e.cluster_process import CLUSTER, clusters, wait_http

__all__ = ["clusters"]

pytestmark = pytest.mark.timeout(60)

SECRET = "MTIzNDU2Nzg5.file-secret.token-xyz"
REDIS_PASSWORD = "hunter2-redis-pw"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No CLUSTER_* or DISCORD_TOKEN from the machine running the tests."""
    for name in list(os.environ):
        if name.startswith("CLUSTER_") or name == "DISCORD_TOKEN":
            monkeypatch.delenv(name)
    yield


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``cluster ARGS`` in this process: exit code, stdout, stderr."""
    with pytest.raises(SystemExit) as exited:
        main(list(args))
    code = exited.value.code
    assert isinstance(code, int)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def effective(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, dict[str, Any]]:
    code, out, err = run(capsys, "config", "--format", "json", *args)
    assert (code, err) == (0, "")
    options: dict[str, dict[str, Any]] = json.loads(out)["options"]
    return options


def error_line(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    code, out, err = run(capsys, *args)
    assert code == 2, err
    assert out == ""
    (line,) = err.splitlines()
    assert line.startswith("cluster: error: ")
    return line.removeprefix("cluster: error: ")


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


# -- precedence: flag > environment > file > default ---------------------------------------------

# (key, flag, environment variable, [flag value, env value, file TOML value], expected values,
#  the default)
PRECEDENCE = [
    # str with an explicit variable
    (
        "pub",
        "--pub",
        "CLUSTER_PUB",
        ["ipc:///tmp/f", "ipc:///tmp/e", '"ipc:///tmp/file"'],
        ["ipc:///tmp/f", "ipc:///tmp/e", "ipc:///tmp/file"],
        "tcp://127.0.0.1:5555",
    ),
    # str, default None, variable CLUSTER_<NAME> added by this change
    (
        "shard-ids",
        "--shard-ids",
        "CLUSTER_SHARD_IDS",
        ["0-1", "0-2", '"0-3"'],
        ["0-1", "0-2", "0-3"],
        None,
    ),
    # str option given an integer in the file
    ("workers", "--workers", "CLUSTER_WORKERS", ["3", "2", "1"], ["3", "2", "1"], None),
    # int
    (
        "sink-maxlen",
        "--sink-maxlen",
        "CLUSTER_SINK_MAXLEN",
        ["11", "22", "33"],
        [11, 22, 33],
        0,
    ),
    # int, hidden
    ("pub-hwm", "--pub-hwm", "CLUSTER_PUB_HWM", ["11", "22", "33"], [11, 22, 33], 10_000),
    # float
    (
        "identify-interval",
        "--identify-interval",
        "CLUSTER_IDENTIFY_INTERVAL",
        ["0.5", "1.5", "2.5"],
        [0.5, 1.5, 2.5],
        5.0,
    ),
    # float, hidden, an integer in the file
    (
        "lease-ttl",
        "--lease-ttl",
        "CLUSTER_LEASE_TTL",
        ["11", "12.5", "13"],
        [11.0, 12.5, 13.0],
        10.0,
    ),
    # str, hidden
    (
        "log-level",
        "--log-level",
        "CLUSTER_LOG_LEVEL",
        ["ERROR", "DEBUG", '"WARNING"'],
        ["ERROR", "DEBUG", "WARNING"],
        "INFO",
    ),
]


@pytest.mark.parametrize(("key", "flag", "envvar", "given", "values", "default"), PRECEDENCE)
@pytest.mark.parametrize("level", ["flag", "env", "file", "default"])
def test_flag_beats_environment_beats_file_beats_default(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    key: str,
    flag: str,
    envvar: str,
    given: list[str],
    values: list[Any],
    default: Any,
    level: str,
) -> None:
    """Every source at or below ``level`` is set: the highest one wins."""
    order = ["flag", "env", "file", "default"]
    args = ["--simulate"]
    depth = order.index(level)
    if depth <= 2:
        # the file spells the key with underscores when the flag is tested, dashes otherwise
        file_key = key.replace("-", "_") if level == "flag" else key
        args += ["--config", write(tmp_path / "c.toml", f"{file_key} = {given[2]}\n")]
    if depth <= 1:
        monkeypatch.setenv(envvar, given[1])
    if depth == 0:
        args += [flag, given[0]]
    option = effective(capsys, *args)[key]
    expected_value = default if level == "default" else values[depth]
    assert option["value"] == expected_value
    assert type(option["value"]) is type(expected_value)
    assert option["source"] == level
    expected_from = {
        "flag": None,
        "env": envvar,
        "file": f"{tmp_path / 'c.toml'}, key {key}",
        "default": None,
    }[level]
    assert option["from"] == expected_from


@pytest.mark.parametrize(
    ("file_value", "env_value", "flag", "expected", "source"),
    [
        (None, None, False, False, "default"),
        ("true", None, False, True, "file"),
        ("true", "false", False, False, "env"),
        ("false", "1", False, True, "env"),
        ("false", "no", True, True, "flag"),
    ],
)
def test_a_boolean_flag_from_each_source(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    file_value: str | None,
    env_value: str | None,
    flag: bool,
    expected: bool,
    source: str,
) -> None:
    args = ["--token", "flag-token"]
    if file_value is not None:
        args += ["--config", write(tmp_path / "c.toml", f"simulate = {file_value}\n")]
    if env_value is not None:
        monkeypatch.setenv("CLUSTER_SIMULATE", env_value)
    if flag:
        args.append("--simulate")
    option = effective(capsys, *args)["simulate"]
    assert (option["value"], option["source"]) == (expected, source)


def test_auto_reshard_and_its_interval_from_each_source(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    options = effective(capsys, "--simulate")
    assert options["auto-reshard"] == {"value": False, "source": "default", "from": None}
    assert options["auto-reshard-interval"]["value"] == 3600.0
    path = write(tmp_path / "c.toml", "auto-reshard = true\nauto-reshard-interval = 60\n")
    options = effective(capsys, "--simulate", "--config", path)
    assert options["auto-reshard"] == {
        "value": True,
        "source": "file",
        "from": f"{path}, key auto-reshard",
    }
    assert options["auto-reshard-interval"]["value"] == 60.0
    monkeypatch.setenv("CLUSTER_AUTO_RESHARD", "false")
    option = effective(capsys, "--simulate", "--config", path)["auto-reshard"]
    assert (option["value"], option["source"], option["from"]) == (
        False,
        "env",
        "CLUSTER_AUTO_RESHARD",
    )
    option = effective(capsys, "--simulate", "--config", path, "--auto-reshard")["auto-reshard"]
    assert (option["value"], option["source"]) == (True, "flag")
    bad = write(tmp_path / "bad.toml", "auto-reshard-interval = 0\n")
    assert error_line(capsys, "up", "--simulate", "--config", bad) == (
        f"--auto-reshard-interval must be a number of seconds > 0, got 0.0 "
        f"(from {bad}, key auto-reshard-interval)"
    )


@pytest.mark.parametrize(
    ("in_file", "env", "flag", "source", "origin"),
    [
        (True, {"DISCORD_TOKEN": "env-token"}, True, "flag", None),
        (True, {"DISCORD_TOKEN": "env-token"}, False, "env", "DISCORD_TOKEN"),
        (True, {"CLUSTER_TOKEN": "env-token"}, False, "env", "CLUSTER_TOKEN"),
        (True, {}, False, "file", "{file}, key token"),
    ],
)
def test_the_token_from_each_source_is_never_printed(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    in_file: bool,
    env: dict[str, str],
    flag: bool,
    source: str,
    origin: str | None,
) -> None:
    path = write(tmp_path / "c.toml", f'token = "{SECRET}"\n')
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    args = ["--config", path, *(["--token", "flag-token"] if flag else [])]
    option = effective(capsys, *args)["token"]
    assert option == {
        "value": "***",
        "source": source,
        "from": None if origin is None else origin.format(file=path),
    }
    code, out, err = run(capsys, "config", *args)
    assert code == 0
    assert SECRET not in out + err and "env-token" not in out + err
    assert "flag-token" not in out + err


def test_every_option_of_up_has_a_variable(capsys: pytest.CaptureFixture[str]) -> None:
    """The help lists one; the ones that existed keep their names."""
    code, out, _ = run(capsys, "up", "--help")
    assert code == 0
    for name in (
        "DISCORD_TOKEN",
        "CLUSTER_CONFIG",
        "CLUSTER_REDIS",
        "CLUSTER_PUB",
        "CLUSTER_CONTROL",
        "CLUSTER_HEALTH",
        "CLUSTER_STATE_DIR",
        "CLUSTER_API_URL",
        "CLUSTER_SINK",
        "CLUSTER_HOSTS",
        "CLUSTER_HOST_INDEX",
        "CLUSTER_SHARDS",
        "CLUSTER_SIMULATE",
        "CLUSTER_SINK_RETENTION",
        "CLUSTER_AUTO_RESHARD",
    ):
        assert name in out, name
    options = effective(capsys, "--simulate")
    assert {"pub-hwm", "lease-ttl", "simulate-shards", "log-level"} <= set(options)
    assert {"auto-reshard", "auto-reshard-interval"} <= set(options)
    assert "config" not in options and "config-file" not in options


def test_config_comes_from_cluster_config(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CLUSTER_CONFIG", write(tmp_path / "c.toml", "simulate = true\n"))
    assert effective(capsys)["simulate"]["source"] == "file"


# -- one-line errors ------------------------------------------------------------------------------


def test_an_unknown_key_is_one_line_naming_file_and_key(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = write(tmp_path / "c.toml", 'simulate = true\nshard-idz = "0-3"\n')
    for command in ("up", "config"):
        assert error_line(capsys, command, "--config", path) == (
            f"{path}: unknown key 'shard-idz': not an option of cluster up; "
            "did you mean 'shard-ids'?"
        )


def test_a_wrong_type_names_file_key_and_type(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = write(tmp_path / "c.toml", 'simulate = true\npub-hwm = "many"\n')
    assert error_line(capsys, "up", "--config", path) == (
        f"{path}: pub-hwm must be an integer, got a string"
    )


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('sink = "kafka"', "--sink must be none or redis, got 'kafka' (from {file}, key sink)"),
        ("pub-hwm = 0", "--pub-hwm must be at least 1 (from {file}, key pub-hwm)"),
        (
            'health = "nowhere"',
            "--health must be host:port, e.g. 127.0.0.1:8080, got 'nowhere' "
            "(from {file}, key health)",
        ),
        (
            'compress = "gzip"',
            "--compress must be zlib-stream, zstd-stream or none, got 'gzip' "
            "(from {file}, key compress)",
        ),
    ],
)
def test_a_bad_value_in_the_file_names_file_and_key(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, line: str, message: str
) -> None:
    path = write(tmp_path / "c.toml", f"simulate = true\n{line}\n")
    expected = message.format(file=path)
    assert error_line(capsys, "up", "--config", path) == expected
    assert error_line(capsys, "config", "--config", path) == expected


def test_a_bad_value_in_the_environment_names_the_variable(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLUSTER_SINK", "kafka")
    assert error_line(capsys, "up", "--simulate") == (
        "--sink must be none or redis, got 'kafka' (from CLUSTER_SINK)"
    )
    monkeypatch.delenv("CLUSTER_SINK")
    monkeypatch.setenv("CLUSTER_PUB_HWM", "many")
    line = error_line(capsys, "up", "--simulate")
    assert "--pub-hwm" in line and line.endswith("(from CLUSTER_PUB_HWM)")


def test_a_bad_value_on_the_command_line_says_nothing_more(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = write(tmp_path / "c.toml", 'sink = "redis"\n')
    assert error_line(capsys, "up", "--simulate", "--config", path, "--sink", "kafka") == (
        "--sink must be none or redis, got 'kafka'"
    )


def test_a_missing_or_broken_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.toml")
    assert error_line(capsys, "up", "--config", missing) == (
        f"{missing}: cannot read the config file: No such file or directory"
    )
    broken = write(tmp_path / "broken.toml", f'token = "{SECRET}\n')
    line = error_line(capsys, "up", "--config", broken)
    assert line.startswith(f"{broken}: not valid TOML: ") and "line 1" in line
    assert SECRET not in line


def test_a_bad_token_in_the_file_is_refused_without_showing_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = write(tmp_path / "c.toml", 'token = "has spaces in it"\n')
    line = error_line(capsys, "up", "--config", path)
    assert "has spaces" not in line and line.endswith(f"(from {path}, key token)")


def test_config_of_a_bad_configuration_is_the_error_of_up(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert error_line(capsys, "config") == error_line(capsys, "up")
    assert error_line(capsys, "config", "--simulate", "--format", "yaml") == (
        "--format must be toml or json, got 'yaml'"
    )


# -- cluster config: redacted, and itself a config file -------------------------------------------


def test_config_output_redacts_and_reads_back_as_a_config_file(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = write(
        tmp_path / "c.toml",
        f'token = "{SECRET}"\n'
        f'redis = "redis://bot:{REDIS_PASSWORD}@127.0.0.1:6379/0"\n'
        'shard-ids = "auto"\nhosts = 2\nsink = "redis"\npub_hwm = 500\n',
    )
    monkeypatch.setenv("CLUSTER_LEASE_TTL", "20")
    code, out, err = run(capsys, "config", "--config", path, "--identify-interval", "0.5")
    assert (code, err) == (0, "")
    assert SECRET not in out and REDIS_PASSWORD not in out
    lines = out.splitlines()
    assert f"# config file: {path}" in lines
    assert any(
        line.startswith('token = "***"') and line.endswith(f"# file {path}, key token")
        for line in lines
    )
    assert any(line.startswith('redis = "redis://bot:***@127.0.0.1:6379/0"') for line in lines)
    assert any(
        line.startswith("identify-interval = 0.5") and line.endswith("# flag") for line in lines
    )
    assert any(
        line.startswith("lease-ttl = 20.0") and line.endswith("# env CLUSTER_LEASE_TTL")
        for line in lines
    )
    assert any(line.startswith('shards = "auto"') and line.endswith("# default") for line in lines)
    document = tomllib.loads(out)
    assert document["pub-hwm"] == 500 and document["hosts"] == 2

    # the output is a config file: read back, every value is the same, now from the file
    again = write(tmp_path / "again.toml", out)
    first = effective(capsys, "--config", path, "--identify-interval", "0.5")
    monkeypatch.delenv("CLUSTER_LEASE_TTL")
    second = effective(capsys, "--config", again)
    assert {k: v["value"] for k, v in first.items()} == {k: v["value"] for k, v in second.items()}
    assert {v["source"] for k, v in second.items() if v["value"] is not None} == {"file"}


# -- the example file ----------------------------------------------------------------------------

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "cluster.example.toml"


def test_the_example_file_is_a_valid_configuration(capsys: pytest.CaptureFixture[str]) -> None:
    options = effective(capsys, "--config", str(EXAMPLE), "--simulate")
    assert options["pub"] == {
        "value": "tcp://127.0.0.1:5555",
        "source": "file",
        "from": f"{EXAMPLE}, key pub",
    }


def test_every_commented_option_of_the_example_is_an_option(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Uncommented one at a time, no line is an unknown key or a wrong type."""
    lines = [
        line.removeprefix("# ")
        for line in EXAMPLE.read_text().splitlines()
        if re.match(r"# [a-z][a-z_-]* = ", line)
    ]
    assert len(lines) >= 12
    for line in lines:
        path = write(tmp_path / "one.toml", f"{line}\n")
        code, _, err = run(capsys, "config", "--simulate", "--config", path)
        assert code in (0, 2), err
        # a key or type error starts with the file's name; a combination refused by
        # `cluster up` (host-index without redis) ends with "(from FILE, key KEY)"
        assert not err.startswith(f"cluster: error: {path}:"), err


# -- real processes -------------------------------------------------------------------------------


async def run_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *CLUSTER,
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    out, err = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_a_real_process_refuses_a_bad_file_with_one_line_and_status_2(
    tmp_path: Path,
) -> None:
    path = write(tmp_path / "c.toml", f'token = "{SECRET}"\nworkerz = 2\n')
    code, out, err = await run_cli("up", "--config", path)
    assert (code, out) == (2, "")
    assert err.splitlines() == [
        f"cluster: error: {path}: unknown key 'workerz': not an option of cluster up; "
        "did you mean 'workers'?"
    ]


async def test_a_real_cluster_config_prints_no_secret(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", f'redis = "redis://:{REDIS_PASSWORD}@r:6379/0"\n')
    code, out, err = await run_cli(
        "config", "--config", path, env={"DISCORD_TOKEN": SECRET, "CLUSTER_PUB_HWM": "42"}
    )
    assert (code, err) == (0, "")
    assert SECRET not in out and REDIS_PASSWORD not in out
    assert 'token = "***"' in out and "# env DISCORD_TOKEN" in out
    assert tomllib.loads(out)["pub-hwm"] == 42


StartCluster = Callable[..., Any]


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short directory for ipc:// paths (a socket path must stay under 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="tc-cfg-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def test_up_runs_with_the_settings_of_the_file(
    clusters: StartCluster, short_dir: Path
) -> None:
    """Endpoints, hidden options and --simulate from the file; a flag still wins over it."""
    path = write(
        short_dir / "cluster.toml",
        "simulate = true\n"
        'health = "127.0.0.1:0"\n'
        f'pub = "ipc://{short_dir}/pub"\n'
        f'control = "ipc://{short_dir}/control"\n'
        f'state-dir = "{short_dir}/state"\n'
        "simulate-shards = 2\n"
        "simulate_max_concurrency = 2\n"
        'log-format = "text"\n'  # the harness passes --log-format json: the flag wins
        "report-interval = 0.2\n",
    )
    run = await clusters("--config", path)
    listening = await run.listening()
    assert listening["pub"] == f"ipc://{short_dir}/pub"
    assert listening["control"] == f"ipc://{short_dir}/control"
    assert not listening["http"].endswith(":8080")
    health = await wait_http(f"{listening['http']}/health", lambda status, _: status == 200, 20)
    assert (health["shards_ready"], health["shards_total"]) == (2, 2)
    run.signal(signal.SIGINT)
    assert await run.wait(10) == 0
    assert (short_dir / "state" / "sessions.json").exists()
