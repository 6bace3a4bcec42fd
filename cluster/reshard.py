"""Resharding without downtime: the new shard set's held events, the switch's dedupe, the layout.

``cluster reshard --shards N`` (a control request) makes the owner of all shards
bring up a second shard set alongside the running one
(:meth:`cluster.range_owner.RangeOwner.start_reshard`). The hand-over rule
(DESIGN.md section 6):

- until the switch the relay publishes the **old** set's events; the new set's
  are held (:class:`HeldRuns`: the last :data:`HOLD_WINDOW_S` seconds, bounded);
- while the reshard runs, the old set's published events are fingerprinted
  (:class:`Fingerprints`: event name plus the content of ``d``, canonical JSON);
- the switch comes once every new shard is READY and has had a GUILD_CREATE for
  every guild its READY listed. In one step of the event loop: the old set's
  channel is drained and then discarded, the ``TITANIUM_RESHARD`` marker is
  published, the held events are published except those whose fingerprint the
  old set published (each fingerprint matches once), and for
  :data:`SWITCH_WINDOW_S` more seconds the new set's live events are checked the
  same way; then the old sessions are closed with 1000 (they end);
- so an event is published once, by the old set before the switch or by the new
  one after it. Bounds: an event the new set received more than
  :data:`HOLD_WINDOW_S` before the switch is taken as already published (the old
  set lags that much only when it is broken), and two different events with the
  same name and the same ``d`` within the window count as one.

Subscribers see the marker (topic ``TITANIUM_RESHARD``, header shard 0 and seq 0,
which no real event has, plus ``"reshard": true``) with the old and new shard
counts and, per new shard, its session id and ``contiguous_from``: from that seq
on every event of the new session is published; gaps below it are the switch's
dedupe (titanium_client's gap detection knows).

The new layout is written to ``--state-dir`` (``layout.json``) at the switch, so
a restart runs the new shard count; a supervisor killed before the switch runs
the old one (the new sessions expire unused at Discord).
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import os
import struct
import time
from array import array
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson

from cluster.runs import EventSlices

#: How long the new set's events are held before the switch (older ones are dropped:
#: the old set published them long ago).
HOLD_WINDOW_S: Final = 30.0
#: How long after the switch the new set's live events are still checked for duplicates.
SWITCH_WINDOW_S: Final = 10.0
#: At most this many events held, and fingerprints kept (memory bound of the overlap).
MAX_HELD_EVENTS: Final = 200_000
#: The marker's topic on the PUB socket and its stream in the sink.
MARKER_TOPIC: Final = b"TITANIUM_RESHARD"
#: The file in --state-dir holding a reshard's layout.
LAYOUT_FILE: Final = "layout.json"
#: How far hosts' clocks may differ when fingerprint batches are dated (across hosts).
CLOCK_MARGIN_S: Final = 5.0

_READY: Final = b"READY"
_GUILD_CREATE: Final = b"GUILD_CREATE"


class ReshardRefusedError(Exception):
    """A reshard cannot start; the message is the one line for the operator."""


class ReshardPhase(enum.Enum):
    #: the new set identifies; the old one publishes
    STARTING = "starting"
    #: the switch happened; the old set is closing
    SWITCHED = "switched"
    #: given up (a fatal close code, the budget, the deadline); the old set runs on
    ABANDONED = "abandoned"


def fingerprint(topic: Any, payload: Any) -> int:
    """Event name plus the content of ``d`` (keys sorted): the same event on two shard sets.

    A 64-bit BLAKE2b digest (signed), the same in every process: hosts compare
    fingerprints through Redis during a reshard across hosts.
    """
    try:
        d = orjson.loads(payload).get("d")
        canonical = orjson.dumps(d, option=orjson.OPT_SORT_KEYS)
    except (orjson.JSONDecodeError, AttributeError, TypeError):
        canonical = bytes(payload)
    digest = hashlib.blake2b(canonical, digest_size=8, person=bytes(topic)[:16])
    return int.from_bytes(digest.digest(), "little", signed=True)


_BATCH_TIME: Final = struct.Struct("<d")


class Fingerprints:
    """What the old set published during the overlap (a window of time and count).

    With ``shared`` (a reshard across hosts) every recorded fingerprint also waits in
    an outbox, pushed to Redis in batches (:meth:`take_batch`); at the switch the
    counts are replaced by every host's batches (:meth:`load_batches`).
    """

    def __init__(
        self, window_s: float = HOLD_WINDOW_S + SWITCH_WINDOW_S, *, shared: bool = False
    ) -> None:
        self.window_s = window_s
        self._counts: dict[int, int] = {}
        self._order: deque[tuple[float, int]] = deque()
        self.matched = 0
        self._outbox: array[int] | None = array("q") if shared else None

    def __len__(self) -> int:
        return len(self._order)

    def record(self, topic: Any, payload: Any) -> None:
        key = fingerprint(topic, payload)
        now = time.monotonic()
        self._order.append((now, key))
        self._counts[key] = self._counts.get(key, 0) + 1
        if self._outbox is not None:
            self._outbox.append(key)
        self._expire(now)

    def take_batch(self) -> bytes | None:
        """The fingerprints recorded since the last call, as one batch (None: none)."""
        outbox = self._outbox
        if not outbox:
            return None
        self._outbox = array("q")
        return _BATCH_TIME.pack(time.time()) + outbox.tobytes()

    def load_batches(self, batches: list[bytes]) -> int:
        """Count every host's fingerprints of the last :attr:`window_s` (wall clock, with
        a margin for hosts' clocks) instead of this host's alone; how many."""
        since = time.time() - self.window_s - CLOCK_MARGIN_S
        counts: dict[int, int] = {}
        loaded = 0
        for batch in batches:
            if len(batch) < _BATCH_TIME.size or (len(batch) - _BATCH_TIME.size) % 8:
                continue
            (at,) = _BATCH_TIME.unpack_from(batch)
            if at < since:
                continue
            keys = array("q")
            keys.frombytes(batch[_BATCH_TIME.size :])
            for key in keys:
                counts[key] = counts.get(key, 0) + 1
            loaded += len(keys)
        self._counts = counts
        self._order.clear()
        return loaded

    def take(self, topic: Any, payload: Any) -> bool:
        """True (and one match used up) if the old set published this event."""
        key = fingerprint(topic, payload)
        count = self._counts.get(key, 0)
        if count <= 0:
            return False
        self._counts[key] = count - 1
        self.matched += 1
        return True

    def _expire(self, now: float) -> None:
        order, counts = self._order, self._counts
        while order and (now - order[0][0] > self.window_s or len(order) > MAX_HELD_EVENTS):
            _, key = order.popleft()
            left = counts.get(key, 0) - 1
            if left > 0:
                counts[key] = left
            else:
                counts.pop(key, None)


@dataclass(slots=True)
class HeldRun:
    at: float
    shard_id: int
    epoch: int
    first_seq: int
    events: list[EventSlices]


@dataclass(slots=True)
class HeldRuns:
    """The new set's events before the switch (a RunConsumer), and what its shards received."""

    window_s: float = HOLD_WINDOW_S
    runs: deque[HeldRun] = field(default_factory=deque)
    events: int = 0
    #: events dropped from the hold for age or count (taken as published by the old set)
    expired: int = 0
    #: per new shard: guilds its READY listed, and GUILD_CREATEs received since
    ready_guilds: dict[int, int] = field(default_factory=dict)
    guild_creates: dict[int, int] = field(default_factory=dict)

    def add(self, shard_id: int, epoch: int, first_seq: int, events: list[EventSlices]) -> None:
        now = time.monotonic()
        for topic, payload in events:
            if topic == _GUILD_CREATE:
                self.guild_creates[shard_id] = self.guild_creates.get(shard_id, 0) + 1
            elif topic == _READY:
                with contextlib.suppress(orjson.JSONDecodeError, AttributeError, TypeError):
                    guilds = orjson.loads(payload)["d"].get("guilds") or []
                    self.ready_guilds[shard_id] = len(guilds)
                    self.guild_creates[shard_id] = 0
        self.runs.append(HeldRun(now, shard_id, epoch, first_seq, events))
        self.events += len(events)
        while self.runs and (
            now - self.runs[0].at > self.window_s or self.events > MAX_HELD_EVENTS
        ):
            old = self.runs.popleft()
            self.events -= len(old.events)
            self.expired += len(old.events)

    def flush(self) -> None:
        pass

    def settled(self, shard_ids: tuple[int, ...]) -> bool:
        """Every shard had its READY and a GUILD_CREATE for every guild the READY listed."""
        return all(
            s in self.ready_guilds and self.guild_creates.get(s, 0) >= self.ready_guilds[s]
            for s in shard_ids
        )

    def take_all(self) -> list[HeldRun]:
        runs = list(self.runs)
        self.runs.clear()
        self.events = 0
        return runs


