"""Logging for ``cluster up``: text or JSON lines on stderr, and the token kept out of both.

``--log-format json`` writes one JSON object per line (protocol/logformat.py,
the format the worker processes write too). Every record passes a redaction
filter that replaces the token, should any code path ever format it into a
message (DESIGN.md rule 6).
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

from cluster.config import LogFormat
from protocol.logformat import TEXT_FORMAT, JsonFormatter, TokenRedactor

__all__ = ["JsonFormatter", "TokenRedactor", "configure"]


def configure(
    log_format: LogFormat, level: str, secret: str, stream: TextIO | None = None
) -> logging.Handler:
    """Install one stderr handler on the root logger; returns it (to remove it later)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    if log_format is LogFormat.JSON:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    handler.addFilter(TokenRedactor(secret))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # aiohttp's access log and zmq chatter are not the operator's business.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    return handler
