"""Summarize a ``py-spy record -f raw`` file: where the samples are, by leaf function and by caller.

``python -m scripts.bench.pyspy_summary FILE [TOP]``
"""

from __future__ import annotations

import collections
import sys


def summarize(path: str, top: int = 15) -> str:
    leaf: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            n = int(count)
            total += n
            frames = stack.split(";")
            leaf[frames[-1]] += n
            for frame in set(frames):
                inclusive[frame] += n
    out = [f"{total} samples", "self (leaf) time:"]
    out += [f"  {n / total * 100:5.1f} %  {name}" for name, n in leaf.most_common(top)]
    out.append("inclusive time:")
    out += [f"  {n / total * 100:5.1f} %  {name}" for name, n in inclusive.most_common(top)]
    return "\n".join(out)


if __name__ == "__main__":
    print(summarize(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 15))
