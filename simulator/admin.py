"""The admin HTTP API under ``/_sim/``: what tests and benchmarks use from outside the process.

| route | body / answer |
|---|---|
| ``POST /_sim/fault`` | ``{"shard_id": n or "all", "num_shards"?: n, "conn_id"?: n, "kind": "reconnect" / "invalid_session" / "close" / "drop" / "zombie" / "malformed_json" / "truncated_frame" / "unknown_opcode" / "heartbeat_request", "code"?, "reason"?, "resumable"?, "close_after_s"?}`` -> ``{"ok": true, "connections": [conn ids]}`` |
| ``POST /_sim/emit`` | ``{"shard_id": n, "num_shards"?: n, "count": n, "event_type"?: "MESSAGE_CREATE"...}`` or ``{"guild_id": snowflake, "count": n, ...}`` -> ``{"ok": true, "event_ids": [...]}`` |
| ``POST /_sim/config`` | ``{"event_rate"?: float, "chaos_rate"?: float, "privileged_intents"?: names, "session_start_limit"?: n or {"total"?, "remaining"?, "reset_after"?}, "recommended_shards"?: n}`` -> ``{"ok": true, "event_rate", "chaos_rate", and each other setting given, as it is now}`` |
| ``GET /_sim/config`` | ``{"ok": true, "event_rate", "chaos_rate", "privileged_intents": [names], "session_start_limit": {...}, "recommended_shards": n}`` |
| ``GET /_sim/record`` | the record as JSON (simulator.record.Record.to_json) |
| ``GET /_sim/sessions`` | ``{"sessions": [...], "session_start_limit": {...}}`` |

``privileged_intents`` are the application's Developer Portal toggles: a list
of names, a comma-separated string (``"GUILD_MEMBERS,MESSAGE_CONTENT"``,
``"all"``, ``"none"``) or the integer bits; they apply to later IDENTIFYs.
``session_start_limit`` as a number sets ``total`` and keeps the starts already
spent in this window (Discord raising a bot's limit); as an object it sets
``total``, ``remaining`` and ``reset_after`` (ms) as given. ``GET
/gateway/bot`` answers the new numbers at once, and the gateway enforces them.
``recommended_shards`` is the ``shards`` that ``GET /gateway/bot`` answers
from now on (Discord raising it as a bot grows; a multiple of
``max_concurrency`` when that is above 1); the gateway accepts any valid
count whatever it recommends.

Shard sets of different sizes may be live at once (a bot resharding): an
emit by ``shard_id`` makes ``count`` events in that shard's guilds for each
live set (``num_shards`` picks one), an emit by ``guild_id`` ``count`` events
in that guild; either way each event reaches every live session covering its
guild, with one ``event_id``. A fault's ``num_shards`` narrows it to one set.

Bad requests get 400 ``{"ok": false, "error": "why"}``; a bad request changes nothing.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from aiohttp import web

from protocol.intents import intent_names, parse_privileged_intents
from simulator.config import EVENT_INTENTS
from simulator.gateway import Gateway
from simulator.record import Record
from simulator.rest import json_response
from simulator.routing import check_shard_count


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


def _privileged(value: Any) -> int:
    if isinstance(value, list):
        if not all(isinstance(name, str) for name in value):
            raise ValueError("privileged_intents must be a list of intent names")
        value = ",".join(value) or "none"
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError("privileged_intents must be intent names or an integer")
    try:
        return parse_privileged_intents(value)
    except ValueError as exc:
        raise ValueError(f"privileged_intents: {exc}") from None


_LIMIT_KEYS = ("total", "remaining", "reset_after")


def _session_limit(value: Any) -> dict[str, int]:
    if isinstance(value, dict):
        unknown = set(value) - set(_LIMIT_KEYS)
        if unknown:
            raise ValueError(
                f"session_start_limit: unknown key(s) {sorted(unknown)}; known: {', '.join(_LIMIT_KEYS)}"
            )
        if not value:
            raise ValueError("session_start_limit must set total, remaining or reset_after")
        return {k: _int(value, k, 1 if k == "total" else 0) for k in value}
    return {"total": _int({"session_start_limit": value}, "session_start_limit", 1)}


_SETTINGS = (
    "event_rate",
    "chaos_rate",
    "privileged_intents",
    "session_start_limit",
    "recommended_shards",
)


class Admin:
    def __init__(self, gateway: Gateway, record: Record) -> None:
        self.gateway = gateway
        self.record = record

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/_sim/fault", self.fault)
        app.router.add_post("/_sim/emit", self.emit)
        app.router.add_post("/_sim/config", self.config)
        app.router.add_get("/_sim/config", self.get_config)
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
            num_shards = _int(body, "num_shards", 1) if "num_shards" in body else None
            body.pop("num_shards", None)
            hit = self.gateway.inject(shard, kind, conn_id, num_shards, **body)
        except ValueError as exc:
            return _bad(str(exc))
        return json_response({"ok": True, "connections": hit})

    async def emit(self, request: web.Request) -> web.Response:
        try:
            body = await _body(request)
            count = _int(body, "count", 1)
            t = body.get("event_type")
            if t is not None and t not in EVENT_INTENTS:
                raise ValueError(f"event_type must be one of {', '.join(EVENT_INTENTS)}")
            if ("guild_id" in body) == ("shard_id" in body):
                raise ValueError("give shard_id or guild_id (one of them)")
            if "guild_id" in body:
                if "num_shards" in body:
                    raise ValueError("num_shards goes with shard_id, not guild_id")
                ids = self.gateway.emit_guild(body["guild_id"], count, t)
            else:
                shard = _int(body, "shard_id")
                num_shards = _int(body, "num_shards", 1) if "num_shards" in body else None
                ids = self.gateway.emit(shard, count, t, num_shards)
        except ValueError as exc:
            return _bad(str(exc))
        return json_response({"ok": True, "event_ids": ids})

    async def config(self, request: web.Request) -> web.Response:
        gateway = self.gateway
        try:
            body = await _body(request)
            unknown = set(body) - set(_SETTINGS)
            if unknown:
                raise ValueError(
                    f"unknown setting(s) {sorted(unknown)}; known: {', '.join(_SETTINGS)}"
                )
            rates = {k: _rate(body[k], k) for k in ("event_rate", "chaos_rate") if k in body}
            privileged = (
                _privileged(body["privileged_intents"]) if "privileged_intents" in body else None
            )
            limit = (
                _session_limit(body["session_start_limit"])
                if "session_start_limit" in body
                else None
            )
            recommended = (
                check_shard_count(
                    body["recommended_shards"],
                    gateway.config.max_concurrency,
                    "recommended_shards",
                )
                if "recommended_shards" in body
                else None
            )
            if limit is not None:
                # validated (and applied) before anything else changes: all or nothing
                gateway.set_session_start_limit(
                    limit.get("total"), limit.get("remaining"), limit.get("reset_after")
                )
        except ValueError as exc:
            return _bad(str(exc))
        if "event_rate" in rates:
            gateway.set_event_rate(rates["event_rate"])
        if "chaos_rate" in rates:
            gateway.set_chaos_rate(rates["chaos_rate"])
        if privileged is not None:
            gateway.set_privileged_intents(privileged)
        if recommended is not None:
            gateway.set_recommended_shards(recommended)
        settings = self._settings()
        answer = {
            "ok": True,
            "event_rate": settings["event_rate"],
            "chaos_rate": settings["chaos_rate"],
        }
        answer.update({k: settings[k] for k in body if k in settings})
        return json_response(answer)

    async def get_config(self, request: web.Request) -> web.Response:
        return json_response({"ok": True, **self._settings()})

    def _settings(self) -> dict[str, Any]:
        gateway = self.gateway
        return {
            "event_rate": gateway.event_rate,
            "chaos_rate": gateway.chaos_rate,
            "privileged_intents": intent_names(gateway.privileged_intents),
            "session_start_limit": gateway.budget.to_json(
                time.monotonic(), gateway.config.max_concurrency
            ),
            "recommended_shards": gateway.recommended_shards,
        }

    async def get_record(self, request: web.Request) -> web.Response:
        return json_response(self.record.to_json())

    async def sessions(self, request: web.Request) -> web.Response:
        gateway = self.gateway
        return json_response(
            {
                "sessions": gateway.snapshot(),
                "session_start_limit": gateway.budget.to_json(
                    time.monotonic(), gateway.config.max_concurrency
                ),
            }
        )
