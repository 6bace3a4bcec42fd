"""The counters of one subscription (``subscription.stats``), updated as events flow.

One record for both transports; the Redis-only counters stay 0 on a PUB tap.
The object is live: read it at any time, copy it with :func:`dataclasses.replace`
for a snapshot.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Stats:
    """What a subscription received, handed out, dropped and settled."""

    #: Events decoded from the transport (before duplicate dropping).
    received: int = 0
    #: Events handed to the ``async for`` loop.
    delivered: int = 0
    #: Messages or entries that are not events in the expected layout (skipped on PUB,
    #: dead-lettered on Redis).
    malformed: int = 0
    #: A seq already seen in its shard's session (or older than the remembered window).
    duplicates: int = 0
    #: Duplicates not handed to the loop (``drop_duplicates=True``); on Redis also acked.
    duplicates_dropped: int = 0
    #: A seq below the highest seen that was not seen before (reordered, or filling a gap).
    late: int = 0
    #: Gap reports (each also passed to ``on_gap``).
    gaps: int = 0
    #: Seqs skipped, summed over all gaps.
    missed: int = 0
    #: (shard, session) pairs seen begin.
    sessions: int = 0
    #: ``TITANIUM_RESHARD`` markers: the cluster switched to a new shard set.
    reshards: int = 0
    # -- Redis Streams only -----------------------------------------------------------------
    #: Entries acknowledged (XACK), explicitly or after the loop body returned.
    acked: int = 0
    #: XACKs Redis answered 0 for: the entry was no longer pending (acked after a claim).
    stale_acks: int = 0
    #: Acknowledgements that failed (Redis unreachable): those entries will be delivered again.
    ack_failures: int = 0
    #: ``nak()`` calls.
    naked: int = 0
    #: ``term()`` calls.
    terminated: int = 0
    #: Entries of other (dead or slow) consumers taken over by XAUTOCLAIM.
    claimed: int = 0
    #: Events handed out with a delivery count above 1 (never dropped as duplicates).
    redelivered: int = 0
    #: Entries moved to the dead-letter stream (too many deliveries, undecodable, ``term()``).
    dead_lettered: int = 0
    #: Pending entries trimmed from the stream before anyone acked them (never handled).
    lost: int = 0
    #: Redis connection failures the subscription waited out and retried.
    reconnects: int = 0