#: The marker's PUB header: shard 0, seq 0 (no real event has seq 0) and ``"reshard"``.
MARKER_HEADER: Final = b'{"shard_id":0,"seq":0,"reshard":true}'


def marker_payload(
    old_shards: int,
    new_shards: int,
    switched_at: float,
    shards: dict[int, tuple[str | None, int]],
) -> bytes:
    """The ``TITANIUM_RESHARD`` event as a gateway dispatch (op 0, no seq of its own).

    ``shards``: per new shard, its session id and ``contiguous_from``, the seq from
    which every event of that session is published (below it the switch's dedupe may
    have dropped some: not gaps).
    """
    return orjson.dumps(
        {
            "op": 0,
            "t": MARKER_TOPIC.decode(),
            "s": None,
            "d": {
                "old_shards": old_shards,
                "new_shards": new_shards,
                "switched_at": switched_at,
                "shards": {
                    str(k): {"session_id": session, "contiguous_from": seq}
                    for k, (session, seq) in sorted(shards.items())
                },
            },
        }
    )


@dataclass(frozen=True, slots=True)
class Layout:
    """A reshard's result in --state-dir: run ``shards`` when asked for ``resharded_from`` or auto."""

    shards: int
    resharded_from: int


def save_layout(state_dir: Path, layout: Layout) -> None:
    """Atomically (temp file, fsync, rename) write ``layout.json``."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / LAYOUT_FILE
    tmp = path.with_suffix(".tmp")
    data = orjson.dumps({"shards": layout.shards, "resharded_from": layout.resharded_from})
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def load_layout(state_dir: Path) -> Layout | None:
    """The saved layout, or None (none saved, or unreadable: the command line decides)."""
    try:
        raw = orjson.loads((state_dir / LAYOUT_FILE).read_bytes())
        shards, old = raw["shards"], raw["resharded_from"]
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError):
        return None
    if not (isinstance(shards, int) and isinstance(old, int) and shards >= 1 and old >= 1):
        return None
    return Layout(shards, old)


def effective_shards(asked: int | None, recommended: int, saved: Layout | None) -> int:
    """The shard count to run: a saved reshard wins over ``auto`` and over the count it replaced."""
    if saved is not None and (asked is None or asked == saved.resharded_from):
        return saved.shards
    return recommended if asked is None else asked


def describe_progress(progress: dict[str, Any]) -> str:
    """One line of a reshard's progress (the ``reshard`` object of ``/status``)."""
    get = progress.get
    line = (
        f"{get('old_shards', '?')} -> {get('new_shards', '?')} shards: {get('phase', '?')}, "
        f"{get('new_ready', '?')}/{get('new_shards', '?')} new shards ready"
    )
    if get("guild_creates_complete"):
        line += ", guilds complete"
    elapsed = get("elapsed_s")
    if isinstance(elapsed, int | float):
        line += f", {elapsed:.1f} s"
    eta = get("eta_s")  # by the identify schedule, while the new set identifies
    if isinstance(eta, int | float) and get("phase") == "starting":
        line += f", about {eta:.1f} s left"
    if get("deduplicated"):
        line += f", {get('deduplicated')} duplicates dropped"
    if get("error"):
        line += f": {get('error')}"
    return line
