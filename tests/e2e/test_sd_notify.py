"""systemd's Type=notify: a real ``cluster up`` talks to a NOTIFY_SOCKET this test reads.

The test binds the unix datagram socket systemd would, starts the supervisor
with ``NOTIFY_SOCKET`` and ``WATCHDOG_USEC`` set, and reads what arrives:
``STATUS=`` lines, ``READY=1`` once every shard is ready, ``WATCHDOG=1`` pings
from the supervisor's loop, ``STOPPING=1`` when SIGTERM starts the drain.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cluster.sd_notify import SystemdNotifier
from tests.conftest import SimFactory
from tests.e2e.cluster_process import clusters
from tests.e2e.test_up import args_for, short_dir

__all__ = ["clusters", "short_dir"]

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def notify_socket(short_dir: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(short_dir / "notify"))
    sock.setblocking(False)
    try:
        yield sock
    finally:
        sock.close()


async def datagrams(
    sock: socket.socket, until: Callable[[list[str]], bool], within_s: float
) -> list[str]:
    """Every datagram until ``until(all so far)``; each as its text."""
    loop = asyncio.get_running_loop()
    got: list[str] = []
    async with asyncio.timeout(within_s):
        while not until(got):
            got.append((await loop.sock_recv(sock, 4096)).decode())
    return got


async def test_ready_status_watchdog_and_stopping_reach_the_notify_socket(
    sim_factory: SimFactory,
    clusters: Callable[..., Any],
    short_dir: Path,
    notify_socket: socket.socket,
) -> None:
    sim = await sim_factory(shards=4, max_concurrency=4, identify_window_s=0.1, event_rate=5.0)
    run = await clusters(
        *args_for(sim, short_dir),
        env={"NOTIFY_SOCKET": str(short_dir / "notify"), "WATCHDOG_USEC": "400000"},
    )
    got = await datagrams(notify_socket, lambda g: any("READY=1" in d for d in g), 30)
    ready = next(d for d in got if "READY=1" in d)
    assert "STATUS=owner: 4/4 shards ready" in ready.splitlines()
    before = [d for d in got if d.startswith("STATUS=")]
    assert before and all("shards ready" in d for d in before)
    pings = await datagrams(notify_socket, lambda g: g.count("WATCHDOG=1") >= 3, 10)
    assert not any("READY=1" in d for d in pings), "READY=1 is sent once"
    run.signal(signal.SIGTERM)
    rest = await datagrams(notify_socket, lambda g: any("STOPPING=1" in d for d in g), 10)
    assert any(d.startswith("STOPPING=1") for d in rest)
    assert await run.wait(15) == 0


def test_the_watchdog_is_ignored_when_systemd_expects_another_pid() -> None:
    mine = SystemdNotifier.from_env({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())})
    assert mine.watchdog_s == 2.0 and not mine.enabled
    other = SystemdNotifier.from_env({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"})
    assert other.watchdog_s is None


def test_an_abstract_socket_name_is_reached(short_dir: Path) -> None:
    name = f"tc-notify-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind("\0" + name)
        notifier = SystemdNotifier(f"@{name}")
        try:
            assert notifier.notify("READY=1", "STATUS=x")
            assert server.recv(100) == b"READY=1\nSTATUS=x"
        finally:
            notifier.close()


def test_without_notify_socket_nothing_is_sent() -> None:
    notifier = SystemdNotifier.from_env({})
    assert not notifier.enabled and notifier.notify("READY=1") is False
