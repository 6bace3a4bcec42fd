"""The identify coordinator: the pure scheduler behind a ZeroMQ ROUTER (DESIGN.md 4.5).

Workers, and across hosts other supervisors, connect a DEALER
(:class:`worker.identify_client.IdentifyClient`) and speak the versioned
format of :mod:`protocol.coordination`. This module only moves bytes and
time: every decision is :class:`cluster.identify_scheduler.IdentifyScheduler`'s.

- One asyncio task owns the socket. It sleeps exactly until the scheduler's
  next deadline or the next message, never polls on a timer.
- ``ROUTER_MANDATORY`` is on: a grant for a peer that has gone (a worker
  killed while queued) raises instead of vanishing, and the grant is handed
  back with ``undelivered`` so the session start and the bucket slot are not
  lost. ``ROUTER_HANDOVER`` lets a client that reconnects under its own
  routing id take over its old identity.
- A client that repeats an ``acquire`` it was already granted gets the same
  grant again, not a second one; ``release`` gives back an unused grant.
- When the session-start budget runs out, one loud warning line names the
  reset time; ``status_json()`` says so for /health and /status.
- With an :class:`IdentifyArbiter` (``--redis``: the buckets are shared by
  several hosts), each grant the local scheduler is about to hand out is
  first asked of the arbiter; a refusal puts the request back at the head of
  its bucket until the arbiter says to ask again. So only the head of each
  local bucket asks, once per identify; ``sent`` and unused grants are
  reported to the arbiter too.
- With ``answer_opens`` the server's answer to an IDENTIFY (its READY) opens
  the bucket one interval after it (without an explicit margin and without an
  arbiter), and only the write plus the interval plus the answer wait when no
  answer comes (see :mod:`cluster.identify_scheduler`). The worker that read
  the READY says so itself, on its DEALER, as soon as it reads it: an
  ``answered`` message with the time it read it (``answered_at``, the host's
  monotonic clock, as ``written_at``). The server counted the IDENTIFY before
  it sent the READY and the worker read the READY after that, so the worker's
  read time bounds the server's count from above; the coordinator takes the
  earlier of it and its own now, and the bucket no longer waits for the
  message's trip. The owner also calls ``answered(shard_id)`` when the READY's
  report reaches the supervisor (the fallback; the two arrive in either order,
  measured mostly the report first, and the scheduler keeps the earlier time).
  Turn it on only where every READY is reported: unanswered, every bucket waits
  for the fallback.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import zmq
import zmq.asyncio

from cluster.identify_scheduler import (
    Grant,
    IdentifyScheduler,
    SchedulerSnapshot,
    default_grant_lead,
)
from cluster.router_service import RouterService
from protocol.coordination import (
    Acquire,
    Answered,
    Cancel,
    CoordinationMessage,
    ErrorReply,
    Release,
    Sent,
    StatusReply,
    StatusRequest,
    decode_message,
    routing_id_prefix,
)
from protocol.coordination import Grant as GrantMessage
from protocol.errors import WireFormatError

log = logging.getLogger(__name__)

Clock = Callable[[], float]


class IdentifyArbiter(Protocol):
    """Whoever shares the identify buckets with other hosts (the Redis arbiter)."""

    async def grant(self, shard_id: int) -> float | None:
        """None: ``shard_id`` may IDENTIFY now; else the seconds to wait before asking again."""
        ...

    async def sent(self, shard_id: int) -> None:
        """The IDENTIFY under the shard's grant was written."""
        ...

    async def release(self, shard_id: int) -> None:
        """The shard's grant will not be used."""
        ...


@dataclass(frozen=True, slots=True)
class Requester:
    """Who asked: the peer's ZeroMQ routing id and the nonce of its acquire."""

    identity: bytes
    nonce: int


@dataclass(slots=True)
class CoordinatorStats:
    """Counters for /metrics: every grant that could not be delivered is counted."""

    grants_delivered: int = 0
    grants_undelivered: int = 0
    grants_released: int = 0
    duplicate_acquires: int = 0
    bad_messages: int = 0
    #: IDENTIFYs reported sent: their bucket's spacing counts from the report.
    sent_reports: int = 0
    #: Grants the arbiter (Redis) refused for now (the bucket busy on another host, ...).
    arbiter_deferred: int = 0
    #: Answers (READY) to IDENTIFYs the schedule took: the first for a grant, or an earlier one.
    answer_reports: int = 0
    #: Of those, the answers the worker reported itself with the time it read them.
    stamped_answers: int = 0


