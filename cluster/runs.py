"""What the relay hands on besides the PUB socket: each published run of events.

A run is consecutive events of one shard's session: ``(shard_id, epoch, first_seq,
events)`` where each event is its ``(topic, payload)`` slices of the worker's message
(memoryviews, valid as long as the consumer keeps them). Only events the relay
publishes (after dedupe) are handed on, in publication order, so a consumer sees
each ``(shard_id, seq)`` of a session once. Consumers: the Redis Streams sink
(:mod:`cluster.sink`) and any in-process tap registered with the relay.
"""

from __future__ import annotations

from typing import Any, Protocol

#: (topic, payload) slices of one event, as the relay has them
EventSlices = tuple[Any, Any]


class RunConsumer(Protocol):
    """Takes the relay's published runs; must not block (no I/O in ``add``)."""

    def add(self, shard_id: int, epoch: int, first_seq: int, events: list[EventSlices]) -> None:
        """A run just published: ``events`` are seqs ``first_seq ..`` of session ``epoch``."""

    def flush(self) -> None:
        """The relay finished a batch of runs."""
