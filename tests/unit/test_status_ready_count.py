"""``ClusterStatus.ready_reported``: the READY count kept per report equals the one counted."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from cluster.status import ClusterStatus
from protocol.ipc import ShardReport
from protocol.session import ShardPhase

PHASES = [p.value for p in ShardPhase]
WORKERS = [(0, (0, 1, 2)), (1, (3, 4, 5))]

steps = st.lists(
    st.one_of(
        st.tuples(st.just("report"), st.integers(0, 7), st.sampled_from(PHASES)),
        st.tuples(st.just("lost"), st.integers(0, 1), st.just("")),
        st.tuples(st.just("assign"), st.just(0), st.just("")),
    ),
    max_size=60,
)


@settings(max_examples=300)
@given(steps)
def test_the_count_kept_per_report_is_the_count_over_every_shard(
    actions: list[tuple[str, int, str]],
) -> None:
    status = ClusterStatus(6, WORKERS)
    for kind, n, phase in actions:
        if kind == "report":  # shards 6 and 7 are not ours: ignored
            changed = status.apply_report(ShardReport(n, phase, 1, "s", "u"))
            assert changed in (True, False)
        elif kind == "lost":
            status.shards_lost(WORKERS[n][1])
        else:
            status.assign(6, WORKERS)
        assert status.ready_reported == status.shards_ready


def test_only_a_change_of_readiness_is_reported_as_one() -> None:
    status = ClusterStatus(1, [(0, (0,))])
    assert status.apply_report(ShardReport(0, "ready", 1, "s", "u"))
    assert not status.apply_report(ShardReport(0, "ready", 2, "s", "u")), "periodic: no change"
    assert status.apply_report(ShardReport(0, "resuming", 2, "s", "u"))
    assert not status.apply_report(ShardReport(0, "connecting", 2, "s", "u"))
