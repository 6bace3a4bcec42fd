"""The worker process entry point: ``run_worker(spec)``, in a fresh process (spawned or forked).

Everything with a thread or a file descriptor (the uvloop loop, the ZeroMQ
context, the HTTP session) is created here, in the child, never inherited.

Exit codes are part of the protocol with the supervisor
(:class:`protocol.exitcodes.ExitCode`): ``OK`` (0) stopped or drained (STOP
command, SIGTERM, parent gone; sessions were reported for RESUME), ``CRASH`` (1)
an unexpected error (respawned with backoff), ``FATAL`` (78) a fatal gateway
close code (4004, 4010-4014): **not** respawned; the WORKER_STATUS message
names the code and the fix.

SIGTERM drains like a STOP command. SIGINT is ignored: a Ctrl-C in a terminal
reaches the whole process group, and the supervisor decides how its workers
stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys

import zmq.asyncio

from protocol.exitcodes import ExitCode
from protocol.ipc import WorkerStatusKind
from protocol.logformat import JsonFormatter, TokenRedactor
from worker.group import ShardGroup
from worker.spec import WorkerSpec


async def serve(spec: WorkerSpec) -> int:
    """Run the worker's shards on the running loop until stopped; return the exit code."""
    context = zmq.asyncio.Context()
    group = ShardGroup(spec, context)
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread
        loop.add_signal_handler(signal.SIGTERM, group.stop, "SIGTERM")
    try:
        result = await group.run()
    finally:
        context.term()
    return (
        ExitCode.FATAL
        if result is WorkerStatusKind.FATAL and group.fatal_code is not None
        else (ExitCode.CRASH if result is WorkerStatusKind.FATAL else ExitCode.OK)
    )


def _install_loop() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def configure_logging(spec: WorkerSpec) -> None:
    """stderr, in the supervisor's format (text or JSON lines), the token redacted."""
    handler = logging.StreamHandler(sys.stderr)
    if spec.log_json:
        handler.setFormatter(JsonFormatter({"worker_id": spec.worker_id}))
    else:
        handler.setFormatter(
            logging.Formatter(
                f"%(asctime)s worker-{spec.worker_id} %(levelname)s %(name)s: %(message)s"
            )
        )
    handler.addFilter(TokenRedactor(spec.token))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(spec.log_level)


def run_worker(spec: WorkerSpec) -> None:
    """Process target: run ``spec`` in this (fresh) process and exit with a documented code."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    configure_logging(spec)
    _install_loop()
    try:
        code = asyncio.run(serve(spec))
    except Exception:
        logging.getLogger("worker").exception("worker %d crashed", spec.worker_id)
        code = ExitCode.CRASH
    sys.exit(code)
