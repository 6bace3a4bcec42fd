"""The benchmark command in smoke mode: every benchmark path runs end to end and reports.

``python -m scripts.bench --quick`` with tiny sizes, in its own process (it
starts its own load sources, receivers and sinks as processes). Nothing is
asserted on timings: only that every benchmark produced figures, that the
markdown report names the machine and each section, and that receivers which
are not installed are skipped with a reason rather than failing the run. The
``redis`` benchmark (``cluster up --redis`` against a local redis-server, and its
``--sink redis`` part) runs its parts at once in this mode; where redis-server is
missing it is skipped. The ``reshard`` benchmark reshards a 16-shard cluster to 32
with events flowing: every event once and the marker once are checked.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(170)
def test_quick_bench_runs_every_benchmark(tmp_path: Path) -> None:
    out = tmp_path / "BENCHMARKS.md"
    raw = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "scripts.bench", "--quick", "--out", str(out), "--json", str(raw)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(raw.read_text())
    skipped = data["skipped"]
    assert data["errors"] == []
    measured = set(data["throughput"])
    assert {"floor", "worker"} <= measured
    for name in ("cluster", "discord.py", "hikari", "discordjs-ws"):
        assert name in measured or name in skipped, f"{name} neither measured nor skipped"
    for name, fig in data["throughput"].items():
        assert len(fig["cpu_us"]) == 1 and fig["cpu_us"][0] > 0, name
        assert fig["eps"][0] > 0, name
        assert fig["paced_cpu_us"][0] > 0 and fig["pss_mb"][0] > 0, name
    assert "1000" in data["latency"]["worker"]
    [lat] = data["latency"]["worker"]["1000"]
    assert lat["n"] > 0 and 0 < lat["p50"] <= lat["p99"] <= lat["p999"]
    assert data["startup"]["worker"][0]["total_s"] > 0
    assert data["memory"]["worker"][0]["pss_mb"] > 0
    if "cluster" not in skipped:  # `cluster up` itself: supervisor + workers
        assert data["startup"]["cluster"][0]["total_s"] > 0
        assert data["memory"]["cluster"][0]["pss_mb"] > data["memory"]["worker"][0]["pss_mb"]
    if "redis" not in skipped:  # cluster up --redis: every part ran, tiny
        redis = data["redis"]
        [cpu] = redis["cpu"]
        assert cpu["off_us"] > 0 and cpu["on_us"] > 0 and cpu["ratio"] > 0
        [ident] = redis["identify"]
        assert ident["granted"] >= redis["sizes"]["identify_shards"]
        [micro] = redis["micro"]
        assert (
            micro["n"] == redis["sizes"]["micro_calls"] and 0 < micro["p50_us"] <= micro["max_us"]
        )
        if "redis takeover" not in skipped:
            [take] = redis["takeover"]
            assert take["resumed"] == take["shards"] > 0
            assert take["identifies"] == 0, "the spare identified instead of resuming"
        if "redis sink" not in skipped:  # --sink redis off, msgpack, json; every event read back
            [group] = redis["sink"]
            assert all(group[f"{c}_us"] > 0 for c in ("off", "msgpack", "json"))
            [flood] = redis["sink_rate"]
            assert flood["off_pub_eps"] > 0
            for c in ("msgpack", "json"):
                assert group[f"{c}_entries"] == group[f"{c}_events"] > 0
                assert flood[f"{c}_entries"] == flood[f"{c}_events"] > 0
                assert flood[f"{c}_sink_eps"] > 0
    if "reshard" not in skipped:  # cluster up 16 -> 32 shards, events flowing
        [reshard] = data["reshard"]["runs"]
        assert reshard["switch_s"] > 0 and reshard["markers"] == 1
        assert reshard["events"] > 0 and reshard["lost"] == 0 and reshard["duplicated"] == 0
        assert reshard["shards_after"] == 32 and reshard["peak_rss_mb"] > 0
    text = out.read_text()
    for heading in ("## Machine", "## CPU per event", "## Latency", "## Startup", "## Memory"):
        assert heading in text
    if "reshard" not in skipped:
        assert "## Reshard (16 -> 32 shards)" in text
    if "redis" not in skipped:
        assert "## Redis" in text
        if "redis sink" not in skipped:
            assert "### Sink" in text
    assert "Smoke mode" in text
    for name, why in skipped.items():
        assert f"skipping {name}: {why}" in proc.stderr
    # --render writes the same report again from the raw figures, running nothing
    again = tmp_path / "again.md"
    rendered = subprocess.run(
        [sys.executable, "-m", "scripts.bench", "--render", str(raw), "--out", str(again)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert rendered.returncode == 0, rendered.stderr[-3000:]
    assert again.read_text().split("\n", 3)[3] == text.split("\n", 3)[3]  # all but the header line
