"""Logging for ``cluster up``: text or JSON lines on stderr, and the token kept out of both.

``--log-format json`` writes one JSON object per line (``ts``, ``level``,
``logger``, ``msg``, plus any ``extra`` fields a call passes under
``fields``). Every record passes a redaction filter that replaces the token,
should any code path ever format it into a message (DESIGN.md rule 6).
"""

from __future__ import annotations

import datetime
import logging
import sys
from typing import Any, Final, TextIO

import orjson

from cluster.config import LogFormat

_REDACTED: Final = "<token>"


class TokenRedactor(logging.Filter):
    """Replaces the secret in every formatted message (defence in depth: nothing should log it)."""

    def __init__(self, secret: str) -> None:
        super().__init__()
        self._secret = secret

    def filter(self, record: logging.LogRecord) -> bool:
        if self._secret:
            message = record.getMessage()
            if self._secret in message:
                record.msg = message.replace(self._secret, _REDACTED)
                record.args = None
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "ts": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            for key, value in fields.items():
                body.setdefault(key, value)
        if record.exc_info:
            body["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(body, default=str).decode()


def configure(
    log_format: LogFormat, level: str, secret: str, stream: TextIO | None = None
) -> logging.Handler:
    """Install one stderr handler on the root logger; returns it (to remove it later)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    if log_format is LogFormat.JSON:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(TokenRedactor(secret))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # aiohttp's access log and zmq chatter are not the operator's business.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    return handler
