"""Our worker alone as a benchmark receiver: ``worker.main.run_worker`` in this process.

``python -m scripts.bench.worker_proc GATEWAY_URL SHARDS TOKEN EVENT_ENDPOINT [MAX_CONCURRENCY INTERVAL]``

The worker's PUSH connects to the benchmark's PULL (another process). No
coordinator: identify permits come from the in-process scheduler with the
given ``max_concurrency`` and identify interval.
"""

from __future__ import annotations

import sys

from protocol.compression import Compression
from worker.main import run_worker
from worker.spec import WorkerSpec

#: GUILDS | GUILD_MESSAGES | GUILD_PRESENCES | MESSAGE_CONTENT
INTENTS = 1 | 512 | 256 | 32768


def main() -> None:
    base, shards, token, endpoint = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    mc = int(sys.argv[5]) if len(sys.argv) > 5 else shards
    interval = float(sys.argv[6]) if len(sys.argv) > 6 else 0.01
    spec = WorkerSpec(
        worker_id=0,
        shard_ids=tuple(range(shards)),
        total_shards=shards,
        token=token,
        intents=INTENTS,
        gateway_url=base,
        event_endpoint=endpoint,
        compression=Compression.ZLIB_STREAM,
        max_concurrency=mc,
        identify_interval_s=interval,
        log_level="WARNING",
    )
    run_worker(spec)


if __name__ == "__main__":
    main()
