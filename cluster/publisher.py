"""The PUB side of the relay: an XPUB socket that never blocks the supervisor and counts drops.

An XPUB (not a PUB) so that a full subscriber is *seen*: with ``XPUB_NODROP=1``
a send to a subscriber at its high-water mark fails with ``EAGAIN`` instead of
vanishing. Then the message is sent once more with ``XPUB_NODROP=0``: libzmq
checks the high-water mark only over the pipes whose subscriptions match, so
every subscriber with room still gets it and only the full ones miss it; one
drop is counted (DESIGN.md rule 5: bounded memory, drops counted, the shards
never wait for a subscriber).

What the counter can see (measured, libzmq 4.3): a failed write takes the
full subscriber's pipe out of the *eligible* set until that subscriber has
read down to its low-water mark; while it is out, messages for it are dropped
without any EAGAIN. So :attr:`Publisher.dropped` counts overflow *episodes*
(the first event each full subscriber missed), not every event missed; a
subscriber sees exactly what it missed from the per-shard ``seq`` gaps in the
header. An exact per-event count would need one queue per subscriber in the
supervisor (a ROUTER fan-out), which costs a copy per event per subscriber.

Subscription messages (``\\x01topic`` / ``\\x00topic``) arrive on the XPUB's
receive side; they are drained after every batch and when the socket signals,
so they never pile up, and the net count of subscriptions is kept.
"""

from __future__ import annotations

import functools
import logging
from typing import Final

import zmq
import zmq.backend

log = logging.getLogger(__name__)

_MORE: Final = int(zmq.NOBLOCK | zmq.SNDMORE)
_LAST: Final = int(zmq.NOBLOCK)
_NOBLOCK: Final = int(zmq.NOBLOCK)


class Publisher:
    """Owns the XPUB socket bound to ``--pub``."""

    def __init__(self, context: zmq.Context[zmq.Socket[bytes]], endpoint: str, hwm: int) -> None:
        sock: zmq.Socket[bytes] = context.socket(zmq.XPUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, hwm)
        sock.setsockopt(zmq.XPUB_NODROP, 1)
        try:
            sock.bind(endpoint)
        except zmq.ZMQError:
            sock.close(linger=0)
            raise
        self.socket = sock
        self.endpoint: str = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._send = functools.partial(zmq.backend.Socket.send, sock)
        self._recv = functools.partial(zmq.backend.Socket.recv, sock)
        self.dropped = 0
        self.subscriptions = 0

    def publish(
        self, topic: bytes | memoryview, header: bytes, payload: bytes | memoryview
    ) -> bool:
        """Send one event (three frames); False when some subscriber was full and missed it."""
        send = self._send
        try:
            send(topic, _MORE)
        except zmq.Again:
            return self._publish_dropping(topic, header, payload)
        send(header, _MORE)
        send(payload, _LAST)
        return True

    def _publish_dropping(
        self, topic: bytes | memoryview, header: bytes, payload: bytes | memoryview
    ) -> bool:
        sock = self.socket
        sock.setsockopt(zmq.XPUB_NODROP, 0)
        try:
            send = self._send
            send(topic, _MORE)
            send(header, _MORE)
            send(payload, _LAST)
        finally:
            sock.setsockopt(zmq.XPUB_NODROP, 1)
        self.dropped += 1
        return False

    def drain_subscriptions(self) -> None:
        """Read every pending (un)subscription message; keep the net count."""
        recv = self._recv
        while True:
            try:
                message = recv(_NOBLOCK)
            except zmq.Again:
                return
            if isinstance(message, bytes) and message:
                if message[0] == 1:
                    self.subscriptions += 1
                elif message[0] == 0:
                    self.subscriptions = max(0, self.subscriptions - 1)

    def close(self) -> None:
        self.socket.close(linger=0)
