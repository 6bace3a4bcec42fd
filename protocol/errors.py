"""The typed error hierarchy of the protocol layer.

Errors carry what the caller needs to decide (the close code, whether a
reconnect can help), never strings to parse. No error message ever contains a
token.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Base of every error raised by the protocol layer."""


class PayloadTooLargeError(ProtocolError):
    """A client payload would exceed Discord's 4096-byte limit (close 4002)."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"payload is {size} bytes, over the gateway limit of {limit} bytes")
        self.size = size
        self.limit = limit


class DecompressionError(ProtocolError):
    """A transport-compressed stream is corrupt, truncated or too large.

    The connection that produced it is unusable; a new connection with a new
    decompression context (and a RESUME) is the cure.
    """


class MessageTooLargeError(DecompressionError):
    """An inbound message inflated past the configured maximum size."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"inbound message exceeds {limit} bytes after decompression")
        self.limit = limit


class UnknownIntentError(ProtocolError, ValueError):
    """An intent name or bit that Discord does not define."""


class WireFormatError(ProtocolError, ValueError):
    """A message between our own processes, or on the PUB socket, is malformed."""


class InvalidCommandError(ProtocolError, ValueError):
    """A gateway command (control socket or builder input) is not one we may send."""


class MalformedPayloadError(ProtocolError, ValueError):
    """An inbound gateway payload is not a JSON object envelope with an integer ``op``."""
