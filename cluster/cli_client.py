"""Client-side commands of the ``cluster`` CLI: ``status`` and ``tail``.

They talk to a running cluster (its HTTP endpoint, its PUB socket) and never
start one. They register on :data:`cluster.cli.app` when this module is imported.

- ``cluster status`` reads ``GET /status`` and prints the shard table, the
  worker table and a summary line (or the JSON as is with ``--json``).
- ``cluster tail`` subscribes to the PUB socket (format v1, DESIGN.md 4.2)
  and prints one line per event: ``shard seq TOPIC summary``, or with
  ``--raw`` the gateway payload exactly as published, one per line.

Both are plain blocking programs (urllib, a blocking ZeroMQ socket): no event
loop is needed to read one document or to print a stream.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Sequence
from typing import Annotated, Any, BinaryIO, Final
from urllib.parse import urlsplit

import orjson
import typer
import zmq

from cluster.cli_app import (
    CommandFailed,
    CurveSecretOption,
    CurveServerKeyOption,
    app,
    client_curve_keys,
    usage_error,
    use_client_curve,
)
from cluster.config import DEFAULT_HEALTH, DEFAULT_PUB
from cluster.reshard import describe_progress
from protocol.errors import WireFormatError
from protocol.pubframe import PubEvent, decode_event

#: Events buffered by the SUB socket before ZeroMQ drops (a terminal is slow).
TAIL_HWM: Final = 10_000
_CONTENT_CHARS: Final = 60


# -- cluster status ---------------------------------------------------------------------------


def health_base_url(value: str) -> str:
    """``HOST:PORT`` (or a full ``http://HOST:PORT`` URL) as a base URL; ValueError if malformed."""
    text = value.strip()
    if not text:
        raise ValueError("--health must be HOST:PORT, got an empty value")
    url = text if "://" in text else f"http://{text}"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ValueError(f"--health must be HOST:PORT, got {value!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or port is None:
        raise ValueError(f"--health must be HOST:PORT, got {value!r}")
    return f"{parts.scheme}://{parts.netloc}"


def fetch_status(base_url: str, timeout_s: float, token: str | None = None) -> dict[str, Any]:
    """GET ``/status``; CommandFailed with one line when the cluster cannot be read."""
    url = f"{base_url}/status"
    hint = "is `cluster up` running? point --health or CLUSTER_HEALTH at its HTTP endpoint"
    # No proxies: the endpoint is on loopback or a private network, never behind HTTP_PROXY.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with opener.open(request, timeout=timeout_s) as response:
            raw = response.read()
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            raise CommandFailed(
                f"{url} answered HTTP 401: "
                + (
                    "the token of --http-token-file is not the cluster's"
                    if token is not None
                    else "it needs the cluster's token: pass --http-token-file FILE"
                )
            ) from None
        raise CommandFailed(f"{url} answered HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        why = reason.strerror if isinstance(reason, OSError) and reason.strerror else str(reason)
        raise CommandFailed(f"cannot reach the cluster at {url}: {why.lower()} ({hint})") from None
    except TimeoutError:
        raise CommandFailed(f"cannot reach the cluster at {url}: timed out ({hint})") from None
    except OSError as exc:
        raise CommandFailed(f"cannot reach the cluster at {url}: {exc} ({hint})") from None
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise CommandFailed(
            f"{url} did not answer JSON: is it a cluster's health endpoint?"
        ) from None
    if not isinstance(body, dict) or not isinstance(body.get("shards"), list):
        raise CommandFailed(f"{url} did not answer a cluster status (no shards list)")
    return body


def _cell(value: Any) -> str:
    return "-" if value is None else str(value)


def _latency(value: Any) -> str:
    return f"{value:.0f} ms" if isinstance(value, int | float) else "-"


def _id_ranges(ids: Sequence[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``0-2,5``."""
    if not ids:
        return "-"
    ordered = sorted(ids)
    runs: list[str] = []
    start = prev = ordered[0]
    for n in [*ordered[1:], None]:
        if n is not None and n == prev + 1:
            prev = n
            continue
        runs.append(str(start) if start == prev else f"{start}-{prev}")
        if n is not None:
            start = prev = n
    return ",".join(runs)


def _table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], right: frozenset[int]
) -> list[str]:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]

    def line(cells: Sequence[str]) -> str:
        out = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(out).rstrip()

    return [line(headers), *(line(r) for r in rows)]


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return "-"
    total = int(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def render_status(body: dict[str, Any]) -> str:
    """The shard table, the worker table and a summary line, from a ``/status`` body."""
    shards = [s for s in body.get("shards", []) if isinstance(s, dict)]
    workers = [w for w in body.get("workers", []) if isinstance(w, dict)]
    shard_rows = [
        [
            _cell(s.get("shard_id")),
            _cell(s.get("state")),
            _cell(s.get("worker_id")),
            _latency(s.get("latency_ms")),
            _cell(s.get("seq")),
            _cell(s.get("identifies")),
            _cell(s.get("resumes")),
            _cell(s.get("events")),
        ]
        for s in shards
    ]
    lines = _table(
        ["shard", "state", "worker", "latency", "seq", "identifies", "resumes", "events"],
        shard_rows,
        frozenset({0, 2, 3, 4, 5, 6, 7}),
    )
    if workers:
        worker_rows = [
            [
                _cell(w.get("worker_id")),
                _cell(w.get("pid")),
                _id_ranges([i for i in w.get("shard_ids", []) if isinstance(i, int)]),
                _cell(w.get("state", "alive" if w.get("alive") else "dead")),
                _cell(w.get("restarts")),
            ]
            for w in workers
        ]
        lines.append("")
        lines.extend(
            _table(
                ["worker", "pid", "shards", "state", "restarts"], worker_rows, frozenset({0, 1, 4})
            )
        )
    lines.append("")
    lines.append(_summary(body, shards, workers))
    reshard = body.get("reshard")
    if isinstance(reshard, dict) and reshard.get("phase") in ("starting", "abandoned"):
        lines.append(f"reshard: {describe_progress(reshard)}")
    fatal = body.get("fatal")
    if fatal:
        lines.append(f"FATAL: {fatal}")
    return "\n".join(lines)


def _summary(
    body: dict[str, Any], shards: list[dict[str, Any]], workers: list[dict[str, Any]]
) -> str:
    states = Counter(str(s.get("state")) for s in shards)
    ready = states.get("ready", 0)
    others = ", ".join(f"{n} {state}" for state, n in sorted(states.items()) if state != "ready")
    parts = [f"{ready}/{len(shards)} shards ready" + (f" ({others})" if others else "")]
    total = body.get("shards_total")
    if isinstance(total, int) and total != len(shards):
        parts.append(f"{total} in the cluster")
    if workers:
        alive = sum(1 for w in workers if w.get("alive"))
        parts.append(f"{alive}/{len(workers)} workers alive")
    relay = body.get("relay")
    if isinstance(relay, dict):
        dropped = sum(v for k, v in relay.items() if k.endswith("_dropped") and isinstance(v, int))
        parts.append(f"{_cell(relay.get('published'))} events published, {dropped} dropped")
    identify = body.get("identify")
    if isinstance(identify, dict) and "remaining" in identify:
        left = f"{identify['remaining']}"
        if "total" in identify:
            left += f"/{identify['total']}"
        parts.append(f"{left} session starts left")
    if "uptime_s" in body:
        parts.append(f"up {_duration(body['uptime_s'])}")
    return "; ".join(parts)


@app.command()
def status(
    health: Annotated[
        str,
        typer.Option(
            "--health", envvar="CLUSTER_HEALTH", help="HOST:PORT of the cluster's HTTP endpoint."
        ),
    ] = DEFAULT_HEALTH,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the /status document as JSON.")
    ] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the answer.")] = 5.0,
    http_token_file: Annotated[
        str | None,
        typer.Option(
            envvar="CLUSTER_HTTP_TOKEN_FILE",
            metavar="FILE",
            help="The cluster's bearer token (its --http-token-file), needed off loopback.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Print the shard table of a running cluster (from its /status)."""
    from cluster.curve import load_http_token

    try:
        base = health_base_url(health)
        token = None if http_token_file is None else load_http_token(http_token_file)
    except ValueError as exc:
        usage_error(str(exc))
    if not timeout > 0:
        usage_error(f"--timeout must be positive, got {timeout}")
    body = fetch_status(base, timeout, token)
    if as_json:
        print(json.dumps(body, indent=2))
    else:
        print(render_status(body))


# -- cluster tail -----------------------------------------------------------------------------


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value
    return text if len(text) <= _CONTENT_CHARS else text[: _CONTENT_CHARS - 1] + "…"


def _user_name(user: Any) -> str | None:
    if not isinstance(user, dict):
        return None
    name = user.get("username") or user.get("global_name") or user.get("id")
    return None if name is None else str(name)


def summarize(d: Any) -> str:
    """A short, one-line view of an event's ``d``: the ids and names people look for."""
    if not isinstance(d, dict):
        return _short(d)
    parts: list[str] = []
    for key, label in (
        ("guild_id", "guild"),
        ("channel_id", "channel"),
        ("id", "id"),
        ("user_id", "user"),
    ):
        value = d.get(key)
        if isinstance(value, str | int) and not isinstance(value, bool):
            parts.append(f"{label}={value}")
    for key in ("author", "user"):
        name = _user_name(d.get(key))
        if name is not None:
            parts.append(f"{key}={name}")
    for key in ("name", "status"):
        value = d.get(key)
        if isinstance(value, str):
            parts.append(f"{key}={_short(value)}")
    if isinstance(d.get("guilds"), list):
        parts.append(f"guilds={len(d['guilds'])}")
    if isinstance(d.get("shard"), list):
        parts.append(f"shard={d['shard']}")
    content = d.get("content")
    if isinstance(content, str) and content:
        parts.append(f'"{_short(content)}"')
    if not parts:
        keys = list(d)
        return "{" + ", ".join(keys[:6]) + (", ..." if len(keys) > 6 else "") + "}"
    return " ".join(parts)


def _printable(text: str) -> str:
    """Escape what would break the line (newlines, other control and separator characters)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def format_event(event: PubEvent) -> str:
    """``shard seq TOPIC summary``, always one line."""
    try:
        payload = orjson.loads(event.payload)
    except orjson.JSONDecodeError:
        summary = f"(payload is not JSON, {len(event.payload)} bytes)"
    else:
        summary = summarize(payload.get("d") if isinstance(payload, dict) else payload)
    return _printable(f"{event.shard_id} {event.seq} {event.topic} {summary}")


def _topic_filters(filters: Sequence[str] | None) -> list[bytes]:
    if not filters:
        return [b""]
    out: list[bytes] = []
    for prefix in filters:
        if not prefix.isascii():
            usage_error(f"--filter {prefix!r}: event names are ASCII")
        out.append(prefix.encode("ascii"))
    return out


def _quiet_broken_pipe() -> None:
    """``cluster tail | head``: the reader left; stop without a traceback at exit."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def stream_events(
    sock: zmq.Socket[bytes],
    out: BinaryIO,
    *,
    raw: bool,
    count: int | None,
    timeout_s: float | None,
) -> tuple[int, int]:
    """Print events until ``count`` or ``timeout_s``; return (printed, malformed)."""
    printed = malformed = 0
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while count is None or printed < count:
        if not sock.poll(0):
            out.flush()  # flush only when caught up: live in a pipe, cheap in a burst
            wait_ms = (
                None if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
            )
            if not sock.poll(wait_ms):
                break
        frames = sock.recv_multipart()
        try:
            event = decode_event(frames)
        except WireFormatError as exc:
            malformed += 1
            print(f"cluster tail: skipped a malformed message: {exc}", file=sys.stderr)
            continue
        if raw:
            out.write(event.payload + b"\n")
        else:
            out.write(format_event(event).encode("utf-8", "backslashreplace") + b"\n")
        printed += 1
    out.flush()
    return printed, malformed


@app.command()
def tail(
    pub: Annotated[
        str, typer.Option("--pub", envvar="CLUSTER_PUB", help="The cluster's PUB endpoint.")
    ] = DEFAULT_PUB,
    filters: Annotated[
        list[str] | None,
        typer.Option(
            "--filter",
            help="Only events whose name starts with PREFIX (repeatable; default: all).",
            metavar="PREFIX",
        ),
    ] = None,
    raw: Annotated[
        bool, typer.Option("--raw", help="Print each gateway payload exactly, one per line.")
    ] = False,
    count: Annotated[
        int | None, typer.Option("--count", help="Stop after N events.", metavar="N")
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option(
            "--timeout",
            help="Stop after S seconds; with --count, fewer events than N by then is an error.",
            metavar="S",
        ),
    ] = None,
    curve_server_key: CurveServerKeyOption = None,
    curve_secret: CurveSecretOption = None,
) -> None:
    """Subscribe to a cluster's event stream and print one line per event (Ctrl-C stops)."""

    if count is not None and count < 1:
        usage_error(f"--count must be at least 1, got {count}")
    if timeout is not None and not timeout > 0:
        usage_error(f"--timeout must be positive, got {timeout}")
    curve = client_curve_keys(curve_server_key, curve_secret)
    prefixes = _topic_filters(filters)
    context = zmq.Context()
    sock = context.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, TAIL_HWM)
    use_client_curve(sock, curve)
    for prefix in prefixes:
        sock.setsockopt(zmq.SUBSCRIBE, prefix)
    try:
        try:
            sock.connect(pub)
        except zmq.ZMQError as exc:
            usage_error(f"--pub {pub!r} is not a ZeroMQ endpoint ({exc}); e.g. {DEFAULT_PUB}")
        shown = ", ".join(p.decode() for p in prefixes) if filters else "all events"
        secured = ", CURVE" if curve is not None else ""
        print(f"cluster tail: subscribed to {pub} ({shown}{secured})", file=sys.stderr, flush=True)
        # SIGTERM stops like Ctrl-C: the command's work is done, not failed.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        try:
            printed, _ = stream_events(
                sock, sys.stdout.buffer, raw=raw, count=count, timeout_s=timeout
            )
        except KeyboardInterrupt:
            return
        except BrokenPipeError:
            _quiet_broken_pipe()
            return
        if count is not None and printed < count:
            raise CommandFailed(f"timed out after {timeout} s with {printed} of {count} events")
    finally:
        sock.close(0)
        context.term()
