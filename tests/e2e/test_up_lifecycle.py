"""``cluster up`` lifecycle end to end: bad input, a stuck worker, an external coordinator, signals."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import SimFactory
from tests.e2e.cluster_process import clusters, http_get, wait_http
from tests.e2e.test_reshard_hosts import eventually
from tests.e2e.test_up import all_ready, args_for, short_dir

__all__ = ["clusters", "short_dir"]

pytestmark = pytest.mark.timeout(60)

StartCluster = Callable[..., Any]


BAD_OPTIONS = [
    (
        ["--shards", "abc"],
        "cluster: error: --shards: shard count must be 'auto' or a positive integer",
    ),
    (["--health", "nowhere"], "cluster: error: --health must be host:port"),
    (["--compress", "gzip"], "cluster: error: --compress must be zlib-stream, zstd-stream or none"),
    (["--pub", "localhost:5555"], "cluster: error: --pub must be a ZeroMQ endpoint"),
]


async def test_a_bad_option_is_one_line_and_exit_status_2(clusters: StartCluster) -> None:
    runs = [await clusters("--token", "x", *args) for args, _ in BAD_OPTIONS]  # run at once
    for run, (_, message) in zip(runs, BAD_OPTIONS, strict=True):
        assert await run.wait(15) == 2
        assert len(run.raw) == 1 and run.raw[0].startswith(message), run.raw


async def test_no_token_and_an_unreachable_api_are_one_line_each(clusters: StartCluster) -> None:
    no_token = await clusters(env={"DISCORD_TOKEN": ""})
    assert await no_token.wait(15) == 2
    assert no_token.raw == [
        "cluster: error: --token (or DISCORD_TOKEN) is required unless --simulate"
    ]
    unreachable = await clusters(
        "--api-url", "http://127.0.0.1:1/api/v10", env={"DISCORD_TOKEN": "tok"}
    )
    assert await unreachable.wait(15) == 1
    assert unreachable.raw[-1].startswith(
        "cluster: error: Discord API unreachable: GET http://127.0.0.1:1/api/v10/gateway/bot failed"
    ), unreachable.raw


async def test_a_shard_count_discord_would_refuse_is_refused_before_any_identify(
    sim_factory: SimFactory, clusters: StartCluster, short_dir: Path
) -> None:
    sim = await sim_factory(shards=4, max_concurrency=4)
    run = await clusters(*args_for(sim, short_dir, "--shards", "6"))
    assert await run.wait(15) == 1
    assert run.raw[-1] == (
        "cluster: error: 6 shards is not a multiple of max_concurrency 4, which Discord refuses "
        "(close 4010): use 4 or 8 shards"
    )
    assert not sim.record.connections


async def test_a_stuck_worker_is_killed_and_its_shards_resume(
    sim_factory: SimFactory, clusters: StartCluster, short_dir: Path
) -> None:
    sim = await sim_factory(shards=2, identify_window_s=0.05, heartbeat_interval_ms=5000)
    run = await clusters(*args_for(sim, short_dir, "--liveness-intervals", "5"))
    url = await all_ready(run)
    _, body = await http_get(f"{url}/status")
    pid = body["workers"][0]["pid"]
    os.kill(pid, signal.SIGSTOP)  # a stuck event loop: no more reports
    try:
        await run.wait_line(lambda line: "sent nothing for" in line.get("msg", ""), 10)
        await sim.record.wait_for(
            lambda r: len(r.accepted_resumes(0)) == 1 and len(r.accepted_resumes(1)) == 1,
            timeout=15,
        )
    finally:
        # normally SIGKILLed by the supervisor already; never leave a stopped process behind
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    status = await wait_http(
        f"{url}/status",
        lambda _, b: b["shards_ready"] == 2 and b["workers"][0]["pid"] != pid,
        10,
    )
    assert status["workers"][0]["restarts"] == 1
    assert len(sim.record.identifies) == 2


async def test_the_retired_coordinator_points_to_redis(
    sim_factory: SimFactory, clusters: StartCluster, short_dir: Path
) -> None:
    sim = await sim_factory(shards=1)
    coordinator = await clusters("--bind", "tcp://127.0.0.1:5557", command="coordinator")
    assert await coordinator.wait(10) == 2
    run = await clusters(*args_for(sim, short_dir, "--coordinator", "tcp://127.0.0.1:5557"))
    assert await run.wait(10) == 2
    for process in (coordinator, run):
        lines = [line for line in process.raw if line.strip()]
        assert len(lines) == 1 and "--redis" in lines[0], lines
    assert not sim.record.identifies


async def test_a_second_signal_exits_at_once(
    sim_factory: SimFactory, clusters: StartCluster, short_dir: Path
) -> None:
    sim = await sim_factory(shards=1)
    # a long stop timeout: only the second signal can make it exit quickly
    run = await clusters(*args_for(sim, short_dir, "--stop-timeout", "30"))
    url = await all_ready(run)
    _, body = await http_get(f"{url}/status")
    worker_pid = body["workers"][0]["pid"]
    os.kill(worker_pid, signal.SIGSTOP)  # it cannot drain, so the graceful stop would wait
    try:
        run.signal(signal.SIGTERM)
        await run.wait_line(lambda line: "stopping" in line.get("msg", ""), 10)
        run.signal(signal.SIGTERM)
        assert await run.wait(5) == 130
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker_pid, signal.SIGCONT)


async def test_the_session_start_budget_is_refreshed_from_gateway_bot(
    sim_factory: SimFactory, clusters: StartCluster, short_dir: Path, raw_clients: Any
) -> None:
    sim = await sim_factory(shards=2, identify_window_s=0.05)
    run = await clusters(*args_for(sim, short_dir, "--limit-refresh", "0.2"))
    url = await all_ready(run)
    # someone else (another process of the same bot) starts a session, once the
    # identify window of the cluster's last IDENTIFY (bucket 0) has passed
    await asyncio.sleep(0.1)
    client = await raw_clients(sim.gateway_url)
    await client.ready(token=sim.config.token, shard=[0, 2])
    body = await wait_http(f"{url}/status", lambda _, b: b["identify"]["remaining"] == 997, 10)
    assert body["identify"]["total"] == 1000
    gets = [r for r in sim.record.rest_requests if r[1].endswith("/gateway/bot")]
    assert len(gets) >= 2


async def test_a_worker_that_keeps_dying_is_given_up_and_health_says_so(
    sim_factory: SimFactory, clusters: StartCluster, short_dir: Path
) -> None:
    sim = await sim_factory(shards=1, identify_window_s=0.05)
    run = await clusters(*args_for(sim, short_dir, "--max-quick-deaths", "1"))
    url = await all_ready(run)
    _, body = await http_get(f"{url}/status")
    first = body["workers"][0]["pid"]
    os.kill(first, signal.SIGKILL)
    body = await wait_http(
        f"{url}/status",
        lambda _, b: b["workers"][0]["pid"] not in (None, first) and b["workers"][0]["alive"],
        10,
    )
    os.kill(body["workers"][0]["pid"], signal.SIGKILL)  # a second quick death
    health = await wait_http(f"{url}/health", lambda status, b: "problems" in b, 10)
    assert any("given up" in p for p in health["problems"]), health
    status, _ = await http_get(f"{url}/health")
    assert status == 503
    _, body = await http_get(f"{url}/status")
    assert body["workers"][0]["state"] == "given_up"
    assert not body["workers"][0]["alive"]
    assert len(sim.record.identifies) == 1  # no session starts burnt by the deaths
    run.signal(signal.SIGTERM)
    assert await run.wait(10) == 0


async def test_an_address_in_use_is_one_line(
    sim_factory: SimFactory, clusters: StartCluster, short_dir: Path
) -> None:
    import socket

    import zmq

    sim = await sim_factory(shards=1)
    taken = socket.create_server(("127.0.0.1", 0))
    context = zmq.Context()
    pub = context.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind("tcp://127.0.0.1:0")
    try:
        port = taken.getsockname()[1]
        health_args = args_for(sim, short_dir)
        health_args[health_args.index("--health") + 1] = f"127.0.0.1:{port}"
        pub_args = args_for(sim, short_dir / "other")
        pub_args[pub_args.index("--pub") + 1] = pub.getsockopt_string(zmq.LAST_ENDPOINT)
        (short_dir / "other").mkdir()
        health_run = await clusters(*health_args)
        pub_run = await clusters(*pub_args)
        assert await health_run.wait(15) == 1
        assert await pub_run.wait(15) == 1
    finally:
        taken.close()
        pub.close(0)
        context.term()
    assert health_run.raw[-1].startswith(
        f"cluster: error: cannot listen on --health 127.0.0.1:{port}"
    )
    assert pub_run.raw[-1].startswith("cluster: error: cannot bind --pub tcp://127.0.0.1:")
    assert "in use" in health_run.raw[-1] and "in use" in pub_run.raw[-1]
    assert not sim.record.identifies  # nothing started


async def test_sigterm_to_the_whole_process_group_is_one_graceful_stop(
    sim_factory: SimFactory, clusters: StartCluster, short_dir: Path
) -> None:
    # `kill -TERM -PGID`, `timeout`, a process manager that stops a group: the signal
    # reaches the supervisor, its workers and the forkserver they fork from at once.
    sim = await sim_factory(shards=4, identify_window_s=0.05)
    run = await clusters(*args_for(sim, short_dir, "--workers", "2"))
    await all_ready(run)
    os.killpg(run.process.pid, signal.SIGTERM)  # the cluster runs in a session of its own
    assert await run.wait(15) == 0
    # no worker was read as dead (the server that forked it is still there) and restarted
    text = run.text()
    assert "exited (exit status" not in text and "restarting" not in text, text[-2000:]
    saved = (short_dir / "state" / "sessions.json").read_text()
    assert all(f'"{shard}"' in saved for shard in range(4))
    assert len(sim.record.identifies) == 4


async def test_the_forkserver_outlives_a_sigterm_of_its_own(
    sim_factory: SimFactory, clusters: StartCluster, short_dir: Path
) -> None:
    # The supervisor learns a fork's exit through the forkserver: were the server to
    # end on SIGTERM (as the group's, seen before the supervisor's own), every worker
    # would be read as exited (255) and started again beside the running one.
    sim = await sim_factory(shards=2, identify_window_s=0.05)
    run = await clusters(*args_for(sim, short_dir))
    await all_ready(run)
    server = forkserver_of(run.process.pid)
    server.send_signal(signal.SIGTERM)
    await asyncio.sleep(1.0)
    assert server.is_running() and server.status() != psutil.STATUS_ZOMBIE
    assert "exited (exit status" not in run.text()
    run.signal(signal.SIGTERM)
    assert await run.wait(15) == 0
    assert len(sim.record.identifies) == 2


async def test_a_killed_forkserver_is_replaced_and_its_workers_with_it(
    sim_factory: SimFactory, clusters: StartCluster, short_dir: Path
) -> None:
    # SIGKILL (the OOM killer) of the server the workers fork from: the supervisor
    # reads their exits through it, so it must end them itself and start new ones,
    # which RESUME; none of the old ones may keep running its shards unwatched.
    sim = await sim_factory(shards=2, identify_window_s=0.05)
    run = await clusters(*args_for(sim, short_dir, "--workers", "2"))
    url = await all_ready(run)
    server = forkserver_of(run.process.pid)
    old_workers = server.children()
    assert len(old_workers) == 2
    server.kill()
    assert await eventually(lambda: not any(_alive(worker) for worker in old_workers), 10)
    await sim.record.wait_for(lambda r: len(r.accepted_resumes()) == 2, 15)
    await wait_http(
        f"{url}/health", lambda status, body: status == 200 and body["shards_ready"] == 2, 15
    )
    assert len(sim.record.identifies) == 2  # resumed, not identified again
    # ended by the supervisor at once, not left to notice their parent changed and drain
    # beside the replacements resuming the same sessions
    assert "the supervisor is gone" not in run.text()
    run.signal(signal.SIGTERM)
    assert await run.wait(15) == 0


def _alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def forkserver_of(supervisor_pid: int) -> psutil.Process:
    """The forkserver the supervisor's workers fork from (skips where they are spawned)."""
    servers = [
        child
        for child in psutil.Process(supervisor_pid).children()
        if any("forkserver" in part for part in child.cmdline())
    ]
    if not servers:
        pytest.skip("workers are spawned here (no forkserver)")
    (server,) = servers
    return server
