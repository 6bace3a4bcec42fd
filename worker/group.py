"""A group of shards on one event loop, wired to the supervisor over ZeroMQ.

:class:`ShardGroup` runs one :class:`Shard` per shard id of a
:class:`worker.spec.WorkerSpec` on the current loop and owns the worker's
sockets:

- a PUSH to ``event_endpoint``: events, shard reports and worker status, in
  order (protocol/ipc.py); events are sent without blocking, and when the
  high-water mark is reached the shard that produced the event waits (and so
  stops reading its socket) instead of dropping it;
- a DEALER to ``command_endpoint`` (optional): COMMAND and STOP from the
  supervisor; a HELLO is sent first so the supervisor's ROUTER knows us.

Liveness comes from this loop: every ``report_interval_s`` each shard's state
is reported, so a stuck loop shows as silence.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import multiprocessing
import os
import signal
from collections.abc import Callable
from typing import Any, Final

import aiohttp
import zmq
import zmq.asyncio
import zmq.backend

from protocol import ipc
from protocol.errors import WireFormatError
from protocol.gateway import explain_fatal
from protocol.ipc import ShardReport, WorkerStatus, WorkerStatusKind
from worker.permits import LocalPermits, PermitSource
from worker.shard import FatalCloseError, Shard, ShardConfig
from worker.spec import WorkerSpec

log = logging.getLogger("worker.group")

#: Shards of a group connected ahead of their IDENTIFY, in rounds of max_concurrency.
IDENTIFY_ROUNDS_AHEAD: Final = 2
#: Messages queued towards the supervisor before shards wait. With
#: :data:`FLUSH_BYTES` this is also a bound in bytes (see :class:`ZmqOutput`).
EVENT_HWM: Final = 64
#: Bytes of cut runs (full or broken runs) an iteration queues before they are sent at
#: once, without waiting for the iteration to end.
FLUSH_BYTES: Final = 1 << 20
#: How long a stopping worker may wait, in all, to send its final reports (the sessions
#: to resume) through a full channel.
FINAL_REPORTS_S: Final = 3.0
#: With the supervisor gone, the process ends by SIGALRM this long after it saw so,
#: whatever its loop is doing: nobody reads it any more, and a worker that outlives
#: its supervisor would hold its shards' sessions against the next one.
ORPHAN_EXIT_S: Final = 10
#: The longest wait for the channel's descriptor before its state is looked at anyway.
DRAIN_RECHECK_S: Final = 0.05
_MORE: Final = int(zmq.NOBLOCK | zmq.SNDMORE)
_LAST: Final = int(zmq.NOBLOCK)


def shard_config(spec: WorkerSpec, shard_id: int) -> ShardConfig:
    """The runner configuration of one of ``spec``'s shards."""
    return ShardConfig(
        shard_id=shard_id,
        total_shards=spec.total_shards,
        token=spec.token,
        intents=spec.intents,
        gateway_url=spec.gateway_url,
        compression=spec.compression,
        api_version=spec.api_version,
        large_threshold=spec.large_threshold,
        presence=spec.presence,
        max_message_size=spec.max_message_size,
        backoff=spec.backoff,
        new_session_delay_s=spec.new_session_delay_s,
        send_window_s=spec.send_window_s,
    )


def _dropped(frame: Any, flags: int = 0) -> None:
    """The channel's send once it is abandoned: nothing is sent, nothing waits."""


class _CutRuns(list[Any]):
    """The encoder's closed runs, as a list that sends them once they reach FLUSH_BYTES.

    :meth:`protocol.ipc.EventRunsEncoder.add` appends a run here when it cuts it (at
    :data:`protocol.ipc.MAX_RUN_EVENTS` events, a gap or a new session): once per cut
    run, not per event (gaps and new sessions are rare), so the count costs the hot path
    nothing per event.
    """

    __slots__ = ("_output", "bytes")

    def __init__(self, output: ZmqOutput) -> None:
        super().__init__()
        self._output = output
        #: bytes of the runs cut since the last send
        self.bytes = 0

    def append(self, run: Any) -> None:
        list.append(self, run)
        self.bytes += sum(map(len, run.parts))
        if self.bytes >= FLUSH_BYTES:
            self._output.flush_cut()


