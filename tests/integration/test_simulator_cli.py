"""``cluster simulate`` as a real process: prints its URLs, serves, exits 0 on a signal."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.conftest import RawClient

CLI = [sys.executable, "-m", "cluster"]


@pytest.fixture
async def processes() -> AsyncIterator[list[asyncio.subprocess.Process]]:
    started: list[asyncio.subprocess.Process] = []
    try:
        yield started
    finally:
        for proc in started:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def read_urls(proc: asyncio.subprocess.Process) -> dict[str, str]:
    assert proc.stdout is not None
    urls: dict[str, str] = {}
    async with asyncio.timeout(15):
        while "gateway" not in urls:
            line = (await proc.stdout.readline()).decode()
            assert line, "the simulator exited before printing its URLs"
            match = re.match(r"(REST|gateway|admin):\s+(\S+)", line)
            if match:
                urls[match.group(1)] = match.group(2)
    return urls


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
async def test_simulate_serves_until_a_signal_then_exits_0(
    processes: list[asyncio.subprocess.Process], signum: signal.Signals
) -> None:
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        "simulate",
        "--port",
        "0",
        "--shards",
        "16",
        "--max-concurrency",
        "4",
        "--heartbeat-interval",
        "500",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    processes.append(proc)
    urls = await read_urls(proc)
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/api/v10", urls["REST"])
    assert re.fullmatch(r"ws://127\.0\.0\.1:\d+/", urls["gateway"])
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            urls["REST"] + "/gateway/bot", headers={"Authorization": "Bot simulated-token"}
        ) as resp,
    ):
        body = await resp.json()
    assert body["shards"] == 16
    assert body["session_start_limit"]["max_concurrency"] == 4
    assert urls["gateway"].startswith(body["url"])
    client = await RawClient.connect(urls["gateway"])
    try:
        hello = await client.hello()
        assert hello["d"]["heartbeat_interval"] == 500
        await client.identify(shard=[5, 16])
        ready = (await client.recv_event("READY"))["d"]
        assert ready["shard"] == [5, 16]
    finally:
        await client.close()
    proc.send_signal(signum)
    async with asyncio.timeout(10):
        code = await proc.wait()
    assert code == 0


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--shards", "0"], "shards"),
        (["--port", "70000"], "port"),
        (["--shards", "6", "--max-concurrency", "4"], "multiple of max_concurrency"),
        (["--event-rate", "-1"], "event_rate"),
        (["--port", "abc"], "--port"),
        (["--no-such-flag"], "--no-such-flag"),
    ],
)
async def test_bad_flags_print_one_line_and_exit_non_zero(flags: list[str], needle: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        "simulate",
        *flags,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(15):
        out, err = await proc.communicate()
    assert proc.returncode == 2
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("cluster: error: ")
    assert needle in lines[0]
    assert out == b""


async def test_taken_port_is_a_one_line_runtime_error(
    processes: list[asyncio.subprocess.Process],
) -> None:
    blocker = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    try:
        port = blocker.sockets[0].getsockname()[1]
        proc = await asyncio.create_subprocess_exec(
            *CLI,
            "simulate",
            "--port",
            str(port),
            "--token",
            "super-secret-token",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        processes.append(proc)
        async with asyncio.timeout(15):
            _, err = await proc.communicate()
    finally:
        blocker.close()
        await blocker.wait_closed()
    assert proc.returncode == 1
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1 and "cannot listen" in lines[0]
    assert "super-secret-token" not in err.decode()
