"""The worker's side of the identify coordinator: wait for permission to IDENTIFY.

One :class:`IdentifyClient` per worker process, shared by all its shards: a
ZeroMQ DEALER connected to the coordinator (:mod:`cluster.coordinator`, in
the supervisor or standalone), speaking :mod:`protocol.coordination`.

- ``await client.acquire(shard_id)`` returns when the coordinator grants the
  shard one IDENTIFY. Any number of shards may wait at once.
- Requests are re-sent, unchanged, every ``resend_interval_s`` until
  answered. The coordinator treats a repeat as the same request (it keeps its
  place in line, or gets the same grant again), so a lost message or a
  coordinator restart never strands a shard.
- An acquire that is cancelled (``cancel(shard_id)``, task cancellation, or
  ``close()``) withdraws its request; a grant that arrives for it anyway is
  released, so the coordinator refunds the session start.
- After the IDENTIFY is written, ``sent(shard_id)`` says so (with the write's
  time), and ``answered(shard_id, at)`` when its READY is read (with the read's
  time): the server counted the IDENTIFY before it sent the READY, so the
  coordinator may open the bucket an interval after ``at``, without waiting
  for the READY's report to reach the supervisor.
- The DEALER uses its own random routing id, so a reconnect keeps the
  coordinator's picture of who asked.

This module imports only ``protocol`` and pyzmq: a worker never imports ``cluster``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import secrets
import time
from dataclasses import dataclass
from typing import Final, cast

import zmq
import zmq.asyncio

from protocol.coordination import (
    Acquire,
    Answered,
    Cancel,
    CoordinationMessage,
    ErrorReply,
    Grant,
    Release,
    Sent,
    StatusReply,
    StatusRequest,
    decode_message,
    routing_id_prefix,
)
from protocol.errors import WireFormatError

log = logging.getLogger(__name__)

DEFAULT_RESEND_INTERVAL_S: Final = 2.0
#: How often the DEALER retries its connection while the coordinator is not bound (ms).
#: The supervisor binds the coordinator only once every worker has said hello (so every
#: bucket has its whole queue from the first window), after this client connected:
#: at ZeroMQ's default 100 ms the first grants waited up to 100 ms (measured 50-70 ms
#: from the bind to the first IDENTIFY) for the next retry. The coordinator is on
#: loopback or ipc:// on this host, so retrying a failed connect every 10 ms costs
#: nothing worth counting, and only until it binds.
RECONNECT_INTERVAL_MS: Final = 10


class IdentifyClientError(Exception):
    """The coordinator refused a request, or the client cannot make it."""


class IdentifyRequestCancelledError(IdentifyClientError):
    """:meth:`IdentifyClient.cancel` withdrew the request before it was granted."""


class IdentifyClientClosedError(IdentifyClientError):
    """The client was closed while a request was waiting."""


@dataclass(slots=True)
class _Waiter:
    nonce: int
    #: the grant's not_before (None: at once)
    future: asyncio.Future[float | None]


class IdentifyClient:
    """Asks the coordinator at ``endpoint`` for identify permits; one per worker, many shards."""

    def __init__(
        self,
        endpoint: str,
        context: zmq.asyncio.Context | None = None,
        *,
        resend_interval_s: float = DEFAULT_RESEND_INTERVAL_S,
    ) -> None:
        if resend_interval_s <= 0:
            raise ValueError("resend_interval_s must be > 0")
        self.endpoint = endpoint
        self.resend_interval_s = resend_interval_s
        self._own_context = context is None
        self._context = zmq.asyncio.Context() if context is None else context
        self._socket = self._context.socket(zmq.DEALER)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.RECONNECT_IVL, RECONNECT_INTERVAL_MS)
        # A stable, unguessable routing id: the coordinator keys requests by it, across reconnects.
        self._socket.setsockopt(
            zmq.ROUTING_ID, routing_id_prefix(os.getpid()) + secrets.token_bytes(8)
        )
        self._socket.connect(endpoint)
        self._nonces = itertools.count(1)
        self._waiters: dict[int, _Waiter] = {}
        #: shard -> nonce of its latest grant, until the IDENTIFY under it is reported sent
        self._granted: dict[int, int] = {}
        #: shard -> nonce of the grant whose IDENTIFY was sent, until its answer is reported
        self._answering: dict[int, int] = {}
        #: shard -> nonce of an acquire given up before its grant came: release that grant.
        self._abandoned: dict[int, int] = {}
        self._status_waiters: list[asyncio.Future[StatusReply]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False

    # -- public API -----------------------------------------------------------------------

    async def acquire(self, shard_id: int) -> float | None:
        """Wait until the coordinator allows ``shard_id`` one IDENTIFY; returns the grant's
        ``not_before`` (``time.monotonic()`` seconds: write the IDENTIFY no earlier), or None.

        Cancelling the waiting task withdraws the request. Raises
        :class:`IdentifyClientError` if an acquire for ``shard_id`` is already
        waiting on this client or the coordinator refuses it.
        """
        self._check_open()
        if shard_id in self._waiters:
            raise IdentifyClientError(
                f"an identify request for shard {shard_id} is already waiting"
            )
        self._start()
        nonce = next(self._nonces)
        waiter = _Waiter(nonce, asyncio.get_running_loop().create_future())
        self._waiters[shard_id] = waiter
        self._abandoned.pop(shard_id, None)
        self._answering.pop(shard_id, None)  # a new IDENTIFY: the old one's answer is moot
        self._send(Acquire(shard_id, nonce))
        try:
            return await waiter.future
        except asyncio.CancelledError:
            future = waiter.future
            if future.done() and not future.cancelled() and future.exception() is None:
                # Granted, but our caller is gone: the permit goes back unused.
                self._granted.pop(shard_id, None)
                self._send(Release(shard_id, nonce))
            else:
                self._withdraw(shard_id, waiter)
            raise

    def sent(self, shard_id: int) -> None:
        """Report that the IDENTIFY under ``shard_id``'s grant was just written.

        The coordinator counts the bucket's spacing from this report, so call
        it right after the write.
        """
        nonce = self._granted.pop(shard_id, None)
        if nonce is not None and not self._closed:
            self._send(Sent(shard_id, nonce, time.monotonic()))
            self._answering[shard_id] = nonce

    def answered(self, shard_id: int, answered_at: float) -> None:
        """Report that the server answered (READY) the IDENTIFY ``shard_id`` last reported sent.

        ``answered_at``: when the READY was read (``time.monotonic()``), taken
        as soon as it was read. The server counted the IDENTIFY before it sent
        the READY, and we read the READY after that, so the coordinator may
        open the bucket one interval after ``answered_at``. Once per IDENTIFY;
        a READY after no reported IDENTIFY sends nothing.
        """
        nonce = self._answering.pop(shard_id, None)
        if nonce is not None and not self._closed:
            self._send(Answered(shard_id, nonce, answered_at))

    async def cancel(self, shard_id: int) -> bool:
        """Withdraw a waiting acquire for ``shard_id``; it raises :class:`IdentifyRequestCancelledError`."""
        waiter = self._waiters.get(shard_id)
        if waiter is None:
            return False
        self._withdraw(shard_id, waiter)
        if not waiter.future.done():
            waiter.future.set_exception(
                IdentifyRequestCancelledError(
                    f"the identify request for shard {shard_id} was cancelled"
                )
            )
        return True

    def _withdraw(self, shard_id: int, waiter: _Waiter) -> None:
        if self._waiters.get(shard_id) is waiter:
            del self._waiters[shard_id]
        if not self._closed:
            self._abandoned[shard_id] = waiter.nonce
            self._send(Cancel(shard_id, waiter.nonce))

    async def status(self) -> StatusReply:
        """The coordinator's budget and queue length (bound it with ``asyncio.timeout``)."""
        self._check_open()
        self._start()
        future: asyncio.Future[StatusReply] = asyncio.get_running_loop().create_future()
        self._status_waiters.append(future)
        self._send(StatusRequest())
        try:
            return await future
        finally:
            if future in self._status_waiters:
                self._status_waiters.remove(future)

    @property
    def waiting(self) -> frozenset[int]:
        """Shards with an acquire waiting for a grant."""
        return frozenset(self._waiters)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        error = IdentifyClientClosedError("the identify client was closed")
        for waiter in self._waiters.values():
            if not waiter.future.done():
                waiter.future.set_exception(error)
        self._waiters.clear()
        for future in self._status_waiters:
            if not future.done():
                future.set_exception(error)
        self._socket.close(linger=0)
        if self._own_context:
            self._context.term()

    async def __aenter__(self) -> IdentifyClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- internals ------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise IdentifyClientClosedError("the identify client is closed")

    def _start(self) -> None:
        if not self._tasks:
            self._tasks = [
                asyncio.create_task(self._receive_loop(), name="identify-client-recv"),
                asyncio.create_task(self._resend_loop(), name="identify-client-resend"),
            ]

    def _send(self, message: CoordinationMessage) -> None:
        # Never block: when the coordinator is away the message waits in ZeroMQ's
        # queue or is dropped at the high-water mark; the resend loop covers both.
        if self._closed:
            return
        future = cast(
            "asyncio.Future[object]", self._socket.send(message.encode(), flags=zmq.DONTWAIT)
        )
        future.add_done_callback(_ignore_send_result)

    async def _resend_loop(self) -> None:
        while True:
            await asyncio.sleep(self.resend_interval_s)
            for shard_id, waiter in list(self._waiters.items()):
                self._send(Acquire(shard_id, waiter.nonce))

    async def _receive_loop(self) -> None:
        while True:
            frame = await self._socket.recv()
            try:
                message = decode_message(frame)
            except WireFormatError as exc:
                log.warning("identify coordinator sent a malformed message: %s", exc)
                continue
            if isinstance(message, Grant):
                self._on_grant(message)
            elif isinstance(message, StatusReply):
                if self._status_waiters:
                    future = self._status_waiters.pop(0)
                    if not future.done():
                        future.set_result(message)
            elif isinstance(message, ErrorReply):
                self._on_error(message)

    def _on_grant(self, grant: Grant) -> None:
        waiter = self._waiters.get(grant.shard_id)
        if waiter is not None and waiter.nonce == grant.nonce:
            del self._waiters[grant.shard_id]
            if not waiter.future.done():
                self._granted[grant.shard_id] = grant.nonce
                waiter.future.set_result(grant.not_before)
        elif self._abandoned.get(grant.shard_id) == grant.nonce:
            del self._abandoned[grant.shard_id]
            self._send(Release(grant.shard_id, grant.nonce))
        # Otherwise a repeat of a grant already used: nothing to do (never release it).

    def _on_error(self, error: ErrorReply) -> None:
        if error.shard_id is not None and error.shard_id in self._waiters:
            waiter = self._waiters.pop(error.shard_id)
            if not waiter.future.done():
                waiter.future.set_exception(IdentifyClientError(error.reason))
            return
        log.warning("identify coordinator refused a request: %s", error.reason)


def _ignore_send_result(future: asyncio.Future[object]) -> None:
    if not future.cancelled():
        future.exception()
