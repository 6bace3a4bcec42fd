"""``cluster up --config FILE`` and ``cluster config``: the TOML file and where each value came from.

Owns the file's keys and types, checked against the options of ``cluster up``
(an unknown key or a wrong type is one :class:`ConfigFileError` line naming the
file and the key, never the value), the sources of the effective values (flag >
environment > file > default: click's ``ParameterSource`` order, the file
feeding the command's ``default_map``), and the effective configuration
rendered as TOML or JSON with secrets redacted. Pure but :func:`load_config_file`.
"""

from __future__ import annotations

import difflib
import enum
import json
import math
import re
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cluster.config import ConfigError, redact_url

#: What a secret is shown as.
REDACTED: Final = "***"
#: Option names whose values are secrets (the token; keys and passwords of later options).
_SECRET_NAME: Final = re.compile(r"token|secret|password|passwd", re.IGNORECASE)
#: An option as messages name it (``--pub-hwm``).
_FLAG: Final = re.compile(r"--[a-z][a-z0-9-]*")


class ConfigFileError(ConfigError):
    """A config file that cannot be used; the message names the file and the key."""


class Kind(enum.Enum):
    """What a TOML value must be for an option; the value is how messages say it."""

    STR = "a string"
    INT = "an integer"
    FLOAT = "a number"
    BOOL = "true or false"


def kind_of(annotation: object) -> Kind:
    """The kind of an option from its type hint (``int | None`` -> INT).

    Anything but a bool, an int or a float (str, Path, an Enum's choices) is read as a
    string, as the command line gives it; click converts it like a flag's value.
    """
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = inner[0] if len(inner) == 1 else str
    if annotation is bool:
        return Kind.BOOL
    if annotation is int:
        return Kind.INT
    if annotation is float:
        return Kind.FLOAT
    return Kind.STR


@dataclass(frozen=True, slots=True)
class OptionSpec:
    """One option of ``cluster up`` as the file, the environment and ``cluster config`` see it."""

    #: The parameter name (``pub_hwm``).
    name: str
    kind: Kind
    #: How the command line spells it (``--pub-hwm``).
    flag: str
    #: The environment variables read for it, in order (``DISCORD_TOKEN``, ``CLUSTER_TOKEN``).
    envvars: tuple[str, ...] = ()
    hidden: bool = False

    @property
    def key(self) -> str:
        """The key the docs and ``cluster config`` use (``pub-hwm``; ``pub_hwm`` works too)."""
        return self.name.replace("_", "-")

    @property
    def secret(self) -> bool:
        return _SECRET_NAME.search(self.name) is not None


@dataclass(frozen=True, slots=True)
class ConfigFile:
    """A checked config file: typed values by option name, and each key as it was written."""

    path: str
    values: Mapping[str, object]
    keys: Mapping[str, str]

    def origin(self, name: str) -> str:
        """Where a value of this file came from, for messages (``cluster.toml, key pub-hwm``)."""
        return f"{self.path}, key {self.keys.get(name, name)}"