class ZmqOutput(ipc.EventRunsEncoder):
    """The worker's ordered channel to the supervisor (a PUSH socket), events batched.

    Every event queued in one event-loop iteration (one read burst), of every
    shard, leaves as one EVENT_RUNS message (protocol/ipc.py: two ZeroMQ
    frames, whatever the number of events) when the iteration ends
    (``loop.call_soon``), never later. The message is built by the one
    EVENT_RUNS encoder, :class:`protocol.ipc.EventRunsEncoder`: each shard's
    consecutive events form a run, cut at :data:`protocol.ipc.MAX_RUN_EVENTS`
    events, at a gap in the sequence or at a new session. It is this class's
    base, not a member, so ``event`` is the encoder's ``add`` itself: no
    second call per event. libzmq's cost is per frame and per message,
    so this pays it once per iteration instead of three times per event, and
    the supervisor's reads shrink the same way. A report first flushes the
    events queued before it, so the channel keeps the order the shards
    produced per shard.

    Memory is bounded in bytes, not only in messages: one iteration can take
    thousands of events (every shard's socket buffer, read flat out), and the
    runs cut in it are sent as soon as they hold :data:`FLUSH_BYTES`, mid-iteration;
    what is left at its end is the shards' open runs (at most
    ``MAX_RUN_EVENTS - 1`` events each). So a message holds about FLUSH_BYTES
    (plus the open runs), and the channel at most :data:`EVENT_HWM` of them.

    Back-pressure: a flush that meets the high-water mark keeps its runs,
    ``event`` then refuses (False) until ``drain`` has flushed them; ``drain``
    waits on the socket's descriptor (ZMQ_FD, edge-triggered: ZMQ_EVENTS is
    read after every wake-up), with a :data:`DRAIN_RECHECK_S` recheck as a fallback.
    """

    def __init__(self, socket: zmq.Socket[bytes], loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._socket = socket
        # The backend's send skips the sugar layer's per-call Python checks
        # (copy thresholds, enum flags).
        self._send: Callable[..., None] = functools.partial(zmq.backend.Socket.send, socket)
        #: True once the supervisor is gone: everything is dropped (:meth:`abandon`)
        self.abandoned = False
        self._loop = loop
        self._scheduled = False
        self.send_blocked = 0
        self.messages = 0
        self._cut = self._closed = _CutRuns(self)
        self._fd: int | None = None
        #: resolved when the socket may take a message again (shared by every waiting shard)
        self._writable: asyncio.Future[None] | None = None
        self._recheck: asyncio.TimerHandle | None = None

    #: Queue one dispatch (:class:`worker.shard.ShardOutput`): the encoder's ``add``.
    event = ipc.EventRunsEncoder.add

    def _first_event(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush_soon)

    def _flush_soon(self) -> None:
        self._scheduled = False
        self.flush()

    def flush(self) -> bool:
        """Send every queued run; False (runs kept) when the high-water mark is met."""
        send = self._send
        while (head := self.next_head()) is not None:
            # A multipart message is atomic: only its first frame can meet the
            # high-water mark, so a refused first frame means nothing was sent.
            try:
                send(head, _MORE)
            except zmq.Again:
                self.send_blocked += 1
                self.refusing = True
                return False
            send(self.next_body(), _LAST)
            self.messages += 1
        self._cut.bytes = 0
        self.refusing = False
        return True

    def flush_cut(self) -> None:
        """Send the cut runs now, the open ones stay (called from inside ``add``).

        Every shard's cut runs precede its open run, so the order per shard holds.
        A refusal keeps them (``add`` then refuses, as after any refused flush).
        """
        open_runs = self._open
        self._open = {}  # next_head closes every open run: none here
        try:
            self.flush()
        finally:
            self._open = open_runs

    def abandon(self) -> None:
        """Nobody reads the channel any more (the supervisor is gone): what is queued and
        what comes next is dropped, so no shard and no report waits for a reader."""
        self.abandoned = True
        self._send = _dropped
        self.flush()
        self._wake()

    async def drain(self) -> None:
        """Return once every queued run is sent (the shard may queue again)."""
        while True:
            if self.abandoned:
                self.flush()
                await asyncio.sleep(0)  # a stopping shard's cancellation gets in
                return
            if int(self._socket.getsockopt(zmq.EVENTS)) & zmq.POLLOUT and self.flush():
                return
            # Shielded: one shard cancelled while waiting must not cancel the others' wait.
            await asyncio.shield(self._until_writable())

    def _until_writable(self) -> asyncio.Future[None]:
        waiter = self._writable
        if waiter is None or waiter.done():
            waiter = self._writable = self._loop.create_future()
            if self._fd is None:
                fd = self._socket.getsockopt(zmq.FD)
                assert isinstance(fd, int)
                self._fd = fd
            self._loop.add_reader(self._fd, self._on_fd)
            self._recheck = self._loop.call_later(DRAIN_RECHECK_S, self._wake)
            # Edge-triggered: a change before add_reader would never signal.
            self._on_fd()
        return waiter

    def _on_fd(self) -> None:
        # Reading ZMQ_EVENTS also re-arms the descriptor.
        if int(self._socket.getsockopt(zmq.EVENTS)) & zmq.POLLOUT:
            self._wake()

    def _wake(self) -> None:
        waiter = self._writable
        if waiter is None:
            return
        self._writable = None
        if self._fd is not None:
            self._loop.remove_reader(self._fd)
        if self._recheck is not None:
            self._recheck.cancel()
            self._recheck = None
        if not waiter.done():
            waiter.set_result(None)

    def close(self) -> None:
        """Stop watching the socket (before it is closed); waiting drains wake."""
        self._wake()

    async def send(self, frames: list[bytes]) -> None:
        """Send a non-event message after every event queued before it."""
        while not self.abandoned:
            if self.flush():
                try:
                    self._socket.send_multipart(frames, zmq.NOBLOCK)
                    return
                except zmq.Again:
                    pass
            await self.drain()

    async def report(self, report: ShardReport) -> None:
        await self.send(ipc.encode_shard_report(report))


class ShardGroup:
    """Runs every shard of a :class:`WorkerSpec` on the running loop."""

    def __init__(self, spec: WorkerSpec, context: zmq.asyncio.Context) -> None:
        self.spec = spec
        self._context = context
        self._stop = asyncio.Event()
        self._parent_pid = os.getppid()
        self._parent_gone = False
        self.stop_reason: str | None = None
        self.shards: dict[int, Shard] = {}
        self.fatal_code: int | None = None

    def stop(self, reason: str = "stop", *, end_sessions: bool = False) -> None:
        """Drain: every shard closes with 4000 (1000 with ``end_sessions``) and reports; ``run()`` returns."""
        if self.stop_reason is None:
            self.stop_reason = reason
        self._stop.set()
        for shard in self.shards.values():
            shard.stop(end_session=end_sessions)

    async def run(self) -> WorkerStatusKind:
        spec = self.spec
        push: zmq.Socket[bytes] = zmq.Socket(self._context, zmq.PUSH)
        push.setsockopt(zmq.SNDHWM, EVENT_HWM)
        push.setsockopt(zmq.LINGER, 5000)
        push.connect(spec.event_endpoint)
        output = ZmqOutput(push, asyncio.get_running_loop())
        dealer: zmq.asyncio.Socket | None = None
        if spec.command_endpoint is not None:
            dealer = self._context.socket(zmq.DEALER)
            dealer.setsockopt(zmq.ROUTING_ID, ipc.worker_routing_id(spec.worker_id))
            dealer.setsockopt(zmq.LINGER, 0)
            dealer.connect(spec.command_endpoint)
            await dealer.send_multipart(ipc.encode_hello(ipc.Hello(spec.worker_id, os.getpid())))
        permits = self._permits()
        helpers: list[asyncio.Task[None]] = []
        runs: dict[asyncio.Task[None], int] = {}
        result = WorkerStatusKind.DRAINED
        try:
            await output.send(ipc.encode_worker_status(self._status(WorkerStatusKind.STARTED)))
            # No connection limit: aiohttp's default of 100 would hold every
            # shard past the 100th in the connector's queue, never connecting.
            connector = aiohttp.TCPConnector(limit=0)
            identify_slots = asyncio.Semaphore(IDENTIFY_ROUNDS_AHEAD * spec.max_concurrency)
            async with aiohttp.ClientSession(connector=connector) as http:
                for shard_id in spec.shard_ids:
                    self.shards[shard_id] = Shard(
                        shard_config(spec, shard_id),
                        http,
                        permits,
                        output,
                        spec.saved_session(shard_id),
                        identify_slots=identify_slots,
                    )
                if self._stop.is_set():
                    self.stop()
                for sid, shard in self.shards.items():
                    runs[asyncio.create_task(shard.run(), name=f"shard-{sid}")] = sid
                helpers.append(asyncio.create_task(self._report_loop(output)))
                helpers.append(asyncio.create_task(self._parent_watch(output)))
                if dealer is not None:
                    helpers.append(asyncio.create_task(self._command_loop(dealer)))
                pending = set(runs)
                while pending:
                    done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                    for task in done:
                        exc = task.exception()
                        if isinstance(exc, FatalCloseError):
                            result = WorkerStatusKind.FATAL
                            if self.fatal_code is None:
                                self.fatal_code = exc.code
                            self.stop(f"fatal close code {exc.code} on shard {exc.shard_id}")
                        elif exc is not None:
                            log.error("shard %d crashed: %r", runs[task], exc)
                            self.stop("a shard crashed")
                            result = WorkerStatusKind.FATAL
        finally:
            # Only a cancelled run() gets here with shards still running.
            for task in (*runs, *helpers):
                task.cancel()
            for task in (*runs, *helpers):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            with contextlib.suppress(Exception):
                await permits.close()
            # Final reports (sessions to resume), then the worker's last word: within one
            # deadline for all of them (a channel that stays full must not hold the exit
            # for seconds per shard: it did, for 2 s a shard).
            await self._last_words(output, result)
            # With the supervisor gone nobody will read what is queued: exit at once.
            output.close()
            push.close(linger=0 if self._parent_gone else 5000)
            if dealer is not None:
                dealer.close(linger=0)
        return result

    def _status(self, kind: WorkerStatusKind) -> WorkerStatus:
        detail = self.stop_reason
        if kind is WorkerStatusKind.FATAL and self.fatal_code is not None:
            detail = explain_fatal(self.fatal_code, self.spec.intents)
        return WorkerStatus(
            worker_id=self.spec.worker_id,
            pid=os.getpid(),
            status=kind.value,
            fatal_code=self.fatal_code,
            detail=detail,
            shard_ids=list(self.spec.shard_ids),
        )

    def _permits(self) -> PermitSource:
        spec = self.spec
        if spec.coordinator_endpoint is None:
            return LocalPermits(spec.max_concurrency, spec.identify_interval_s)
        from worker.identify_client import IdentifyClient

        client: PermitSource = IdentifyClient(spec.coordinator_endpoint, self._context)
        return client

    async def _last_words(self, output: ZmqOutput, result: WorkerStatusKind) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + FINAL_REPORTS_S
        messages = [
            *(
                ipc.encode_shard_report(s.snapshot(reason=self.stop_reason))
                for s in self.shards.values()
            ),
            ipc.encode_worker_status(self._status(result)),
        ]
        for frames in messages:
            left = deadline - loop.time()
            if left <= 0:
                log.warning(
                    "worker %d: the channel stayed full: final reports not sent",
                    self.spec.worker_id,
                )
                return
            with contextlib.suppress(Exception):
                await asyncio.wait_for(output.send(frames), left)

    async def _report_loop(self, output: ZmqOutput) -> None:
        # Liveness from the event loop itself: a stuck loop stops these reports.
        while True:
            await asyncio.sleep(self.spec.report_interval_s)
            for shard in self.shards.values():
                await output.report(shard.snapshot())

    def _parent_alive(self) -> bool:
        # A spawned child holds a sentinel of its parent that stays valid even
        # when the parent died before we looked; getppid() is the fallback.
        parent = multiprocessing.parent_process()
        if parent is not None and not parent.is_alive():
            return False
        return os.getppid() == self._parent_pid

    async def _parent_watch(self, output: ZmqOutput) -> None:
        while True:
            await asyncio.sleep(self.spec.parent_check_interval_s)
            if not self._parent_alive():
                self._parent_gone = True
                log.warning("worker %d: the supervisor is gone; draining", self.spec.worker_id)
                self.stop("parent gone")
                # What is queued may still be read (the channel outlives its writer's
                # parent); a channel that stays full must not hold the stop for good.
                asyncio.get_running_loop().call_later(FINAL_REPORTS_S, output.abandon)
                signal.alarm(ORPHAN_EXIT_S)  # the default action ends the process
                return

    async def _command_loop(self, dealer: zmq.asyncio.Socket) -> None:
        while True:
            frames = await dealer.recv_multipart()
            try:
                message = ipc.decode(frames)
            except WireFormatError as exc:
                log.warning("worker %d: dropped a malformed command: %s", self.spec.worker_id, exc)
                continue
            if isinstance(message, ipc.Stop):
                self.stop(
                    "end sessions command" if message.end_sessions else "stop command",
                    end_sessions=message.end_sessions,
                )
            elif isinstance(message, ipc.Command):
                shard = self.shards.get(message.shard_id)
                if shard is None:
                    log.warning(
                        "worker %d: command for shard %d, which is not ours",
                        self.spec.worker_id,
                        message.shard_id,
                    )
                else:
                    shard.send_command(message.payload)
            else:
                log.warning(
                    "worker %d: unexpected %s on the command channel",
                    self.spec.worker_id,
                    type(message).__name__,
                )
