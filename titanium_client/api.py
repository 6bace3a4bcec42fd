"""The entry points: :func:`subscribe` picks the transport from the URL.

``tcp://``, ``ipc://`` (or a list of them: one per host) is the cluster's PUB
tap (:class:`~titanium_client.pub.PubSubscription`); ``redis://``,
``rediss://`` or ``unix://`` is the Redis Streams sink read by a consumer
group (:class:`~titanium_client.streams.StreamSubscription`). Options that only
one transport has raise ``TypeError`` on the other; the transport classes take
the same options with full typing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from titanium_client.pub import PubSubscription, is_pub_endpoint
from titanium_client.streams import StreamSubscription, is_redis_url
from titanium_client.subscription import GapCallback, Subscription


def subscribe(
    url: str | Sequence[str],
    *,
    events: Sequence[str] | None = None,
    group: str | None = None,
    detect_gaps: bool | None = None,
    drop_duplicates: bool | None = None,
    on_gap: GapCallback | None = None,
    **options: Any,
) -> Subscription:
    """Subscribe to a cluster's events; use the result with ``async with`` and ``async for``.

    - ``subscribe("tcp://127.0.0.1:5555", events=["MESSAGE_"])``: the PUB tap,
      ``events`` are name prefixes (None: all). Gaps are reported when nothing
      is filtered; duplicates are dropped.
    - ``subscribe("redis://127.0.0.1:6379/0", group="mybot", events=["MESSAGE_CREATE"])``:
      the Redis Streams sink, ``events`` are stream names (required), ``group``
      the consumer group (required). Events are acknowledged after the loop body
      returns; duplicates and gaps are only counted (see :mod:`titanium_client.streams`).

    ``options`` go to :class:`PubSubscription` (``hwm``, ``window``, ...) or
    :class:`StreamSubscription` (``consumer``, ``ack_wait``, ``max_deliveries``,
    ``batch``, ``auto_ack``, ``dead_letter``, ...).
    """
    urls = [url] if isinstance(url, str) else list(url)
    if urls and all(is_pub_endpoint(u) for u in urls):
        if group is not None:
            raise TypeError("group= is for Redis Streams; a PUB tap has no consumer groups")
        return PubSubscription(
            urls,
            events=events,
            detect_gaps=detect_gaps,
            drop_duplicates=True if drop_duplicates is None else drop_duplicates,
            on_gap=on_gap,
            **options,
        )
    if len(urls) == 1 and is_redis_url(urls[0]):
        if group is None:
            raise TypeError("subscribing to Redis Streams needs group= (the consumer group)")
        if events is None:
            raise TypeError("subscribing to Redis Streams needs events= (stream names)")
        return StreamSubscription(
            urls[0],
            group=group,
            events=events,
            detect_gaps=bool(detect_gaps),
            drop_duplicates=bool(drop_duplicates),
            on_gap=on_gap,
            **options,
        )
    raise ValueError(
        "subscribe() takes PUB endpoints (tcp://HOST:PORT, ipc://PATH; several as a list) "
        "or one Redis URL (redis://HOST:PORT/DB)"
    )