def load_config_file(path: str, specs: Mapping[str, OptionSpec]) -> ConfigFile:
    """Read and check ``path`` (TOML) against ``specs``; :class:`ConfigFileError` if unusable."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigFileError(
            f"{path}: cannot read the config file: {exc.strerror or exc}"
        ) from None
    return parse_config_file(data, path, specs)


def parse_config_file(data: bytes, path: str, specs: Mapping[str, OptionSpec]) -> ConfigFile:
    """Check TOML ``data`` against ``specs``: every key an option, every value of its kind."""
    try:
        document = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigFileError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError(f"{path}: not valid TOML: {exc}") from None
    values: dict[str, object] = {}
    keys: dict[str, str] = {}
    for key, raw in document.items():
        name = key.replace("-", "_")
        spec = specs.get(name)
        if spec is None:
            raise ConfigFileError(f"{path}: {_unknown_key(key, specs)}")
        if name in keys:
            raise ConfigFileError(
                f"{path}: {keys[name]} and {key} are the same option; keep one of them"
            )
        values[name] = check_value(spec, raw, path)
        keys[name] = key
    return ConfigFile(path=path, values=values, keys=keys)


def _unknown_key(key: str, specs: Mapping[str, OptionSpec]) -> str:
    shown = key if len(key) <= 40 else key[:40] + "..."
    if key.replace("-", "_") in ("config", "config_file"):
        return f"{shown!r} cannot be set in a config file (give --config or CLUSTER_CONFIG)"
    known = [spec.key for spec in specs.values()]
    close = difflib.get_close_matches(key.replace("_", "-"), known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown key {shown!r}: not an option of cluster up{hint}"


def check_value(spec: OptionSpec, raw: object, path: str) -> object:
    """``raw`` (as tomllib read it) as the option's type, or a one-line error without the value.

    A string option also takes an integer (``shards = 16``, ``workers = 4``); a number
    option takes an integer or a float. A boolean is never a number (TOML keeps them apart).
    """
    match spec.kind:
        case Kind.BOOL if isinstance(raw, bool):
            return raw
        case Kind.INT if isinstance(raw, int) and not isinstance(raw, bool):
            return raw
        case Kind.FLOAT if isinstance(raw, int | float) and not isinstance(raw, bool):
            return float(raw)
        case Kind.STR if isinstance(raw, str):
            return raw
        case Kind.STR if isinstance(raw, int) and not isinstance(raw, bool):
            return str(raw)
    raise ConfigFileError(f"{path}: {spec.key} must be {spec.kind.value}, got {_toml_type(raw)}")


def _toml_type(raw: object) -> str:
    if isinstance(raw, bool):
        return "a boolean"
    if isinstance(raw, int):
        return "an integer"
    if isinstance(raw, float):
        return "a float"
    if isinstance(raw, str):
        return "a string"
    if isinstance(raw, dict):
        return "a table (options are top-level keys)"
    if isinstance(raw, list):
        return "an array"
    return "a date or time"


# -- where values came from ---------------------------------------------------------------------


class Source(enum.Enum):
    """Where an effective value came from, most explicit first."""

    FLAG = "flag"
    ENV = "env"
    FILE = "file"
    DEFAULT = "default"


@dataclass(frozen=True, slots=True)
class Setting:
    """One effective option value and its source."""

    spec: OptionSpec
    value: object
    source: Source
    #: The environment variable (ENV) or ``FILE, key KEY`` (FILE); None otherwise.
    origin: str | None = None

    @property
    def shown(self) -> object:
        """The value as it may be printed: secrets and URL passwords redacted."""
        return redacted(self.spec, self.value)

    def describe(self) -> str:
        """``flag``, ``env CLUSTER_PUB``, ``file cluster.toml, key pub`` or ``default``."""
        return self.source.value if self.origin is None else f"{self.source.value} {self.origin}"


def redacted(spec: OptionSpec, value: object) -> object:
    """``value`` fit to print: a secret option as ``***``, a URL without its password."""
    if value is None:
        return None
    if spec.secret:
        return REDACTED
    if isinstance(value, str) and "://" in value:
        return redact_url(value)
    return value


def envvar_in_use(spec: OptionSpec, environ: Mapping[str, str]) -> str | None:
    """The first of the option's environment variables that is set (non-empty), as click reads."""
    return next((name for name in spec.envvars if environ.get(name)), None)


def with_origin(message: str, origins: Mapping[str, str]) -> str:
    """``message`` plus where the first option it names got its value, when not from a flag.

    ``origins`` maps a flag (``--sink``) to ``CLUSTER_SINK`` or ``cluster.toml, key sink``.
    """
    for match in _FLAG.finditer(message):
        if match[0] in origins:
            return f"{message} (from {origins[match[0]]})"
    return message


# -- rendering ----------------------------------------------------------------------------------

_TOML_ESCAPES: Final = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}


def toml_literal(value: str | int | float | bool) -> str:
    """A TOML value that reads back as ``value`` (a basic string, an integer, a float, a boolean)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)  # 1.5, 1e+16, inf, nan: all TOML floats
    out = []
    for char in value:
        code = ord(char)
        if char in _TOML_ESCAPES:
            out.append(_TOML_ESCAPES[char])
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04X}")
        elif 0xD800 <= code <= 0xDFFF:  # a lone surrogate (undecodable bytes): not TOML
            out.append("\\uFFFD")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def render_toml(settings: Iterable[Setting], config_path: str | None) -> str:
    """The effective configuration as a TOML file ``--config`` reads, each source as a comment."""
    ordered = list(settings)
    lines = [
        "# cluster up: the effective configuration (flag > environment > file > default)",
        f"# config file: {config_path if config_path is not None else '(none)'}",
        "# secrets are shown as ***; an option without a value is a comment",
        "",
    ]
    hidden = [s for s in ordered if s.spec.hidden]
    for setting in (s for s in ordered if not s.spec.hidden):
        lines.append(_toml_line(setting))
    if hidden:
        lines += ["", "# tuning and test knobs (hidden options of cluster up)"]
        lines += [_toml_line(setting) for setting in hidden]
    return "\n".join(lines) + "\n"


def _toml_line(setting: Setting) -> str:
    shown = setting.shown
    if shown is None:
        assignment = f"# {setting.spec.key} (not set)"
    else:
        assert isinstance(shown, str | int | float)
        assignment = f"{setting.spec.key} = {toml_literal(shown)}"
    return f"{assignment:<44} # {setting.describe()}"


def render_json(settings: Iterable[Setting], config_path: str | None) -> str:
    """The effective configuration as one JSON object: each option's value, source and origin."""
    options: dict[str, dict[str, object]] = {}
    for setting in settings:
        shown = setting.shown
        if isinstance(shown, float) and not math.isfinite(shown):
            shown = repr(shown)  # JSON has no inf or nan
        options[setting.spec.key] = {
            "value": shown,
            "source": setting.source.value,
            "from": setting.origin,
        }
    return json.dumps({"config_file": config_path, "options": options}, indent=2) + "\n"
