"""What one worker process runs: :class:`WorkerSpec`, the supervisor-worker contract.

The supervisor builds a spec and hands it to the *spawn* target
(:func:`worker.main.run_worker`); it is frozen, picklable and hides the token
from its repr. It sits alone, away from :mod:`worker.group`, so the
supervisor's import of it pulls no shard runner, websocket or ZeroMQ code.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from protocol.compression import DEFAULT_MAX_MESSAGE_SIZE, Compression
from protocol.gateway import API_VERSION, IDENTIFY_INTERVAL_S, SEND_WINDOW_S
from protocol.session import Session
from worker.backoff import BackoffPolicy
from worker.ratelimit import DEFAULT_SLACK_S


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """What one worker process runs. Picklable: it is the spawn target's argument."""

    worker_id: int
    shard_ids: tuple[int, ...]
    total_shards: int
    token: str = field(repr=False)
    intents: int
    gateway_url: str
    event_endpoint: str
    command_endpoint: str | None = None
    #: None: identify permits come from an in-process scheduler (a lone worker).
    coordinator_endpoint: str | None = None
    compression: Compression = Compression.ZLIB_STREAM
    api_version: int = API_VERSION
    #: Saved sessions to RESUME, by shard id.
    sessions: Mapping[int, Session] = field(default_factory=dict)
    large_threshold: int | None = None
    #: Identify's ``presence`` (protocol.payloads.presence); None: Discord's default (online).
    presence: Mapping[str, Any] | None = None
    report_interval_s: float = 1.0
    parent_check_interval_s: float = 1.0
    #: Random wait before a new session (op 9 false, 4003/4007/4009). Discord's old docs
    #: said 1-5 s "and respect the identify bucket"; every IDENTIFY of a worker waits for
    #: its bucket's turn in the identify coordinator (or the in-process permits) anyway,
    #: so none of its own: a shard refused as too early (op 9 at startup) takes the next
    #: free slot of its bucket instead of idling 1-5 s, which made it the last to be READY.
    new_session_delay_s: tuple[float, float] = (0.0, 0.0)
    backoff: BackoffPolicy = field(default_factory=BackoffPolicy)
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    #: Used only without a coordinator.
    max_concurrency: int = 1
    identify_interval_s: float = IDENTIFY_INTERVAL_S
    log_level: str = "INFO"
    #: One JSON object per log line (protocol/logformat.py) instead of text.
    log_json: bool = False
    #: The send limiter's window (tests shorten it together with the simulator's).
    send_window_s: float = SEND_WINDOW_S + DEFAULT_SLACK_S

    def saved_session(self, shard_id: int) -> Session | None:
        return self.sessions.get(shard_id)
