"""``cluster status`` and ``cluster tail`` as subprocesses against a real HTTP endpoint and PUB socket."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
import zmq
import zmq.asyncio
from hypothesis import given
from hypothesis import strategies as st

from cluster.cli import main
from cluster.cli_client import format_event, health_base_url, render_status
from cluster.http import HealthServer
from cluster.status import ClusterStatus
from cluster.workers import WorkerState
from protocol.pubframe import PubEvent, decode_event, event_frames
from protocol.session import ShardPhase
from tests.conftest import SimFactory

pytestmark = pytest.mark.timeout(60)

CLI = [sys.executable, "-c", "from cluster.cli import main; main()"]


@dataclass
class Ran:
    code: int
    out: bytes
    err: str

    @property
    def lines(self) -> list[str]:
        return self.out.decode().splitlines()


async def run_cli(*args: str, env: dict[str, str] | None = None, within_s: float = 20) -> Ran:
    process = await asyncio.create_subprocess_exec(
        *CLI,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    try:
        async with asyncio.timeout(within_s):
            out, err = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return Ran(process.returncode, out, err.decode())


# -- cluster status -----------------------------------------------------------------------


def populated_status() -> ClusterStatus:
    budget = {"remaining": 993, "total": 1000, "exhausted": False, "reset_after_s": 5000.0}
    status = ClusterStatus(6, [(0, (0, 1, 2)), (1, (3, 4, 5))], identify_snapshot=lambda: budget)
    states = ["ready", "ready", "resuming", "ready", "fatal", "awaiting_permit"]
    for shard_id, state in enumerate(states):
        shard = status.shards[shard_id]
        shard.state = ShardPhase(state)
        shard.latency_ms = 40.0 + shard_id if state == "ready" else None
        shard.seq = 1000 + shard_id
        shard.identifies = 1
        shard.resumes = shard_id % 2
        shard.events = 999 + shard_id
    status.workers[0].pid, status.workers[0].state = 4242, WorkerState.RUNNING
    status.workers[1].pid, status.workers[1].state = 4343, WorkerState.BACKOFF
    status.workers[1].restarts = 2
    status.relay.published = 5994
    status.relay.pub_dropped = 7
    return status


@pytest.fixture
async def health() -> AsyncIterator[HealthServer]:
    server = HealthServer(populated_status(), "127.0.0.1", 0)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def test_status_prints_the_shard_table_the_worker_table_and_a_summary(
    health: HealthServer,
) -> None:
    ran = await run_cli("status", "--health", f"127.0.0.1:{health.port}")
    assert ran.code == 0, ran.err
    lines = ran.lines
    assert lines[0].split() == [
        "shard", "state", "worker", "latency", "seq", "identifies", "resumes", "events",
    ]  # fmt: skip
    rows = [line.split() for line in lines[1:7]]
    assert [r[0] for r in rows] == ["0", "1", "2", "3", "4", "5"]
    assert rows[0] == ["0", "ready", "0", "40", "ms", "1000", "1", "0", "999"]
    assert rows[2] == ["2", "resuming", "0", "-", "1002", "1", "0", "1001"]
    assert rows[4][:3] == ["4", "fatal", "1"]
    workers = [line.split() for line in lines[8:11]]
    assert workers[0] == ["worker", "pid", "shards", "state", "restarts"]
    assert workers[1] == ["0", "4242", "0-2", "running", "0"]
    assert workers[2] == ["1", "4343", "3-5", "backoff", "2"]
    summary = lines[-1]
    assert summary.startswith("3/6 shards ready (1 awaiting_permit, 1 fatal, 1 resuming)")
    assert "1/2 workers alive" in summary and "5994 events published, 7 dropped" in summary
    assert "993/1000 session starts left" in summary


async def test_status_reads_the_endpoint_from_cluster_health_and_prints_json(
    health: HealthServer,
) -> None:
    ran = await run_cli("status", "--json", env={"CLUSTER_HEALTH": f"127.0.0.1:{health.port}"})
    assert ran.code == 0, ran.err
    body = orjson.loads(ran.out)
    expected = populated_status().to_status_json()
    body.pop("uptime_s")
    expected.pop("uptime_s")
    assert body == expected


@pytest.fixture
def refusing_port() -> Iterator[int]:
    """A port that is bound but not listening: connections are refused, and nobody can take it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


