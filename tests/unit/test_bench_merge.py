"""``python -m scripts.bench --merge``: which notes of the earlier run come along."""

from __future__ import annotations

from scripts.bench.run import QUICK, Results, merge


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
