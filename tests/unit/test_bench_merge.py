"""``python -m scripts.bench --merge``: which notes of the earlier run come along."""

from __future__ import annotations

from scripts.bench.run import QUICK, Results, earlier_load, merge


def test_a_new_merge_replaces_the_earlier_merge_note() -> None:
    earlier = {
        "memory": {"cluster": [{"pss_mb": 100.0}]},
        "notes": [
            "memory, cluster: measured at idle",
            "memory, reshard: figures of an earlier run (`--merge`); this run measured startup.",
        ],
    }
    res = Results(QUICK, quick=True, repeat=1)
    res.startup = {"cluster": [{"total_s": 4.0}]}
    merge(res, earlier)
    said = [n for n in res.notes if "figures of an earlier run" in n]
    assert len(said) == 1 and said[0].startswith("memory: figures of an earlier run")
    assert "memory, cluster: measured at idle" in res.notes  # a note of a figure still shown


def test_notes_of_a_benchmark_measured_again_drop() -> None:
    earlier = {"startup": {"cluster": [{"total_s": 5.0}]}, "notes": ["startup, cluster: slow"]}
    res = Results(QUICK, quick=True, repeat=1)
    res.startup = {"cluster": [{"total_s": 4.0}]}
    merge(res, earlier)
    assert res.notes == []


def test_the_load_of_merged_benchmarks_is_kept_once_each() -> None:
    old = [
        ["before redis", [2.0, 1.0, 1.0]],
        ["end", [2.5, 1.0, 1.0]],
        ["before throughput", [0.5, 0.5, 0.5]],
        ["before redis", [0.9, 0.8, 0.7]],
        ["end", [1.0, 1.0, 1.0]],
    ]
    now = [("before throughput", (0.1, 0.2, 0.3)), ("end", (0.4, 0.5, 0.6))]
    assert earlier_load(old, now) == [("before redis", (0.9, 0.8, 0.7))]
