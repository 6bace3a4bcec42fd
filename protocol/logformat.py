"""The log line formats every process of the cluster writes: text, or one JSON object per line.

Shared by the supervisor (``cluster/logging_setup.py``) and the worker
processes (``worker/main.py``), so ``--log-format json`` gives one format for
the whole process tree. A JSON line has ``ts``, ``level``, ``logger``, ``msg``,
the fields a call passes under ``extra={"fields": {...}}``, the process's own
fields (a worker adds ``worker_id``) and ``exc`` for a traceback. Every record
passes :class:`TokenRedactor`: should any code path ever format the token into
a message, it is replaced (DESIGN.md rule 6).
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Mapping
from typing import Any, Final

import orjson

_REDACTED: Final = "<token>"
TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"


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
    """One JSON object per record; ``static`` fields (e.g. the worker id) go on every line."""

    def __init__(self, static: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self._static = dict(static or {})

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
        for key, value in self._static.items():
            body.setdefault(key, value)
        if record.exc_info:
            body["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(body, default=str).decode()
