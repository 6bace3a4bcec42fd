"""The StatefulSet's own pod command, run as three "pods" against the simulator and Redis.

Each pod gets exactly the container's ``args`` and ``env`` from
``deploy/kubernetes/statefulset.yaml`` and the ``cluster.toml`` of
``configmap.yaml``; only what points outside the pod is replaced: the token (the
simulator's), ``redis`` (the test's Redis), ``CLUSTER_API_URL`` added (the
simulator instead of Discord), and every mounted path (the config file, state
dir, /tmp, the CURVE key, the client keys, the HTTP token) moved to a directory
of the test. Each pod runs in its own network namespace (its own
address, so the manifest's ``0.0.0.0`` ports do not collide) and UTS namespace,
with the host name Kubernetes gives it (``titanium-cluster-0``, ...), so the
range comes from the ordinal exactly as in the cluster.

Checked: ordinals 0 and 1 own ranges 0 and 1 and pod 2 (past ``CLUSTER_HOSTS``)
is a spare; the probes' paths answer as the manifest expects; ``/status`` wants
the bearer token; a CURVE subscriber with a listed key gets events; and when pod
1 is SIGKILLed the spare RESUMEs its range without an IDENTIFY.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import signal
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]
import zmq
import zmq.asyncio
import zmq.utils.z85

from cluster.curve import load_single_key, write_key_pair
from simulator.record import ResumeOutcome
from tests.conftest import RedisFactory, SimFactory
from tests.e2e.cluster_process import ClusterProcess, clusters, http_get, wait_http
from tests.e2e.netns import HostNet
from tests.e2e.test_up import short_dir

__all__ = ["clusters", "short_dir"]

pytestmark = pytest.mark.timeout(120)

K8S = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
STATEFULSET = K8S / "statefulset.yaml"
CONFIGMAP = K8S / "configmap.yaml"
HTTP_TOKEN = "pod-test-bearer-token-0123456789"


def pod_template() -> tuple[list[str], dict[str, Any], list[dict[str, Any]], str]:
    """The supervisor container's args, env (name -> entry), volume mounts and config file."""
    with STATEFULSET.open() as f:
        statefulset = yaml.safe_load(f)
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    with CONFIGMAP.open() as f:
        config_map = yaml.safe_load(f)
    (toml_text,) = config_map["data"].values()
    return list(container["args"]), env, list(container["volumeMounts"]), toml_text


@pytest.fixture
def net_of_3() -> Iterator[HostNet]:
    with HostNet(3) as net:
        if net.mode != "netns":
            if os.environ.get("CI") == "true":
                pytest.fail(f"network namespaces are needed here: {net.fallback_reason}")
            pytest.skip(f"needs network namespaces (root): {net.fallback_reason}")
        yield net


