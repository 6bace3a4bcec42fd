"""Websocket frames a server writes (RFC 6455 section 5.2): the gateway endpoint's and the simulator's."""

from __future__ import annotations


def server_frame_header(first_byte: int, length: int) -> bytes:
    """An unmasked server frame's header: ``first_byte`` (FIN, opcode) and the payload length."""
    if length < 126:
        return bytes((first_byte, length))
    if length < 65536:
        return bytes((first_byte, 126)) + length.to_bytes(2, "big")
    return bytes((first_byte, 127)) + length.to_bytes(8, "big")
