"""Stopping background tasks for good: :func:`cancel_and_wait`.

``task.cancel()`` is one request: a coroutine that drops the CancelledError goes on
running, and whoever then awaits the task waits for good. Python 3.11's
``asyncio.wait_for`` drops it when the cancellation arrives after the awaited
result but before wait_for resumed (it returns the result); so may code further
down a task's stack. A loop that drops one never ends: ``cluster up`` hung in its
graceful stop so, waiting for the checkpoint loop (its wait_for woken by a worker's
last READY report in the loop turn the stop cancelled it) and, once, for the Redis
monitor loop (cancelled during its Redis and HTTP round trips).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any, Final

#: How long a cancelled task may run on before it is cancelled again.
RECANCEL_S: Final = 0.2


async def cancel_and_wait(tasks: Iterable[asyncio.Future[Any] | None]) -> None:
    """Cancel ``tasks`` (None ignored) and wait until each has ended, cancelling again
    one that goes on after :data:`RECANCEL_S`; their results and errors are dropped."""
    every = [task for task in tasks if task is not None]
    pending = set(every)
    while pending := {task for task in pending if not task.done()}:
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=RECANCEL_S)
    for task in every:
        if not task.cancelled():
            task.exception()  # retrieved: not logged as never retrieved
