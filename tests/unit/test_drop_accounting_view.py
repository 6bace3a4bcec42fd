"""Every drop in /status and /metrics: per shard and reason from the workers, per event at the PUB tap."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.registry import CollectorRegistry

from cluster.http import ClusterCollector
from cluster.status import ClusterStatus
from protocol import ipc


def metrics(status: ClusterStatus) -> list[str]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ClusterCollector(status))
    return generate_latest(registry).decode().splitlines()


def test_shard_drops_show_per_shard_in_status_and_per_shard_and_reason_in_metrics() -> None:
    status = ClusterStatus(2, [(0, (0, 1))])
    dropped = {ipc.DispatchDrop.SEQ_INVALID.value: 13, ipc.DispatchDrop.SEQ_MISSING.value: 1}
    status.apply_report(ipc.ShardReport(1, "ready", 4, "s", "u", events=1, dropped=dropped))
    shards = status.to_status_json()["shards"]
    assert [s["dropped"] for s in shards] == [{}, {"seq_invalid": 13, "seq_missing": 1}]
    lines = metrics(status)
    assert 'titanium_shard_dropped_total{reason="seq_invalid",shard="1"} 13.0' in lines
    assert 'titanium_shard_dropped_total{reason="seq_missing",shard="1"} 1.0' in lines
    assert not [
        line
        for line in lines
        if line.startswith('titanium_shard_dropped_total{reason="seq_invalid",shard="0"')
    ]


def test_relay_drops_and_subscribers_show_in_status_and_metrics() -> None:
    status = ClusterStatus(1, [(0, (0,))])
    relay = status.relay
    relay.pub_dropped, relay.pub_disconnected_dropped, relay.duplicates_dropped = 7, 3, 2
    relay.subscribers, relay.subscriptions, relay.pub_queued = 2, 3, 40
    body = status.to_status_json()["relay"]
    assert body["pub_dropped"] == 7 and body["pub_disconnected_dropped"] == 3
    assert (body["subscribers"], body["subscriptions"], body["pub_queued"]) == (2, 3, 40)
    lines = metrics(status)
    for line in (
        'titanium_relay_dropped_total{reason="pub_hwm"} 7.0',
        'titanium_relay_dropped_total{reason="pub_disconnected"} 3.0',
        'titanium_relay_dropped_total{reason="duplicate"} 2.0',
        "titanium_relay_subscribers 2.0",
        "titanium_relay_subscriptions 3.0",
        "titanium_relay_pub_queued 40.0",
    ):
        assert line in lines, line
