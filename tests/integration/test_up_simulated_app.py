"""``cluster up --simulate`` with the simulated application's settings, as a real process tree.

A privileged intent the simulated application has not enabled stops the
cluster with the one 4014 line that says how to enable it on Discord and on
the simulator; ``--privileged-intents`` and ``--session-start-limit`` reach
the embedded simulator.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.cluster_process import clusters, http_get

__all__ = ["clusters"]

pytestmark = pytest.mark.timeout(60)

StartCluster = Callable[..., Any]


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short directory for ipc:// paths (a socket path must stay under 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="tc-app-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def simulate_args(where: Path, *extra: str) -> list[str]:
    return [
        "--simulate",
        "--health",
        "127.0.0.1:0",
        "--pub",
        f"ipc://{where}/pub",
        "--control",
        f"ipc://{where}/control",
        "--state-dir",
        str(where / "state"),
        "--identify-interval",
        "0.1",
        "--report-interval",
        "0.2",
        *extra,
    ]


async def test_a_privileged_intent_not_enabled_stops_up_with_the_how_to_line(
    clusters: StartCluster, short_dir: Path
) -> None:
    run = await clusters(*simulate_args(short_dir, "--intents", "GUILDS,GUILD_MEMBERS"))
    assert await run.wait(30) != 0
    errors = [line for line in run.raw if line.startswith("cluster: error: ")]
    assert len(errors) == 1, run.raw[-5:]
    line = errors[0]
    assert line.startswith("cluster: error: disallowed intents (4014): ")
    assert "Developer Portal (Bot -> Privileged Gateway Intents)" in line
    assert "--privileged-intents " in line and "`cluster up --simulate`" in line


async def test_up_simulate_passes_privileged_intents_and_the_session_start_limit(
    clusters: StartCluster, short_dir: Path
) -> None:
    run = await clusters(
        *simulate_args(
            short_dir,
            "--intents",
            "GUILDS,GUILD_MEMBERS,GUILD_PRESENCES,MESSAGE_CONTENT",
            "--privileged-intents",
            "all",
            "--session-start-limit",
            "5000",
        )
    )
    listening = await run.listening()
    url: str = listening["http"]
    async with asyncio.timeout(20):
        while True:  # ready, or the cluster stopped (no point in waiting on)
            assert run.process.returncode is None, run.raw[-3:]
            status, _ = await http_get(f"{url}/health")
            if status == 200:
                break
            await asyncio.sleep(0.05)
    status, body = await http_get(f"{url}/status")
    assert status == 200
    assert [s["state"] for s in body["shards"]] == ["ready"] * 4
    identify = body["identify"]
    assert identify["total"] == 5000
    assert identify["remaining"] <= 4996
