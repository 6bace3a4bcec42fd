"""Every gateway rule the simulator enforces, each shown closing (or op 9) and recorded."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest

from simulator import IdentifyOutcome, ViolationKind
from tests.conftest import GatewayClosed, RawClient, SimFactory

Connect = Callable[..., Awaitable[RawClient]]

PRESENCES = 1 << 8
MEMBERS = 1 << 1
MESSAGE_CONTENT = 1 << 15


async def closed_with(
    sim_factory: SimFactory,
    raw_clients: Connect,
    send: Callable[[RawClient], Awaitable[None]],
    expected_code: int,
    kind: ViolationKind,
    **config: Any,
) -> RawClient:
    sim = await sim_factory(**config)
    client = await raw_clients(sim.gateway_url)
    await client.hello()
    await send(client)
    closed = await client.expect_close()
    assert closed.code == expected_code
    [violation] = sim.record.violations_of(kind)
    assert violation.code == expected_code
    [conn] = sim.record.connections.values()
    assert conn.closed_by == "server" and conn.close_code == expected_code
    return client


async def test_wrong_token_is_4004(sim_factory: SimFactory, raw_clients: Connect) -> None:
    async def send(c: RawClient) -> None:
        await c.identify(token="not-the-token")

    await closed_with(sim_factory, raw_clients, send, 4004, ViolationKind.AUTH_FAILED)


async def test_wrong_token_on_resume_is_4004(sim_factory: SimFactory, raw_clients: Connect) -> None:
    async def send(c: RawClient) -> None:
        await c.resume("a" * 32, 1, token="not-the-token")

    await closed_with(sim_factory, raw_clients, send, 4004, ViolationKind.AUTH_FAILED)


@pytest.mark.parametrize(
    ("shard", "config"),
    [
        ([2, 2], {}),  # id >= total
        ([0, 0], {}),  # total < 1
        ([-1, 2], {}),
        ([0, 6], {"shards": 4, "max_concurrency": 4}),  # total not a multiple of max_concurrency
        ([0, "2"], {}),
        ([0], {}),
        ("0,1", {}),
    ],
)
async def test_bad_shard_is_4010(
    sim_factory: SimFactory, raw_clients: Connect, shard: Any, config: dict[str, Any]
) -> None:
    async def send(c: RawClient) -> None:
        await c.identify(shard=shard)

    await closed_with(sim_factory, raw_clients, send, 4010, ViolationKind.INVALID_SHARD, **config)


async def test_multiple_of_max_concurrency_is_accepted(
    sim_factory: SimFactory, raw_clients: Connect
) -> None:
    sim = await sim_factory(shards=4, max_concurrency=4)
    client = await raw_clients(sim.gateway_url)
    ready = await client.ready(shard=[7, 8])
    assert ready["shard"] == [7, 8]


async def test_too_many_guilds_on_one_shard_is_4011(
    sim_factory: SimFactory, raw_clients: Connect
) -> None:
    async def send(c: RawClient) -> None:
        await c.identify(shard=[0, 1])

    await closed_with(
        sim_factory,
        raw_clients,
        send,
        4011,
        ViolationKind.SHARDING_REQUIRED,
        guilds=5,
        max_guilds_per_shard=4,
    )


async def test_enough_shards_avoid_4011(sim_factory: SimFactory, raw_clients: Connect) -> None:
    sim = await sim_factory(guilds=5, max_guilds_per_shard=4)
    client = await raw_clients(sim.gateway_url)
    ready = await client.ready(shard=[0, 2])
    assert len(ready["guilds"]) == 3


@pytest.mark.parametrize("intents", [1 << 17, 1 << 30, -1, "513", None])
async def test_undefined_intents_are_4013(
    sim_factory: SimFactory, raw_clients: Connect, intents: Any
) -> None:
    async def send(c: RawClient) -> None:
        d: dict[str, Any] = {"token": "simulated-token", "properties": {}}
        if intents is not None:
            d["intents"] = intents
        await c.send({"op": 2, "d": d})

    await closed_with(sim_factory, raw_clients, send, 4013, ViolationKind.INVALID_INTENTS)


@pytest.mark.parametrize("privileged", [PRESENCES, MEMBERS, MESSAGE_CONTENT])
async def test_privileged_intents_not_enabled_are_4014(
    sim_factory: SimFactory, raw_clients: Connect, privileged: int
) -> None:
    async def send(c: RawClient) -> None:
        await c.identify(intents=513 | privileged)

    enabled = (PRESENCES | MEMBERS | MESSAGE_CONTENT) & ~privileged
    await closed_with(
        sim_factory,
        raw_clients,
        send,
        4014,
        ViolationKind.DISALLOWED_INTENTS,
        privileged_intents=enabled,
    )


async def test_enabled_privileged_intents_are_accepted(
    sim_factory: SimFactory, raw_clients: Connect
) -> None:
    sim = await sim_factory(privileged_intents=PRESENCES | MESSAGE_CONTENT)
    client = await raw_clients(sim.gateway_url)
    await client.ready(intents=513 | PRESENCES | MESSAGE_CONTENT)


async def test_second_identify_is_4005(sim_factory: SimFactory, raw_clients: Connect) -> None:
    async def send(c: RawClient) -> None:
        await c.identify()
        await c.recv_event("READY")
        await c.identify()

    await closed_with(sim_factory, raw_clients, send, 4005, ViolationKind.ALREADY_AUTHENTICATED)


async def test_resume_after_identify_is_4005(sim_factory: SimFactory, raw_clients: Connect) -> None:
    async def send(c: RawClient) -> None:
        await c.identify()
        ready = await c.recv_event("READY")
        await c.resume(ready["d"]["session_id"], 1)

    await closed_with(sim_factory, raw_clients, send, 4005, ViolationKind.ALREADY_AUTHENTICATED)


@pytest.mark.parametrize("op", [3, 4, 8, 31, 43])
async def test_commands_before_identify_are_4003(
    sim_factory: SimFactory, raw_clients: Connect, op: int
) -> None:
    async def send(c: RawClient) -> None:
        await c.send({"op": op, "d": {}})

    await closed_with(sim_factory, raw_clients, send, 4003, ViolationKind.NOT_AUTHENTICATED)


async def test_oversized_payload_is_4002(sim_factory: SimFactory, raw_clients: Connect) -> None:
    async def send(c: RawClient) -> None:
        await c.identify(presence={"activities": [{"name": "x" * 4096, "type": 0}]})

    await closed_with(sim_factory, raw_clients, send, 4002, ViolationKind.PAYLOAD_TOO_LARGE)


async def test_payload_of_exactly_4096_bytes_is_fine(
    sim_factory: SimFactory, raw_clients: Connect
) -> None:
    sim = await sim_factory()
    client = await raw_clients(sim.gateway_url)
    await client.hello()
    base = '{"op":1,"d":null,"pad":""}'
    exact = base[:-2] + "x" * (4096 - len(base)) + '"}'
    assert len(exact) == 4096
    await client.send(exact)
    await client.recv_op(11)
    assert not sim.record.violations
    await client.send(exact[:-2] + 'x"}')
    assert (await client.expect_close()).code == 4002


@pytest.mark.parametrize("raw", ["{not json", "[1,2]", '{"op":"1"}', '{"d":1}', "null"])
async def test_undecodable_payload_is_4002(
    sim_factory: SimFactory, raw_clients: Connect, raw: str
) -> None:
    async def send(c: RawClient) -> None:
        await c.send(raw)

    await closed_with(sim_factory, raw_clients, send, 4002, ViolationKind.DECODE_ERROR)


@pytest.mark.parametrize("op", [0, 5, 7, 9, 10, 11, 12, 99])
async def test_unknown_client_opcode_is_4001(
    sim_factory: SimFactory, raw_clients: Connect, op: int
) -> None:
    async def send(c: RawClient) -> None:
        await c.send({"op": op, "d": None})

    await closed_with(sim_factory, raw_clients, send, 4001, ViolationKind.UNKNOWN_OPCODE)


@pytest.mark.parametrize("d", [None, "token", {"intents": 513}])
async def test_identify_without_an_object_and_token_is_4001(
    sim_factory: SimFactory, raw_clients: Connect, d: Any
) -> None:
    async def send(c: RawClient) -> None:
        await c.send({"op": 2, "d": d})

    await closed_with(sim_factory, raw_clients, send, 4001, ViolationKind.INVALID_PAYLOAD)


async def test_more_than_120_payloads_per_minute_is_4008(
    sim_factory: SimFactory, raw_clients: Connect
) -> None:
    async def send(c: RawClient) -> None:
        for _ in range(121):  # heartbeats count too
            await c.send({"op": 1, "d": None})

    client = await closed_with(sim_factory, raw_clients, send, 4008, ViolationKind.SEND_RATE_LIMIT)
    acks = [p for p in client.received if p["op"] == 11]
    assert len(acks) == 120


async def test_send_limit_window_slides(sim_factory: SimFactory, raw_clients: Connect) -> None:
    sim = await sim_factory(send_limit=5, send_window_s=0.3)
    client = await raw_clients(sim.gateway_url)
    await client.hello()
    for _ in range(5):
        await client.heartbeat()
    for _ in range(5):
        await client.recv_op(11)
    await asyncio.sleep(0.35)
    for _ in range(5):
        await client.heartbeat()
    for _ in range(5):
        await client.recv_op(11)
    assert not sim.record.violations
    for _ in range(2):
        await client.heartbeat()
    assert (await client.expect_close()).code == 4008


@pytest.mark.parametrize(
    ("query", "code"), [("v=8&encoding=json", 4012), ("encoding=json", 4012), ("v=abc", 4012)]
)
async def test_unsupported_api_version_is_4012(
    sim_factory: SimFactory, raw_clients: Connect, query: str, code: int
) -> None:
    sim = await sim_factory()
    client = await raw_clients(sim.gateway_url, query=query)
    closed = await client.expect_close()
    assert closed.code == code
    assert sim.record.violations_of(ViolationKind.INVALID_API_VERSION)


@pytest.mark.parametrize("version", [9, 10])
async def test_v9_and_v10_are_served(
    sim_factory: SimFactory, raw_clients: Connect, version: int
) -> None:
    sim = await sim_factory()
    client = await raw_clients(sim.gateway_url, v=version)
    await client.ready()


@pytest.mark.parametrize("query", ["v=10&encoding=etf", "v=10&encoding=json&compress=gzip"])
async def test_etf_and_unknown_compression_are_a_clear_4002(
    sim_factory: SimFactory, raw_clients: Connect, query: str
) -> None:
    sim = await sim_factory()
    client = await raw_clients(sim.gateway_url, query=query)
    closed = await client.expect_close()
    assert closed.code == 4002
    assert "not supported" in closed.reason
    assert sim.record.violations_of(ViolationKind.UNSUPPORTED_ENCODING)


async def test_identify_rate_limit_per_bucket(
    sim_factory: SimFactory, raw_clients: Connect
) -> None:
    sim = await sim_factory(shards=4, max_concurrency=2, identify_window_s=0.3)
    # shards 0 and 1 are different buckets: both accepted at once
    for shard_id in (0, 1):
        client = await raw_clients(sim.gateway_url)
        await client.ready(shard=[shard_id, 4])
    # shard 2 shares bucket 0 with shard 0: op 9 false, recorded
    late = await raw_clients(sim.gateway_url)
    await late.hello()
    await late.identify(shard=[2, 4])
    invalid = await late.recv_op(9)
    assert invalid["d"] is False
    [limited] = sim.record.identifies_for(2, IdentifyOutcome.RATE_LIMITED)
    [violation] = sim.record.violations_of(ViolationKind.IDENTIFY_RATE_LIMIT)
    assert violation.shard_id == 2 and violation.code is None
    # after the window, the bucket is free again (on the same connection)
    await asyncio.sleep(0.3)
    await late.identify(shard=[2, 4])
    await late.recv_event("READY")
    assert len(sim.record.accepted_identifies()) == 3
    assert sim.gateway.budget.remaining == 997  # only accepted identifies spend session starts
    accepted = sim.record.identifies_for(2, IdentifyOutcome.ACCEPTED)[0]
    assert accepted.at - sim.record.identifies_for(0)[0].at >= 0.3
    assert limited.at < accepted.at


async def test_exhausted_session_starts_terminate_every_session(
    sim_factory: SimFactory, raw_clients: Connect
) -> None:
    sim = await sim_factory(shards=2, max_concurrency=2, session_start_remaining=2)
    first = await raw_clients(sim.gateway_url)
    ready0 = await first.ready(shard=[0, 2])
    second = await raw_clients(sim.gateway_url)
    await second.ready(shard=[1, 2])
    assert sim.gateway.budget.remaining == 0
    third = await raw_clients(sim.gateway_url)
    await third.hello()
    await third.identify(shard=[0, 2])
    assert (await third.recv_op(9))["d"] is False
    # every live session of the token is terminated
    assert (await first.expect_close()).code == 4004
    assert (await second.expect_close()).code == 4004
    [exhausted] = sim.record.violations_of(ViolationKind.SESSION_START_EXHAUSTED)
    assert exhausted.shard_id == 0
    assert sim.record.identifies[-1].outcome is IdentifyOutcome.EXHAUSTED
    # and they cannot be resumed
    again = await raw_clients(sim.resume_url)
    await again.hello()
    await again.resume(ready0["session_id"], 1)
    assert (await again.recv_op(9))["d"] is False
    # /gateway/bot tells the truth
    assert sim.gateway.budget.available(0) == 0


async def test_session_starts_reset_after_the_window(
    sim_factory: SimFactory, raw_clients: Connect
) -> None:
    sim = await sim_factory(session_start_remaining=0, session_reset_after_ms=200)
    client = await raw_clients(sim.gateway_url)
    await client.hello()
    await client.identify()
    assert (await client.recv_op(9))["d"] is False
    await asyncio.sleep(0.25)
    await client.identify()
    await client.recv_event("READY")
    assert sim.gateway.budget.remaining == 999


async def test_resume_does_not_spend_a_session_start(
    sim_factory: SimFactory, raw_clients: Connect
) -> None:
    sim = await sim_factory(session_start_remaining=1)
    client = await raw_clients(sim.gateway_url)
    ready = await client.ready()
    for _ in range(3):
        await client.close(4000)
        client = await raw_clients(sim.resume_url)
        await client.hello()
        await client.resume(ready["session_id"], 1)
        await client.recv_event("RESUMED")
    assert sim.gateway.budget.remaining == 0
    assert len(sim.record.accepted_resumes()) == 3
    assert not sim.record.violations


async def test_garbage_input_gets_a_clear_close_and_costs_nothing_else(
    sim_factory: SimFactory, raw_clients: Connect
) -> None:
    """Random payloads: each connection ends with a documented code; the server keeps serving."""
    rng = random.Random(11)
    sim = await sim_factory(guilds=1)
    samples: list[str] = [
        "",
        "{}",
        "[]",
        '{"op":null}',
        '{"op":1.5}',
        '{"op":2,"d":[]}',
        "\x00" * 10,
    ]
    alphabet = '{}[]":,0123456789opdtsnul \\'
    samples += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 60))) for _ in range(25)]
    samples += [
        orjson.dumps({"op": rng.randint(-5, 50), "d": rng.choice([None, 1, "x", {}, []])}).decode()
        for _ in range(15)
    ]
    for raw in samples:
        client = await raw_clients(sim.gateway_url)
        await client.hello()
        await client.send(raw)
        try:
            reply = await client.recv(timeout=2)
        except GatewayClosed as closed:
            assert closed.code in (4001, 4002, 4003, 4004, 4010, 4013), (raw, closed.code)
        else:
            assert reply["op"] in (9, 11) or reply["t"] == "READY", (raw, reply)
        await client.close()
    good = await raw_clients(sim.gateway_url)
    await good.ready()
    assert len(sim.record.violations) >= len(samples) // 2
