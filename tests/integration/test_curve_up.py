"""``cluster up`` off loopback as real processes: the refusals, ``cluster keys``, and a secured cluster.

The refusals are one line and exit 2 before anything starts. The secured
cluster binds --pub, --control and --health on an address that is not
loopback: the root side of a network namespace bridge the test makes itself
(tests/e2e/netns.py, 198.51.100.1; without root or namespaces it falls back to
127.0.0.1, where CURVE and the token are opted into). Against it, a SUB with
an allowed key gets every event the simulator sent, each once; SUBs without a
key or with another key get nothing; the control socket answers only the
allowed key; HTTP wants the token except on the probes; and no secret shows in
the output or in /status.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import zmq
import zmq.asyncio

from cluster.curve import load_single_key, write_key_pair
from protocol.curvezmq import encode_key, new_key_pair
from protocol.pubframe import decode_event
from tests.conftest import SimFactory
from tests.e2e.cluster_process import clusters, wait_http
from tests.e2e.netns import HostNet
from titanium_client import CommandTimeoutError, ControlCluster

__all__ = ["clusters"]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

CLUSTER = [sys.executable, "-c", "from cluster.cli import main; main()"]
TOKEN = "Zr8-token-of-the-secured-test-cluster"


@pytest.fixture
def scratch() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="tc-curve-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def run_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *CLUSTER,
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), 30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest.mark.parametrize(
    ("args", "env", "starts"),
    [
        (["--pub", "tcp://0.0.0.0:5555"], {}, "--pub tcp://0.0.0.0:5555 is not on loopback"),
        (["--control", "tcp://*:5556"], {}, "--control tcp://*:5556 is not on loopback"),
        ([], {"CLUSTER_PUB": "tcp://198.51.100.7:1"}, "--pub tcp://198.51.100.7:1 is not on"),
        (["--health", "0.0.0.0:8080"], {}, "--health 0.0.0.0:8080 is not on loopback"),
    ],
)
async def test_off_loopback_without_security_is_refused_in_one_line(
    args: list[str], env: dict[str, str], starts: str
) -> None:
    code, out, err = await run_cli("up", "--simulate", *args, env=env)
    assert code == 2
    assert out == ""
    (line,) = err.splitlines()
    assert line.startswith(f"cluster: error: {starts}")
    assert ("cluster keys" in line) or ("--http-token-file" in line)


async def test_bad_security_options_are_one_line_each(scratch: Path) -> None:
    _, secret, _ = write_key_pair(scratch, "server")
    code, _, err = await run_cli("up", "--simulate", "--curve-secret", str(secret))
    assert code == 2 and "go together" in err and len(err.splitlines()) == 1
    (scratch / "token").write_text("short")
    code, _, err = await run_cli("up", "--simulate", "--http-token-file", str(scratch / "token"))
    assert code == 2 and "at least 16" in err and "short" not in err.split("token")[-1]
    secret_text = secret.read_text().split()[-1]
    code, _, err = await run_cli(
        "up", "--simulate", "--curve-secret", str(secret), "--curve-clients", str(scratch / "no")
    )
    assert code == 2 and "cannot read client key file" in err
    assert secret_text not in err


async def test_cluster_keys_prints_only_the_public_key(scratch: Path) -> None:
    code, out, err = await run_cli("keys", "--out", str(scratch / "k"))
    assert code == 0
    (public,) = out.splitlines()
    secret_text = (scratch / "k" / "server.key_secret").read_text().split()[-1]
    assert (scratch / "k" / "server.key").read_text().split()[-1] == public
    assert len(public) == 40 and secret_text not in out + err
    assert (scratch / "k" / "server.key_secret").stat().st_mode & 0o777 == 0o600
    code, _, err = await run_cli("keys", "--out", str(scratch / "k"))
    assert code == 2 and "exists" in err


async def http_get(url: str, token: str | None = None) -> tuple[int, str]:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as resp:
        return resp.status, await resp.text()


def curve_sub(
    context: zmq.asyncio.Context,
    endpoint: str,
    server: str | None,
    pair: tuple[bytes, bytes] | None,
) -> zmq.asyncio.Socket:
    sock = context.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    if server is not None and pair is not None:
        sock.curve_serverkey = server.encode()
        sock.curve_publickey = encode_key(pair[0]).encode()
        sock.curve_secretkey = encode_key(pair[1]).encode()
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.connect(endpoint)
    return sock


async def test_a_secured_cluster_off_loopback(
    sim_factory: SimFactory, clusters: Callable[..., Any], scratch: Path
) -> None:
    sim = await sim_factory(shards=2, identify_window_s=0.05, event_rate=50.0)
    keys = scratch / "keys"
    _, server_secret, server_public = write_key_pair(keys, "server")
    _, bot_secret, bot_public = write_key_pair(keys, "bot")
    (scratch / "token").write_text(TOKEN + "\n")
    secrets = [
        server_secret.read_text().split()[-1],
        bot_secret.read_text().split()[-1],
        TOKEN,
    ]
    bot = (bot_public, load_single_key(bot_secret, "key"))
    server_key = encode_key(server_public)
    context = zmq.asyncio.Context()
    with HostNet(1) as net:
        host = net.server_ip
        run = await clusters(
            "--api-url", sim.rest_url,
            "--token", sim.config.token,
            "--compress", "none",
            "--pub", f"tcp://{host}:0",
            "--control", f"tcp://{host}:0",
            "--health", f"{host}:0",
            "--curve-secret", str(server_secret),
            "--curve-clients", str(keys),
            "--http-token-file", str(scratch / "token"),
            "--state-dir", str(scratch / "state"),
            "--identify-interval", "0.1",
        )  # fmt: skip
        socks: list[zmq.asyncio.Socket] = []
        try:
            listening = await run.listening()
            pub = listening["pub"]
            assert pub.startswith(f"tcp://{host}:")
            allowed = curve_sub(context, pub, server_key, bot)
            keyless = curve_sub(context, pub, None, None)
            stranger = curve_sub(context, pub, server_key, new_key_pair())
            socks += [allowed, keyless, stranger]
            got: list[tuple[int, int]] = []
            others: list[bytes] = []

            async def read(sock: zmq.asyncio.Socket, into: list[Any]) -> None:
                while True:
                    frames = await sock.recv_multipart()
                    if into is got:
                        event = decode_event(frames)
                        got.append((event.shard_id, event.seq))
                    else:
                        into.append(frames[0])

            readers = [
                asyncio.create_task(read(allowed, got)),
                asyncio.create_task(read(keyless, others)),
                asyncio.create_task(read(stranger, others)),
            ]
            try:
                http = listening["http"]
                await wait_http(f"{http}/health", lambda status, _: status == 200, 30)
                owner = await run.wait_line(lambda line: line.get("event") == "owner", 10)
                control = owner["control"]
                assert control.startswith(f"tcp://{host}:")

                # the control socket answers the allowed key only
                async with ControlCluster(
                    control, curve_server_key=server_key, curve_secret_key=bot[1]
                ) as cluster:
                    assert await cluster.update_presence("dnd") == (0, 1)
                async with ControlCluster(control, timeout=0.5) as cluster:
                    with pytest.raises(CommandTimeoutError):
                        await cluster.update_presence("idle")

                # HTTP: the token, except on the probes
                assert (await http_get(f"{http}/status"))[0] == 401
                assert (await http_get(f"{http}/metrics"))[0] == 401
                assert (await http_get(f"{http}/livez"))[0] == 200
                code, status_text = await http_get(f"{http}/status", TOKEN)
                assert code == 200

                # every event the simulator sent, each once, to the allowed key only
                await asyncio.sleep(0.5)
                sim.set_event_rate(0)
                expected = {(d.shard_id, d.seq) for d in sim.record.dispatches}
                async with asyncio.timeout(15):
                    while set(got) != expected:  # noqa: ASYNC110
                        await asyncio.sleep(0.05)
                assert len(got) == len(expected) > 20
                assert others == []
                # the refused handshakes are counted for the operator
                code, metrics = await http_get(f"{http}/metrics", TOKEN)
                refused = {
                    line.split("{")[1].split("}")[0]: float(line.split()[-1])
                    for line in metrics.splitlines()
                    if line.startswith("titanium_curve_refused_total{")
                }
                assert refused['socket="pub"'] >= 1, refused
            finally:
                for task in readers:
                    task.cancel()
                await asyncio.gather(*readers, return_exceptions=True)
            output = run.text()
            for secret in secrets:
                assert secret not in output
                assert secret not in status_text
            assert server_key in output  # the public key is logged, for the clients
        finally:
            for sock in socks:
                sock.close(0)
            context.term()
            await run.kill()
