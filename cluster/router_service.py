"""A ZeroMQ ROUTER bound to one endpoint and served by one asyncio task.

The lifecycle shared by the identify coordinator and the control socket:
bind (resolving an ephemeral tcp port through LAST_ENDPOINT), serve, log a
crash loudly, and on stop cancel the task, close the socket with linger 0
and terminate the context only when it is our own.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import ClassVar, Self

import zmq
import zmq.asyncio


class RouterService:
    #: What the service is called in errors and in its task's name.
    service_name: ClassVar[str] = "router service"

    def __init__(self, endpoint: str, context: zmq.asyncio.Context | None) -> None:
        self._requested_endpoint = endpoint
        self._own_context = context is None
        self._context = context
        self._socket: zmq.asyncio.Socket | None = None
        self._endpoint: str | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def endpoint(self) -> str:
        """The bound endpoint, with an ephemeral tcp port resolved (valid after :meth:`start`)."""
        if self._endpoint is None:
            raise RuntimeError(f"the {self.service_name} is not started")
        return self._endpoint

    @property
    def running(self) -> bool:
        """True while the service's task serves (False before start, after stop or a crash)."""
        return self._task is not None and not self._task.done()

    def _configure(self, sock: zmq.asyncio.Socket) -> None:
        """Socket options before bind."""

    async def _serve(self, sock: zmq.asyncio.Socket) -> None:
        raise NotImplementedError

    def _crashed(self, exc: BaseException) -> None:
        """Called once when the serving task ends with an exception."""

    def _started(self) -> None:
        """Called once the socket is bound and the task runs."""

    async def start(self) -> None:
        if self._task is not None:
            raise RuntimeError(f"the {self.service_name} is already started")
        if self._context is None:
            self._context = zmq.asyncio.Context()
        sock = self._context.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        self._configure(sock)
        try:
            sock.bind(self._requested_endpoint)
        except zmq.ZMQError:
            sock.close(linger=0)
            self._close_context()
            raise
        self._socket = sock
        self._endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._task = asyncio.create_task(self._serve(sock), name=self.service_name)
        self._task.add_done_callback(self._on_done)
        self._started()

    def _on_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self._crashed(exc)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            # A crash was already reported by _crashed; stopping must still release the socket.
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None
        self._close_context()

    def _close_context(self) -> None:
        if self._own_context and self._context is not None:
            self._context.term()
            self._context = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
