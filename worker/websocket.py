"""A shard's websocket to the gateway: picows underneath, whole messages up, one ending.

picows (a Cython websocket client) parses the frames of a read in place and
calls back once per frame, with no task, future or message object per frame as
aiohttp's reader had. :class:`GatewaySocket` is that callback. It hands each
whole message to its consumer (``on_message(payload, binary)``), and tells it
once how the socket ended (:class:`Ending`). It also owns what the protocol asks
beyond one frame:

- fragmented messages are put together, up to ``max_message_size``;
- messages that arrive before the consumer starts (Hello can come with the
  upgrade response) wait, with reading paused, and are handed over on ``start``;
- :meth:`pause` and :meth:`resume` stop and restart reading from the kernel (a
  shard waiting for its output or on a state change);
- the close handshake: :meth:`close` sends our code and waits for the server's
  close or the end of the stream; a server's close frame is answered by the
  consumer's :meth:`close` with the code it chooses.

Pings are answered by picows. Nothing is logged per frame; picows's own log
is kept to warnings. picows runs here on the event loop's own transports
(uvloop's, as everything else in the worker), not on aiofastnet's, which it
would pick by itself: the pause, resume and TLS shutdown this module relies on
are uvloop's, tested here over TLS as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable
from enum import Enum
from typing import Final, NamedTuple

import picows
from picows import WSCloseCode, WSFrame, WSMsgType, WSTransport

#: picows logs every disconnect at INFO; the shard logs what matters itself.
_PICOWS_LOG: Final = logging.getLogger("worker.websocket.picows")
_PICOWS_LOG.setLevel(logging.WARNING)

#: The kernel's receive buffer of a gateway connection (SO_RCVBUF). Linux would grow it up
#: to net.ipv4.tcp_rmem's maximum (32 MiB here) behind a fast sender, and picows's read
#: buffer, which doubles whenever a read fills it and never shrinks, would follow. 1 MiB
#: carries 10 MB/s per shard at a 100 ms round trip; flat out, 256 KiB cost the worker
#: about a quarter more CPU per event in smaller reads (scripts/bench history).
RECEIVE_BUFFER_BYTES: Final = 1024 * 1024

_TEXT: Final = WSMsgType.TEXT
_BINARY: Final = WSMsgType.BINARY
_CONTINUATION: Final = WSMsgType.CONTINUATION
_CLOSE: Final = WSMsgType.CLOSE

MessageHandler = Callable[[bytes, bool], None]


class EndKind(Enum):
    """How a gateway socket ended."""

    #: The server sent a close frame (its code in :attr:`Ending.code`, None without one).
    SERVER_CLOSE = "server_close"
    #: A message over ``max_message_size``: we closed with 1009.
    TOO_BIG = "too_big"
    #: A frame that breaks the websocket protocol: we closed with its code.
    PROTOCOL_ERROR = "protocol_error"
    #: The stream ended or broke without a close frame.
    LOST = "lost"


class Ending(NamedTuple):
    kind: EndKind
    code: int | None = None
    detail: str = ""


class GatewaySocket(picows.WSListener):
    """One websocket; :meth:`connect` opens it, :meth:`start` begins handing messages over."""

    def __init__(self, max_message_size: int) -> None:
        super().__init__()
        self._max = max_message_size
        self._transport: WSTransport | None = None
        self._on_message: MessageHandler | None = None
        self._on_end: Callable[[Ending], None] | None = None
        self._started = False
        #: The consumer has decided how this ends (or has been told).
        self._done = False
        self._early: list[tuple[bytes, bool]] = []
        self._ending: Ending | None = None
        self._parts: bytearray | None = None
        self._parts_binary = False
        self._reading = True

    @classmethod
    async def connect(
        cls,
        url: str,
        max_message_size: int,
        timeout_s: float,
        ssl_context: ssl.SSLContext | None = None,
    ) -> GatewaySocket:
        """Open a websocket to ``url`` (TCP, TLS for wss://, the upgrade) within ``timeout_s``.

        Raises TimeoutError, OSError (ConnectionResetError: closed before the upgrade's
        answer) or :class:`picows.WSError` (a refused upgrade). A socket that is given
        up on (the timeout, a cancel) is dropped, also if its upgrade completes later.
        """
        gateway = cls(max_message_size)
        try:
            async with asyncio.timeout(timeout_s):
                _, listener = await picows.ws_connect(
                    lambda *_: gateway,
                    url,
                    ssl_context=ssl_context,
                    websocket_handshake_timeout=timeout_s,
                    max_frame_size=max_message_size,
                    logger_name=_PICOWS_LOG,
                    # the event loop's own transports (uvloop's): see the module's docstring
                    use_aiofastnet=False,
                )
        except BaseException:
            gateway._abandon()
            raise
        if listener is not gateway:
            gateway._abandon()
            raise ConnectionResetError("the connection closed before the websocket upgrade")
        return gateway

    # -- what the consumer calls ---------------------------------------------------

    def start(self, on_message: MessageHandler, on_end: Callable[[Ending], None]) -> None:
        """Hand what came so far and each message from now on to ``on_message``; the
        ending, once, to ``on_end``."""
        self._started = True
        self._on_message = on_message
        self._on_end = on_end
        if self._ending is None:
            self.resume()  # first: one of the early messages may pause it again
        early, self._early = self._early, []
        for payload, binary in early:
            if self._on_message is None:
                return  # one of them decided how this ends
            on_message(payload, binary)
        if self._ending is not None:
            self._end(self._ending)

    def stop_messages(self) -> None:
        """Hand nothing more over (the consumer has decided how this ends)."""
        self._done = True
        self._on_message = None
        self._on_end = None
        self.pause()

    def pause(self) -> None:
        """Read nothing more from the kernel (messages already read are still handed over)."""
        if self._reading:
            self._set_reading(False)

    def resume(self) -> None:
        if not self._reading and self._on_message is not None:
            self._set_reading(True)

    def send_text(self, data: bytes) -> None:
        """Send one text frame; ConnectionResetError once the socket is closing or gone."""
        transport = self._transport
        if transport is None or transport.is_disconnected or transport.is_close_frame_sent:
            raise ConnectionResetError("the gateway socket is closed")
        transport.send(_TEXT, data)

    @property
    def closed(self) -> bool:
        transport = self._transport
        return transport is None or transport.is_disconnected

    async def close(self, code: int, timeout_s: float) -> None:
        """Send a close frame with ``code`` (unless one went out), then give the server
        ``timeout_s`` to answer it and end the stream before dropping the connection."""
        self.stop_messages()
        transport = self._transport
        if transport is None:
            return
        try:
            if not transport.is_disconnected:
                if not transport.is_close_frame_sent:
                    transport.send_close(WSCloseCode(code))
                # Reading again only to see the server's answer and the end of the stream
                # (a TLS shutdown reads the server's close_notify too).
                self._set_reading(True)
                handshake = transport.close_handshake
                if handshake is not None and handshake.recv is not None:
                    transport.disconnect()  # the server spoke first: our answer ends it
            with contextlib.suppress(Exception):
                async with asyncio.timeout(timeout_s):
                    await transport.wait_disconnected()
        finally:
            transport.disconnect(graceful=False)

    # -- picows's callbacks -----------------------------------------------------

    def on_ws_connected(self, transport: WSTransport) -> None:
        self._transport = transport
        if self._done:
            transport.disconnect(graceful=False)  # connect() gave up on it (_abandon)
            return
        self.pause()  # until start(): Hello may come with the upgrade response
        sock = transport.underlying_transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)

    def pause_writing(self) -> None:
        """The kernel's send buffer is full: commands are few (rate-limited), let them queue."""

    def resume_writing(self) -> None:
        pass

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        msg_type = frame.msg_type
        if transport.is_close_frame_sent and not self._counts_after_close(transport, frame):
            return
        if (msg_type is _BINARY or msg_type is _TEXT) and frame.fin and self._parts is None:
            self._deliver(frame.get_payload_as_bytes(), msg_type is _BINARY)
        elif msg_type is _CLOSE:
            self._end(Ending(EndKind.SERVER_CLOSE, frame.get_close_code().value or None))
        elif msg_type is _TEXT or msg_type is _BINARY:
            if self._parts is not None:
                self._fail(WSCloseCode.PROTOCOL_ERROR, "a new message inside a fragmented one")
                return
            self._parts = bytearray(frame.get_payload_as_memoryview())
            self._parts_binary = msg_type is _BINARY
        elif msg_type is _CONTINUATION:
            parts = self._parts
            if parts is None:
                self._fail(WSCloseCode.PROTOCOL_ERROR, "a continuation frame with no message")
                return
            parts += frame.get_payload_as_memoryview()
            if len(parts) > self._max:
                self._parts = None
                self._fail(WSCloseCode.MESSAGE_TOO_BIG, f"a message over {self._max} bytes")
            elif frame.fin:
                self._parts = None
                self._deliver(bytes(parts), self._parts_binary)
        # A PING is answered by picows; a PONG needs nothing.

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        handshake = transport.close_handshake
        if handshake is not None and handshake.sent is not None and not handshake.recv_then_sent:
            # We closed first. Unless the consumer did (then nobody listens), picows
            # did: a frame it could not parse, or one over the size limit.
            self._fail(handshake.sent.code, handshake.sent.reason)
        else:
            self._end(Ending(EndKind.LOST))

    # -- inside -------------------------------------------------------------------

    def _deliver(self, payload: bytes, binary: bool) -> None:
        on_message = self._on_message
        if on_message is not None:
            on_message(payload, binary)
        elif not self._started:
            self._early.append((payload, binary))

    def _counts_after_close(self, transport: WSTransport, frame: WSFrame) -> bool:
        """Whether a frame read after a close frame went out is still handed over.

        After the consumer's close, none is: the server's close frame answers it.
        After picows's own (a frame it could not parse, or one over the size
        limit), the frames it read before the bad one are; but its parser goes on
        reading an oversized frame and hands it over once whole: that one, or
        the server's answer, ends the socket as picows's close said.
        """
        closing = frame.msg_type is _CLOSE
        if closing:
            transport.disconnect()
        if self._done:
            return False
        if closing or frame.payload_size > self._max:
            sent = transport.close_handshake.sent if transport.close_handshake else None
            if sent is not None:
                self._fail(sent.code, sent.reason)
            return False
        return True

    def _fail(self, code: WSCloseCode, detail: str) -> None:
        """The stream broke the protocol; ``code`` says how (1009: a message too big)."""
        kind = EndKind.TOO_BIG if code is WSCloseCode.MESSAGE_TOO_BIG else EndKind.PROTOCOL_ERROR
        self._end(Ending(kind, code.value, detail))

    def _end(self, ending: Ending) -> None:
        """Tell the consumer once; before it starts, keep the first ending for :meth:`start`."""
        if not self._started:
            if self._ending is None:
                self._ending = ending
            self.pause()
            return
        on_end = self._on_end
        self.stop_messages()
        if on_end is not None:
            on_end(ending)

    def _abandon(self) -> None:
        """connect() gave up: drop the connection now, or as soon as its upgrade completes."""
        self.stop_messages()
        if self._transport is not None:
            self._transport.disconnect(graceful=False)

    def _set_reading(self, reading: bool) -> None:
        transport = self._transport
        self._reading = reading
        if transport is None or transport.is_disconnected:
            return
        underlying = transport.underlying_transport
        if reading:
            underlying.resume_reading()
        else:
            underlying.pause_reading()


__all__ = ["RECEIVE_BUFFER_BYTES", "EndKind", "Ending", "GatewaySocket", "MessageHandler"]
