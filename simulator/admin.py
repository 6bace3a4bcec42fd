"""The admin HTTP API under ``/_sim/``: what tests and benchmarks use from outside the process.

| route | body / answer |
|---|---|
| ``POST /_sim/fault`` | ``{"shard_id": n or "all", "conn_id"?: n, "kind": "reconnect" / "invalid_session" / "close" / "drop" / "zombie" / "malformed_json" / "truncated_frame" / "unknown_opcode" / "heartbeat_request", "code"?, "reason"?, "resumable"?, "close_after_s"?}`` -> ``{"ok": true, "connections": [conn ids]}`` |
| ``POST /_sim/emit`` | ``{"shard_id": n, "count": n, "event_type"?: "MESSAGE_CREATE"...}`` -> ``{"ok": true, "event_ids": [...]}`` |
| ``POST /_sim/config`` | ``{"event_rate"?: float, "chaos_rate"?: float}`` -> ``{"ok": true, ...}`` |
| ``GET /_sim/record`` | the record as JSON (simulator.record.Record.to_json) |
| ``GET /_sim/sessions`` | ``{"sessions": [...], "session_start_limit": {...}}`` |

Bad requests get 400 ``{"ok": false, "error": "why"}``.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from aiohttp import web

from simulator.config import EVENT_INTENTS
from simulator.gateway import Gateway
from simulator.record import Record
from simulator.rest import json_response


def _bad(why: str) -> web.Response:
    return json_response({"ok": False, "error": why}, status=400)


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise ValueError("body is not JSON") from None
    if not isinstance(body, dict):
        raise ValueError("body must be a JSON object")
    return body


def _int(body: dict[str, Any], key: str, low: int = 0) -> int:
    value = body.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{key} must be an integer >= {low}")
    return value


def _rate(value: Any, key: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 <= value < float("inf")
    ):
        raise ValueError(f"{key} must be a finite number >= 0")
    return float(value)


class Admin:
    def __init__(self, gateway: Gateway, record: Record) -> None:
        self.gateway = gateway
        self.record = record

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/_sim/fault", self.fault)
        app.router.add_post("/_sim/emit", self.emit)
        app.router.add_post("/_sim/config", self.config)
        app.router.add_get("/_sim/record", self.get_record)
        app.router.add_get("/_sim/sessions", self.sessions)

    async def fault(self, request: web.Request) -> web.Response:
        try:
            body = await _body(request)
            kind = body.pop("kind", None)
            if not isinstance(kind, str):
                raise ValueError("kind is required")
            shard: int | str | None = body.pop("shard_id", "all")
            if shard != "all" and (not isinstance(shard, int) or isinstance(shard, bool)):
                raise ValueError('shard_id must be an integer or "all"')
            conn_id = body.pop("conn_id", None)
            if conn_id is not None and (not isinstance(conn_id, int) or isinstance(conn_id, bool)):
                raise ValueError("conn_id must be an integer")
            hit = self.gateway.inject(shard, kind, conn_id, **body)
        except ValueError as exc:
            return _bad(str(exc))
        return json_response({"ok": True, "connections": hit})

    async def emit(self, request: web.Request) -> web.Response:
        try:
            body = await _body(request)
            shard = _int(body, "shard_id")
            count = _int(body, "count", 1)
            t = body.get("event_type")
            if t is not None and t not in EVENT_INTENTS:
                raise ValueError(f"event_type must be one of {', '.join(EVENT_INTENTS)}")
        except ValueError as exc:
            return _bad(str(exc))
        return json_response({"ok": True, "event_ids": self.gateway.emit(shard, count, t)})

    async def config(self, request: web.Request) -> web.Response:
        try:
            body = await _body(request)
            unknown = set(body) - {"event_rate", "chaos_rate"}
            if unknown:
                raise ValueError(
                    f"unknown setting(s) {sorted(unknown)}; known: event_rate, chaos_rate"
                )
            rates = {k: _rate(v, k) for k, v in body.items()}
        except ValueError as exc:
            return _bad(str(exc))
        if "event_rate" in rates:
            self.gateway.set_event_rate(rates["event_rate"])
        if "chaos_rate" in rates:
            self.gateway.set_chaos_rate(rates["chaos_rate"])
        return json_response(
            {
                "ok": True,
                "event_rate": self.gateway.event_rate,
                "chaos_rate": self.gateway.chaos_rate,
            }
        )

    async def get_record(self, request: web.Request) -> web.Response:
        return json_response(self.record.to_json())

    async def sessions(self, request: web.Request) -> web.Response:
        now = time.monotonic()
        budget = self.gateway.budget
        return json_response(
            {
                "sessions": self.gateway.snapshot(),
                "session_start_limit": {
                    "total": budget.total,
                    "remaining": budget.available(now),
                    "reset_after": budget.reset_after_ms(now),
                    "max_concurrency": self.gateway.config.max_concurrency,
                },
            }
        )