class Coordinator(RouterService):
    """Serves identify permits on a ROUTER bound to ``endpoint`` (tcp://, ipc:// or inproc://)."""

    service_name = "identify coordinator"

    def __init__(
        self,
        endpoint: str,
        *,
        max_concurrency: int,
        interval_s: float,
        session_total: int,
        session_remaining: int,
        reset_after_s: float,
        safety_margin_s: float | None = None,
        sent_hold_s: float | None = None,
        grant_lead_s: float | None = None,
        answer_opens: bool = False,
        answer_wait_s: float | None = None,
        context: zmq.asyncio.Context | None = None,
        clock: Clock = time.monotonic,
        on_grant: Callable[[Grant[Requester]], None] | None = None,
        arbiter: IdentifyArbiter | None = None,
    ) -> None:
        super().__init__(endpoint, context)
        self._arbiter = arbiter
        #: Reports to the arbiter in flight (sent, release): never awaited by the serving loop.
        self._reports: set[asyncio.Task[None]] = set()
        self._clock = clock
        if grant_lead_s is None:
            # Early grants (not_before) need the workers' clock: time.monotonic, this host.
            # With an arbiter the bucket is Redis's: asked early it says "busy" (no lead).
            early = sent_hold_s is not None and arbiter is None and clock is time.monotonic
            grant_lead_s = default_grant_lead(interval_s) if early else 0.0
        self.scheduler: IdentifyScheduler[Requester] = IdentifyScheduler(
            max_concurrency,
            interval_s,
            safety_margin_s,
            session_total=session_total,
            session_remaining=session_remaining,
            reset_at=clock() + reset_after_s,
            sent_hold_s=sent_hold_s,
            lead_s=grant_lead_s,
            # A bucket shared through Redis is spaced there, by the margin: no earlier local grant.
            answer_opens=answer_opens and arbiter is None,
            answer_wait_s=answer_wait_s,
        )
        self._wake: asyncio.Future[None] | None = None
        self._on_grant = on_grant
        #: The latest grant per shard, to answer a repeated acquire and to take a release.
        self._granted: dict[int, Grant[Requester]] = {}
        self._warned_exhausted = False
        self.stats = CoordinatorStats()

    def _configure(self, sock: zmq.asyncio.Socket) -> None:
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)

    def _started(self) -> None:
        log.info(
            "identify coordinator on %s: max_concurrency %d, interval %.3f s, %d of %d session starts left",
            self._endpoint,
            self.scheduler.max_concurrency,
            self.scheduler.interval_s,
            self.scheduler.remaining,
            self.scheduler.total,
        )

    def _crashed(self, exc: BaseException) -> None:
        log.critical(
            "identify coordinator stopped: no more identify permits will be granted",
            exc_info=exc,
        )

    # -- what the supervisor reads and writes ---------------------------------------------

    def snapshot(self) -> SchedulerSnapshot:
        return self.scheduler.snapshot()

    def status_json(self) -> dict[str, Any]:
        """The budget for /health and /status (``ClusterStatus(identify_snapshot=...)``)."""
        body = self.scheduler.snapshot().to_json(self._clock())
        body["undelivered"] = self.stats.grants_undelivered
        return body

    def update_limit(self, remaining: int, reset_after_s: float, total: int | None = None) -> None:
        """Fresh ``session_start_limit`` numbers from ``GET /gateway/bot``."""
        self.scheduler.update_limit(remaining, reset_after_s, self._clock(), total)
        self._poke()

    def answered(self, shard_id: int, pid: int | None = None) -> bool:
        """The server answered ``shard_id``'s latest IDENTIFY (its READY reached the supervisor now).

        Call it as soon as the READY (or the report of the session it started)
        is read: any delay only opens the bucket later. The worker's own
        ``answered`` message, stamped when it read the READY, is earlier
        whichever arrives first (the scheduler keeps the earliest answer);
        this is the fallback when that message is lost. ``pid``: the worker
        process that reported it; the answer counts only if the shard's latest
        grant went to that process (during a reshard two shard sets share the
        ids). True when the bucket's schedule took it into account.
        """
        grant = self._granted.get(shard_id)
        if grant is None or (
            pid is not None and not grant.requester.identity.startswith(routing_id_prefix(pid))
        ):
            return False
        return self._answered(grant, self._clock())

    def _answered(self, grant: Grant[Requester], at: float) -> bool:
        if not self.scheduler.answered(grant, at):
            return False
        self.stats.answer_reports += 1
        self._poke()
        return True

    def _poke(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    # -- the loop -------------------------------------------------------------------------

    async def _serve(self, sock: zmq.asyncio.Socket) -> None:
        loop = asyncio.get_running_loop()
        receiving: asyncio.Future[list[bytes]] | None = None
        try:
            while True:
                await self._grant_due(sock)
                now = self._clock()
                deadline = self.scheduler.next_deadline(now)
                timeout = None if deadline is None else max(0.0, deadline - now)
                if receiving is None:
                    receiving = asyncio.ensure_future(sock.recv_multipart())
                wake: asyncio.Future[None] = loop.create_future()
                self._wake = wake
                waiters: set[asyncio.Future[Any]] = {receiving, wake}
                await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                if receiving.done():
                    frames = receiving.result()
                    receiving = None
                    await self._receive(sock, frames)
                    # Take everything already queued before deciding again.
                    while True:
                        try:
                            frames = await sock.recv_multipart(flags=zmq.DONTWAIT)
                        except zmq.Again:
                            break
                        await self._receive(sock, frames)
        finally:
            if receiving is not None:
                receiving.cancel()
            if self._wake is not None:
                self._wake.cancel()

    async def _receive(self, sock: zmq.asyncio.Socket, frames: list[bytes]) -> None:
        if len(frames) != 2:
            self.stats.bad_messages += 1
            return
        identity, frame = frames
        try:
            message = decode_message(frame)
        except WireFormatError as exc:
            self.stats.bad_messages += 1
            await self._send(sock, identity, ErrorReply(str(exc)))
            return
        await self._handle(sock, identity, message)

    async def _handle(
        self, sock: zmq.asyncio.Socket, identity: bytes, message: CoordinationMessage
    ) -> None:
        now = self._clock()
        if isinstance(message, Acquire):
            requester = Requester(identity, message.nonce)
            previous = self._granted.get(message.shard_id)
            if previous is not None and previous.requester == requester:
                # A repeat of an acquire we already granted: the same grant again, not a new one.
                self.stats.duplicate_acquires += 1
                await self._send(sock, identity, GrantMessage(message.shard_id, message.nonce))
                return
            self.scheduler.request(message.shard_id, requester, now)
        elif isinstance(message, Cancel):
            self.scheduler.cancel(message.shard_id, Requester(identity, message.nonce))
        elif isinstance(message, Release):
            grant = self._granted.get(message.shard_id)
            if grant is not None and grant.requester == Requester(identity, message.nonce):
                del self._granted[message.shard_id]
                if self.scheduler.undelivered(grant, now):
                    self.stats.grants_released += 1
                    self._report(message.shard_id, sent=False)
        elif isinstance(message, Sent):
            grant = self._granted.get(message.shard_id)
            if (
                grant is not None
                and grant.requester == Requester(identity, message.nonce)
                and self.scheduler.sent(grant, now, message.written_at)
            ):
                self.stats.sent_reports += 1
                self._report(message.shard_id, sent=True)
        elif isinstance(message, Answered):
            # The worker read the READY at answered_at (after the server counted the
            # IDENTIFY): no later than now. One before the write is ignored by the scheduler.
            grant = self._granted.get(message.shard_id)
            if grant is not None and grant.requester == Requester(identity, message.nonce):
                at = now if message.answered_at is None else min(now, message.answered_at)
                if self._answered(grant, at):
                    self.stats.stamped_answers += 1
        elif isinstance(message, StatusRequest):
            await self._send(sock, identity, self._status_reply(now))
        else:
            self.stats.bad_messages += 1
            await self._send(sock, identity, ErrorReply(f"a client may not send {message.TYPE!r}"))

    def _status_reply(self, now: float) -> StatusReply:
        snap = self.scheduler.snapshot()
        return StatusReply(
            remaining=snap.remaining,
            total=snap.total,
            exhausted=snap.exhausted,
            reset_after_s=max(0.0, snap.reset_at - now),
            max_concurrency=snap.max_concurrency,
            interval_s=snap.interval_s,
            queued=sum(snap.queued),
        )

    async def _grant_due(self, sock: zmq.asyncio.Socket) -> None:
        # A grant handed back frees its bucket at once, so poll again until nothing is due.
        while True:
            now = self._clock()
            grants = self.scheduler.poll(now)
            if not grants:
                break
            undelivered = False
            if self._arbiter is not None:
                grants = await self._arbitrate(grants)
            for grant in grants:
                early = grant.not_before > now
                frame = GrantMessage(
                    grant.shard_id, grant.requester.nonce, grant.not_before if early else None
                ).encode()
                try:
                    await sock.send_multipart([grant.requester.identity, frame], flags=zmq.DONTWAIT)
                except zmq.ZMQError as exc:
                    # EHOSTUNREACH (ROUTER_MANDATORY: the peer is gone) or EAGAIN (its queue is full).
                    self.scheduler.undelivered(grant, self._clock())
                    self.stats.grants_undelivered += 1
                    self._report(grant.shard_id, sent=False)
                    undelivered = True
                    log.info(
                        "identify grant for shard %d not delivered (%s): refunded",
                        grant.shard_id,
                        exc.strerror,
                    )
                    continue
                previous = self._granted.get(grant.shard_id)
                if previous is not None:
                    # A newer grant for the shard: the older one can no longer be released.
                    self.scheduler.confirm(previous)
                self._granted[grant.shard_id] = grant
                self.stats.grants_delivered += 1
                if self._on_grant is not None:
                    try:
                        self._on_grant(grant)
                    except Exception:
                        log.exception("on_grant hook failed for shard %d", grant.shard_id)
            if not undelivered:
                break
        self._warn_if_exhausted()

    async def stop(self) -> None:
        reports = list(self._reports)
        if reports:
            # A ``sent`` still on its way opens the shared bucket at the right time; bounded.
            await asyncio.wait(reports, timeout=1.0)
            for task in reports:
                task.cancel()
        await super().stop()

    async def _arbitrate(self, grants: list[Grant[Requester]]) -> list[Grant[Requester]]:
        """The grants the arbiter allows; the others wait at the head of their buckets."""
        assert self._arbiter is not None
        allowed: list[Grant[Requester]] = []
        for grant in grants:
            retry_after = await self._arbiter.grant(grant.shard_id)
            if retry_after is None:
                allowed.append(grant)
            else:
                self.stats.arbiter_deferred += 1
                self.scheduler.deferred(grant, self._clock() + max(retry_after, 0.001))
        return allowed

    def _report(self, shard_id: int, *, sent: bool) -> None:
        if self._arbiter is None:
            return
        call = self._arbiter.sent(shard_id) if sent else self._arbiter.release(shard_id)
        task = asyncio.create_task(call, name=f"arbiter-report-{shard_id}")
        self._reports.add(task)
        task.add_done_callback(self._reports.discard)

    def _warn_if_exhausted(self) -> None:
        snap = self.scheduler.snapshot()
        if not snap.exhausted:
            self._warned_exhausted = False
            return
        if self._warned_exhausted:
            return
        self._warned_exhausted = True
        reset_in = max(0.0, snap.reset_at - self._clock())
        at = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=reset_in)
        log.warning(
            "IDENTIFY BUDGET EXHAUSTED: 0 of %d session starts left; no shard will IDENTIFY until "
            "the limit resets in %.0f s (%s); %d waiting",
            snap.total,
            math.ceil(reset_in),
            at.strftime("%Y-%m-%d %H:%M:%S UTC"),
            sum(snap.queued),
        )

    async def _send(
        self, sock: zmq.asyncio.Socket, identity: bytes, message: CoordinationMessage
    ) -> None:
        # Replies other than grants are best effort: a gone peer needs no answer.
        with contextlib.suppress(zmq.ZMQError):
            await sock.send_multipart([identity, message.encode()], flags=zmq.DONTWAIT)