async def test_the_statefulset_pod_command_runs_two_owners_and_a_spare(
    net_of_3: HostNet,
    sim_factory: SimFactory,
    redis_factory: RedisFactory,
    clusters: Callable[..., Any],
    short_dir: Path,
) -> None:
    net = net_of_3
    redis = redis_factory(bind=net.server_ip)
    sim = await sim_factory(
        host=net.server_ip, shards=4, max_concurrency=2, identify_window_s=0.1, event_rate=5
    )
    args, env_entries, mounts, toml_text = pod_template()
    keys = short_dir / "keys"
    _, _, server_public = write_key_pair(keys, "server")
    _, bot_secret_file, client_public = write_key_pair(keys, "bot")
    client_secret = load_single_key(bot_secret_file, "key")

    def in_pod(path: str, pod: Path) -> str:
        """A path of the pod's file system, as the test's directory that stands for it."""
        for mount in mounts:
            if path == mount["mountPath"] or path.startswith(mount["mountPath"] + "/"):
                return str(pod / mount["name"]) + path[len(mount["mountPath"]) :]
        return path

    def pod_env(pod: Path) -> tuple[dict[str, str], list[str]]:
        env: dict[str, str] = {}
        for name, entry in env_entries.items():
            if "value" in entry:
                env[name] = in_pod(str(entry["value"]), pod)
        env["DISCORD_TOKEN"] = sim.config.token  # from the Secret in the cluster
        env["CLUSTER_API_URL"] = sim.rest_url  # Discord in the cluster
        for mount in mounts:  # the pod's volumes, as directories of the test
            where = pod / mount["name"]
            where.mkdir(parents=True)
            if mount["name"] == "config":
                settings = tomllib.loads(toml_text)
                settings["redis"] = redis.url  # titanium-redis:6379 in the cluster
                lines = [
                    f"{key} = {json.dumps(in_pod(v, pod) if isinstance(v, str) else v)}"
                    for key, v in settings.items()
                ]
                (where / "cluster.toml").write_text("\n".join(lines) + "\n")
            elif mount["name"] == "curve":
                (where / "server.key_secret").write_bytes((keys / "server.key_secret").read_bytes())
            elif mount["name"] == "clients":
                (where / "bot.key").write_bytes((keys / "bot.key").read_bytes())
            elif mount["name"] == "http-token":
                (where / "token").write_text(HTTP_TOKEN)
            elif mount["name"] == "tmp":
                env["TMPDIR"] = str(where)
        return env, [in_pod(a, pod) for a in args]

    pods: list[ClusterProcess] = []
    for ordinal, host in enumerate(net.hosts):
        name = f"titanium-cluster-{ordinal}"

        def in_netns(argv: list[str], host: Any = host, name: str = name) -> list[str]:
            inner = f"hostname {shlex.quote(name)} && exec " + shlex.join(argv)
            return host.command(["unshare", "--uts", "sh", "-c", inner])

        env, argv = pod_env(short_dir / name)
        run: ClusterProcess = await clusters(*argv[1:], command=argv[0], env=env, wrap=in_netns)
        pods.append(run)

    # the probes of the manifest: readiness /health, liveness /livez (open without the token)
    health = [f"http://{h.ip}:8080/health" for h in net.hosts]
    try:
        for url in health[:2]:
            await wait_http(url, lambda code, body: code == 200 and body["role"] == "owner", 60)
    except TimeoutError:
        raise AssertionError("\n".join(line for pod in pods for line in pod.raw[-10:])) from None
    await wait_http(health[2], lambda code, body: code == 200 and body["role"] == "spare", 30)
    assert (await http_get(f"http://{net.hosts[0].ip}:8080/livez"))[0] == 200
    assert (await http_get(f"http://{net.hosts[0].ip}:8080/status"))[0] == 401
    ranges = []
    for host in net.hosts[:2]:
        _, body = await http_get_token(f"http://{host.ip}:8080/status")
        ranges.append(sorted(s["shard_id"] for s in body["shards"]))
    assert ranges == [[0, 1], [2, 3]]  # the range of each ordinal
    assert len(sim.record.accepted_identifies()) == 4

    # a subscriber with the listed key gets pod 0's events over CURVE
    context = zmq.asyncio.Context()
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.curve_serverkey = zmq.utils.z85.encode(server_public)
    sub.curve_publickey = zmq.utils.z85.encode(client_public)
    sub.curve_secretkey = zmq.utils.z85.encode(client_secret)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(f"tcp://{net.hosts[0].ip}:5555")
    try:
        async with asyncio.timeout(20):
            topic, header, _ = await sub.recv_multipart()
        assert topic and b'"shard_id"' in header
    finally:
        sub.close()
        context.term()

    # pod 1 dies with its whole tree: the spare RESUMEs range 1, no IDENTIFY
    os.killpg(pods[1].process.pid, signal.SIGKILL)
    await wait_http(health[2], lambda code, body: code == 200 and body["role"] == "owner", 40)
    _, body = await http_get_token(f"http://{net.hosts[2].ip}:8080/status")
    assert sorted(s["shard_id"] for s in body["shards"]) == [2, 3]
    assert len(sim.record.accepted_identifies()) == 4
    resumed = {r.shard_id for r in sim.record.resumes_for(outcome=ResumeOutcome.ACCEPTED)}
    assert {2, 3} <= resumed
    for run in (pods[0], pods[2]):
        run.signal(signal.SIGTERM)
        assert await run.wait(20) == 0, run.raw[-3:]


async def http_get_token(url: str) -> tuple[int, Any]:
    import aiohttp
    import orjson

    async with (
        aiohttp.ClientSession() as http,
        http.get(
            url,
            headers={"Authorization": f"Bearer {HTTP_TOKEN}"},
            timeout=aiohttp.ClientTimeout(total=5),
        ) as response,
    ):
        return response.status, orjson.loads(await response.read())
