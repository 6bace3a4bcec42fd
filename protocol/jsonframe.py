"""A frame that must hold one JSON object: decoded, or refused with a :class:`WireFormatError`.

The JSON frames of our own wire formats (ipc reports, the PUB header) are
objects; anything else is a malformed message, refused with an error that
names the frame (``what``) and says what is wrong with it.
"""

from __future__ import annotations

from typing import Any

import orjson

from protocol.errors import WireFormatError


def load_object(frame: bytes | bytearray | memoryview, what: str) -> dict[str, Any]:
    """``frame`` parsed as a JSON object; ``what`` names it in the error (e.g. ``"PUB header"``)."""
    try:
        obj = orjson.loads(frame)
    except orjson.JSONDecodeError as exc:
        raise WireFormatError(f"{what} is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise WireFormatError(f"{what} must be a JSON object, not {type(obj).__name__}")
    return obj