async def test_status_of_an_unreachable_cluster_is_one_line_and_exit_1(refusing_port: int) -> None:
    ran = await run_cli("status", "--health", f"127.0.0.1:{refusing_port}")
    assert ran.code == 1
    assert ran.out == b""
    (line,) = ran.err.splitlines()
    assert line.startswith(
        f"cluster: error: cannot reach the cluster at http://127.0.0.1:{refusing_port}/status"
    )
    assert "connection refused" in line and "CLUSTER_HEALTH" in line


async def test_status_of_something_that_is_not_a_cluster(sim_factory: SimFactory) -> None:
    sim = await sim_factory()
    ran = await run_cli("status", "--health", f"127.0.0.1:{sim.port}")
    assert ran.code == 1
    (line,) = ran.err.splitlines()
    assert line.startswith("cluster: error: http://127.0.0.1:") and "HTTP 404" in line


def run_in_process(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """The real entry point, in this process: for refusals that never reach the network."""
    with pytest.raises(SystemExit) as exited:
        main(list(args))
    code = exited.value.code
    assert isinstance(code, int)
    return code, capsys.readouterr().err


def test_a_bad_health_value_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run_in_process(capsys, "status", "--health", "localhost")
    assert code == 2
    assert err.splitlines() == ["cluster: error: --health must be HOST:PORT, got 'localhost'"]


@pytest.mark.parametrize(
    ("value", "url"),
    [
        ("127.0.0.1:8080", "http://127.0.0.1:8080"),
        ("[::1]:9000", "http://[::1]:9000"),
        ("http://10.0.0.5:81/", "http://10.0.0.5:81"),
        ("host.internal:8080", "http://host.internal:8080"),
    ],
)
def test_health_addresses(value: str, url: str) -> None:
    assert health_base_url(value) == url


@pytest.mark.parametrize("value", ["", "8080", "127.0.0.1", "127.0.0.1:99999", "ftp://a:1", ":80"])
def test_bad_health_addresses(value: str) -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        health_base_url(value)


def test_render_status_survives_a_sparse_document() -> None:
    text = render_status({"shards": [{"shard_id": 0}], "workers": []})
    assert text.splitlines()[1].split() == ["0", "-", "-", "-", "-", "-", "-", "-"]
    assert text.splitlines()[-1].startswith("0/1 shards ready (1 None)")


# -- cluster tail -------------------------------------------------------------------------


@dataclass
class Publisher:
    """An XPUB: a PUB to the subscriber, and it tells us when a subscription arrived."""

    sock: zmq.asyncio.Socket
    endpoint: str
    seq: int = 0

    async def wait_subscribed(self, *prefixes: bytes) -> None:
        wanted = {b"\x01" + p for p in prefixes}
        async with asyncio.timeout(15):
            while wanted:
                wanted.discard(await self.sock.recv())

    async def publish(
        self, topic: str, shard_id: int, d: Any, payload: bytes | None = None
    ) -> bytes:
        self.seq += 1
        if payload is None:
            payload = orjson.dumps({"op": 0, "s": self.seq, "t": topic, "d": d})
        await self.sock.send_multipart(event_frames(topic.encode(), shard_id, self.seq, payload))
        return payload


@pytest.fixture
async def publisher() -> AsyncIterator[Publisher]:
    context = zmq.asyncio.Context()
    sock = context.socket(zmq.XPUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind("tcp://127.0.0.1:0")
    try:
        yield Publisher(sock, sock.getsockopt_string(zmq.LAST_ENDPOINT))
    finally:
        sock.close(0)
        context.term()


async def start_tail(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *CLI, "tail", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )


@contextlib.asynccontextmanager
async def tailing(*args: str) -> AsyncIterator[asyncio.subprocess.Process]:
    process = await start_tail(*args)
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def finish(process: asyncio.subprocess.Process) -> Ran:
    async with asyncio.timeout(15):
        out, err = await process.communicate()
    assert process.returncode is not None
    return Ran(process.returncode, out, err.decode())


def message(n: int) -> dict[str, Any]:
    return {
        "id": str(1000 + n),
        "guild_id": "41771983423143937",
        "channel_id": "41771983423143938",
        "author": {"id": "1", "username": "ada"},
        "content": f"hello {n}\nsecond line",
    }


async def test_tail_prints_only_matching_events_and_stops_after_count(publisher: Publisher) -> None:
    async with tailing("--pub", publisher.endpoint, "--filter", "MESSAGE_", "--count", "5") as tail:
        await publisher.wait_subscribed(b"MESSAGE_")
        expected: list[str] = []
        mix = [
            "GUILD_CREATE",
            "MESSAGE_CREATE",
            "PRESENCE_UPDATE",
            "MESSAGE_UPDATE",
            "TYPING_START",
        ]
        for n in range(4):
            for topic in mix:
                payload = await publisher.publish(topic, n % 3, message(n))
                if topic.startswith("MESSAGE_") and len(expected) < 5:
                    frames = event_frames(topic.encode(), n % 3, publisher.seq, payload)
                    expected.append(format_event(decode_event(frames)))
        ran = await finish(tail)
    assert ran.code == 0, ran.err
    assert ran.lines == expected
    first = ran.lines[0].split(" ", 3)
    assert first[:3] == ["0", "2", "MESSAGE_CREATE"]
    assert first[3] == (
        'guild=41771983423143937 channel=41771983423143938 id=1000 author=ada "hello 0\\nsecond line"'
    )


async def test_tail_raw_prints_each_payload_exactly(publisher: Publisher) -> None:
    payloads = [
        b'{"op":0,"s":1,"t":"MESSAGE_CREATE","d":{"content":"caf\\u00e9 \xe2\x9c\x93","id":"1"}}',
        b'{"t":"MESSAGE_DELETE","s":2,"op":0,"d":{"id":"2"}, "spacing" : [1, 2]}',
        b'{"op":0,"s":3,"t":"READY","d":{"session_id":"s"}}',
        b'{"op":0,"s":4,"t":"MESSAGE_UPDATE","d":{"id":"4","content":"\\"quoted\\""}}',
    ]
    async with tailing(
        "--pub", publisher.endpoint, "--raw", "--filter", "MESSAGE_", "--filter", "READY",
        "--count", "4",
    ) as tail:  # fmt: skip
        await publisher.wait_subscribed(b"MESSAGE_", b"READY")
        await publisher.publish("GUILD_CREATE", 0, {}, b'{"not":"shown"}')
        for payload in payloads:
            topic = orjson.loads(payload)["t"]
            await publisher.publish(topic, 1, None, payload)
        ran = await finish(tail)
    assert ran.code == 0, ran.err
    assert ran.out == b"".join(p + b"\n" for p in payloads)


async def test_tail_skips_malformed_messages_and_stops_on_sigint(publisher: Publisher) -> None:
    async with tailing("--pub", publisher.endpoint) as tail:
        await publisher.wait_subscribed(b"")
        await publisher.sock.send_multipart([b"MESSAGE_CREATE", b"not a header"])  # 2 frames
        await publisher.sock.send_multipart([b"MESSAGE_CREATE", b"[1]", b"{}"])  # not an object
        await publisher.publish("READY", 0, {"guilds": [{"id": "1"}, {"id": "2"}], "shard": [0, 1]})
        assert tail.stdout is not None
        async with asyncio.timeout(15):
            line = await tail.stdout.readline()
        assert line == b"0 1 READY guilds=2 shard=[0, 1]\n"
        tail.send_signal(signal.SIGINT)
        ran = await finish(tail)
    assert ran.code == 0
    assert ran.err.count("skipped a malformed message") == 2
    assert "3 frames" in ran.err and "JSON object" in ran.err


async def test_tail_sigterm_is_a_clean_stop(publisher: Publisher) -> None:
    async with tailing("--pub", publisher.endpoint) as tail:
        await publisher.wait_subscribed(b"")
        tail.send_signal(signal.SIGTERM)
        ran = await finish(tail)
    assert ran.code == 0
    assert ran.out == b""


async def test_tail_timeout_before_count_is_an_error(publisher: Publisher) -> None:
    async with tailing(
        "--pub", publisher.endpoint, "--count", "3", "--timeout", "0.5", "--filter", "MESSAGE_"
    ) as tail:
        await publisher.wait_subscribed(b"MESSAGE_")
        await publisher.publish("MESSAGE_CREATE", 0, message(1))
        ran = await finish(tail)
    assert ran.code == 1
    assert len(ran.lines) == 1
    assert ran.err.splitlines()[-1] == "cluster: error: timed out after 0.5 s with 1 of 3 events"


async def test_tail_reads_the_endpoint_from_cluster_pub(publisher: Publisher) -> None:
    process = await asyncio.create_subprocess_exec(
        *CLI, "tail", "--count", "1",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "CLUSTER_PUB": publisher.endpoint},
    )  # fmt: skip
    try:
        await publisher.wait_subscribed(b"")
        await publisher.publish("GUILD_DELETE", 7, {"id": "5", "unavailable": True})
        ran = await finish(process)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert ran.code == 0, ran.err
    assert ran.lines == ["7 1 GUILD_DELETE id=5"]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--pub", "nonsense"], "is not a ZeroMQ endpoint"),
        (["--count", "0"], "--count must be at least 1"),
        (["--timeout", "-1"], "--timeout must be positive"),
        (["--filter", "MESSAGE_É"], "event names are ASCII"),
    ],
)
def test_tail_bad_options_are_usage_errors(
    capsys: pytest.CaptureFixture[str], args: list[str], words: str
) -> None:
    code, err = run_in_process(capsys, "tail", *args)
    assert code == 2
    assert err.splitlines()[-1].startswith("cluster: error:") and words in err


