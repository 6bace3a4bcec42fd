"""A group of shards on one event loop, wired to the supervisor.

:class:`ShardGroup` runs one :class:`Shard` per shard id of a
:class:`worker.spec.WorkerSpec` on the current loop and owns the worker's
sockets:

- a PUSH connection to ``event_endpoint`` (:mod:`worker.output`): events, shard
  reports and worker status, in order (protocol/ipc.py); events are sent
  without blocking, and when too much waits for the kernel the shard that
  produced the event waits (and so stops reading its socket) instead of
  dropping it;
- a DEALER to ``command_endpoint`` (optional): COMMAND and STOP from the
  supervisor; a HELLO is sent first so the supervisor's ROUTER knows us.

Liveness comes from this loop: every ``report_interval_s`` each shard's state
is reported, so a stuck loop shows as silence.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
from typing import Final

import zmq
import zmq.asyncio

from protocol import ipc
from protocol.errors import WireFormatError
from protocol.gateway import explain_fatal
from protocol.ipc import WorkerStatus, WorkerStatusKind
from worker.output import ChannelOutput, connect
from worker.permits import LocalPermits, PermitSource
from worker.shard import FatalCloseError, Shard, ShardConfig
from worker.spec import WorkerSpec

log = logging.getLogger("worker.group")

#: Shards of a group connected ahead of their IDENTIFY, in rounds of max_concurrency.
IDENTIFY_ROUNDS_AHEAD: Final = 2
#: How long an exiting worker may block to hand what waits to the kernel (libzmq's
#: linger, which the PUSH had before).
CLOSE_LINGER_S: Final = 5.0
#: How long a stopping worker may wait, in all, to send its final reports (the sessions
#: to resume) through a full channel.
FINAL_REPORTS_S: Final = 3.0
#: With the supervisor gone, the process ends by SIGALRM this long after it saw so,
#: whatever its loop is doing: nobody reads it any more, and a worker that outlives
#: its supervisor would hold its shards' sessions against the next one.
ORPHAN_EXIT_S: Final = 10


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
        output = ChannelOutput(connect(spec.event_endpoint), asyncio.get_running_loop())
        output.on_lost = self._channel_lost
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
            identify_slots = asyncio.Semaphore(IDENTIFY_ROUNDS_AHEAD * spec.max_concurrency)
            for shard_id in spec.shard_ids:
                self.shards[shard_id] = Shard(
                    shard_config(spec, shard_id),
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
            output.close(linger_s=0 if self._parent_gone else CLOSE_LINGER_S)
            if dealer is not None:
                dealer.close(linger=0)
        return result

    def _channel_lost(self) -> None:
        if not self._parent_gone:
            log.error(
                "worker %d: the channel to the supervisor broke; stopping", self.spec.worker_id
            )
        self.stop("channel lost")

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

    async def _last_words(self, output: ChannelOutput, result: WorkerStatusKind) -> None:
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

    async def _report_loop(self, output: ChannelOutput) -> None:
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

    async def _parent_watch(self, output: ChannelOutput) -> None:
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
