"""The status page's reshard block: the page's own script, run by Node.js against /status bodies.

The page draws in the browser, so the test runs its ``<script>`` as written
(cluster/status_page.py) in ``node`` with a stand-in ``document`` (elements by
id) and a ``fetch`` that answers the given ``/status`` and ``/health`` bodies,
then reads what one ``refresh()`` put into ``#reshard``. Node.js is what CI
installs for the Node consumers (.ci/run); without it the test skips (in CI it fails).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from typing import Any

import pytest

from cluster.reshard import describe_progress
from cluster.status_page import STATUS_PAGE_HTML

#: Before the page's script: elements by id, no timers, and a fetch that answers the bodies
#: of the case being drawn (the page's own first refresh, before any case, waits forever).
STAND_INS = """
const elements = {};
const element = id => elements[id] ??= {
  id, hidden: false, className: "", textContent: "", innerHTML: "",
  classList: {toggle() {}},
};
globalThis.document = {getElementById: element, title: ""};
globalThis.setInterval = () => 0;
let bodies = null;
globalThis.fetch = url =>
  bodies === null ? new Promise(() => {}) : Promise.resolve({json: async () => bodies[url]});
"""
#: After it: one refresh per /status body on stdin; what #reshard (and #problems) hold.
DRIVER = """
const cases = JSON.parse(require("fs").readFileSync(0, "utf8"));
(async () => {
  const out = [];
  for (const status of cases) {
    bodies = {status, health: {status: "ok", role: "owner"}};
    await refresh();
    const block = element("reshard");
    out.push({hidden: block.hidden, html: block.innerHTML,
              problems: element("problems").textContent});
  }
  process.stdout.write(JSON.stringify(out));
  process.exit(0);
})();
"""


def page_script() -> str:
    match = re.search(r"<script>(.*)</script>", STATUS_PAGE_HTML, re.DOTALL)
    assert match is not None
    return match[1]


def node() -> str:
    path = shutil.which("node")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("node is not installed; in CI .ci/run installs it")
        pytest.skip("node is not installed (CI installs it and runs this test)")
    return path


def render(*reshards: dict[str, Any] | None) -> list[dict[str, Any]]:
    """What ``#reshard`` holds after a refresh of a /status with each ``reshard`` section."""
    statuses = []
    for reshard in reshards:
        status: dict[str, Any] = {
            "shards": [{"shard_id": 0, "state": "ready", "events": 0, "worker_id": 0}],
            "shards_ready": 1,
            "workers": [],
            "uptime_s": 5,
        }
        if reshard is not None:
            status["reshard"] = reshard
        statuses.append(status)
    result = subprocess.run(
        [node(), "-e", STAND_INS + page_script() + DRIVER],
        input=json.dumps(statuses),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out: list[dict[str, Any]] = json.loads(result.stdout)
    for shown in out:
        assert shown["problems"] == "", shown  # the refresh worked
    return out


def items(html: str) -> dict[str, str]:
    return dict(re.findall(r"<span>([a-z ]+) <b>([^<]*)</b></span>", html))


RUNNING = {
    "switched_total": 0,
    "abandoned_total": 0,
    "deduplicated_total": 0,
    "phase": "starting",
    "old_shards": 1024,
    "new_shards": 2048,
    "new_ready": 512,
    "guild_creates_complete": False,
    "held_events": 900,
    "fingerprints": 1200,
    "deduplicated": 0,
    "elapsed_s": 3.4,
    "eta_s": 4.8,
    "error": None,
}


def test_a_running_reshard_shows_counts_progress_elapsed_and_time_left() -> None:
    [shown] = render(RUNNING)
    assert shown["hidden"] is False
    html = shown["html"]
    assert "<b>Reshard in progress: 1024 &rarr; 2048 shards</b>" in html
    assert '<span class="phase starting">starting</span>' in html
    assert '<i style="width:25.0%"></i>' in html  # 512 of 2048 new shards ready
    assert items(html) == {
        "new shards ready": "512 / 2048",
        "guilds": "not yet",
        "elapsed": "3.4 s",
        "time left": "about 4.8 s",
        "duplicates dropped": "0",
    }
    assert 'class="why"' not in html


def test_a_switched_reshard_shows_what_it_took_and_the_duplicates_dropped() -> None:
    switched = {
        **RUNNING,
        "switched_total": 1,
        "phase": "switched",
        "new_ready": 2048,
        "guild_creates_complete": True,
        "deduplicated": 37,
        "elapsed_s": 131.0,
        "eta_s": None,
    }
    [shown] = render(switched)
    html = shown["html"]
    assert "<b>Last reshard: 1024 &rarr; 2048 shards</b>" in html
    assert '<span class="phase switched">switched</span>' in html
    assert '<i style="width:100.0%"></i>' in html
    assert items(html) == {
        "new shards ready": "2048 / 2048",
        "guilds": "complete",
        "took": "2m 11s",
        "duplicates dropped": "37",
    }


def test_an_abandoned_reshard_says_why_escaped() -> None:
    abandoned = {
        **RUNNING,
        "phase": "abandoned",
        "abandoned_total": 1,
        "eta_s": None,
        "error": "a shard of the new set was closed with 4014 <disallowed intents>",
    }
    [shown] = render(abandoned)
    html = shown["html"]
    assert '<span class="phase abandoned">abandoned</span>' in html
    assert (
        '<div class="why">abandoned: a shard of the new set was closed with 4014 '
        "&lt;disallowed intents&gt;</div>"
    ) in html
    assert "time left" not in items(html)


def test_no_reshard_hides_the_block_and_a_later_refresh_clears_it() -> None:
    none, running, gone, totals_only = render(None, RUNNING, None, {"switched_total": 0})
    assert none == {"hidden": True, "html": "", "problems": ""}
    assert running["hidden"] is False
    assert gone == {"hidden": True, "html": "", "problems": ""}
    assert totals_only["hidden"] is True


def test_describe_progress_says_the_time_left_while_starting() -> None:
    assert describe_progress(RUNNING) == (
        "1024 -> 2048 shards: starting, 512/2048 new shards ready, 3.4 s, about 4.8 s left"
    )
    switched = {**RUNNING, "phase": "switched", "new_ready": 2048, "eta_s": None}
    assert "left" not in describe_progress(switched)


def test_the_time_left_is_the_fullest_buckets_shards_not_ready_one_interval_each() -> None:
    """``eta_s`` of /status's reshard section (the new set's identify schedule)."""
    from types import SimpleNamespace

    from cluster.planner import plan_cluster
    from cluster.range_owner import _Generation
    from cluster.reshard import Fingerprints, HeldRuns, ReshardPhase

    plan = plan_cluster(32, None, 2, 4, 2)  # 32 new shards, max_concurrency 4: 8 per bucket
    spec: Any = SimpleNamespace(identify_interval_s=0.5)
    absent: Any = None  # the book, channel, relay and pool play no part in the status
    gen = _Generation(
        16, plan, absent, absent, absent, absent, spec, HeldRuns(), Fingerprints(), 0.0, 100.0
    )
    assert gen.status_json(1.0)["eta_s"] == 4.0  # 8 windows of 0.5 s
    gen.ready.update(range(8))  # two of each bucket
    assert gen.status_json(1.0)["eta_s"] == 3.0
    gen.ready.update(s for s in range(32) if s % 4 != 1)  # bucket 1 lags: it sets the pace
    assert gen.status_json(1.0)["eta_s"] == 3.0
    gen.ready.update(range(32))
    assert gen.status_json(1.0)["eta_s"] == 0.0
    gen.phase = ReshardPhase.SWITCHED
    assert gen.status_json(1.0)["eta_s"] is None