@pytest.mark.parametrize(
    ("d", "summary"),
    [
        ({"user": {"id": "9", "username": "bo"}, "status": "idle"}, "user=bo status=idle"),
        ({"name": "Guild\nName", "id": "3"}, "id=3 name=Guild\\nName"),
        ({"a": 1, "b": 2}, "{a, b}"),
        (True, "true"),
        ({"content": "x" * 100}, '"' + "x" * 59 + '…"'),
    ],
)
def test_summaries(d: Any, summary: str) -> None:
    event = PubEvent("X", 0, 1, {}, orjson.dumps({"op": 0, "d": d}))
    assert format_event(event) == f"0 1 X {summary}"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.floats() | st.text(max_size=80),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=6)
    ),
    max_leaves=25,
)


@given(
    st.one_of(
        st.binary(max_size=200),
        st.builds(lambda d: orjson.dumps({"op": 0, "d": d}), json_values),
        st.builds(
            lambda d: orjson.dumps({"op": 0, "d": d}),
            st.fixed_dictionaries(
                {},
                optional={
                    "author": st.fixed_dictionaries({"username": st.text(max_size=20)}),
                    "guild_id": st.text(max_size=20),
                    "content": st.text(max_size=20),
                }
                | {
                    k: json_values
                    for k in (
                        "guild_id",
                        "channel_id",
                        "id",
                        "user_id",
                        "author",
                        "user",
                        "name",
                        "status",
                        "guilds",
                        "shard",
                        "content",
                    )
                },
            ),
        ),
    ),
    st.integers(0, 2**32),
    st.integers(0, 2**63),
)
def test_any_payload_formats_as_one_line(payload: bytes, shard_id: int, seq: int) -> None:
    event = PubEvent("MESSAGE_CREATE", shard_id, seq, {}, payload)
    line = format_event(event)
    assert line.startswith(f"{shard_id} {seq} MESSAGE_CREATE ")
    assert len(line.splitlines()) == 1
