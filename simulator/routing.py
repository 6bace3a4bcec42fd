"""Which live sessions receive a guild's events, across shard sets of different sizes.

Discord routes each guild's events to every live session whose shard covers
the guild, ``(guild_id >> 22) % num_shards == shard_id``, whatever
``num_shards`` that session identified with. While a bot reshards, its old
set (say 16 shards) and its new one (32) run side by side and both receive
every event of their guilds (shared/DESIGN.md section 6, "Resharding"); a
test proves "exactly once" across the switch by the event's one identity
(``d._sim_event_id``), the same in every session it reached.

Pure code (no asyncio, no I/O, ``now`` passed in):

- the shard formula on guild *indices* (guild ``i`` has the snowflake
  timestamp part ``GUILD_BASE + i``, simulator.events), and its inverse
  :func:`~simulator.events.guild_index_range`;
- the IDENTIFY shard checks: :func:`parse_shard` (4010) and
  :func:`sharding_required` (4011: a shard over ``max_guilds_per_shard``
  guilds, or fewer shards in total than :func:`min_shard_count`);
- :class:`ShardRouter`, the live sessions indexed by ``(shard_id,
  num_shards)`` ("slots"), rebuilt when the session store changes.

Load generation (simulator.gateway) asks the router two things. *Who gets
guild i's event?* Every live session of every slot covering ``i``
(:meth:`ShardRouter.covering`). *Which slot generates guild i's events?*
One only, its *source*: the covering slot with the fewest shards. So a
guild's event rate does not double while two sets cover it, a slot of the
new set generates only for guilds no smaller live set covers, and once the
old set is gone the new one generates everything. With one shard count live
(the usual case) every slot is the source of all its guilds, and
``event_rate`` is per shard as it always was.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from simulator.events import GUILD_BASE, guild_index_range
from simulator.sessions import Session, SessionStore

#: ``(shard_id, num_shards)`` of an IDENTIFY.
ShardKey = tuple[int, int]
#: The event types a set of intents receives (EventFactory.allowed_types).
TableOf = Callable[[int], list[str]]

#: Largest shard count the simulator accepts (in config and at run time).
MAX_SHARDS = 1 << 20


def guild_shard(index: int, num_shards: int) -> int:
    """The shard of guild ``index`` under ``num_shards``: ``(guild_id >> 22) % num_shards``."""
    return (GUILD_BASE + index) % num_shards


def covers(shard: ShardKey, index: int) -> bool:
    """Whether a session identified as ``shard`` receives the events of guild ``index``."""
    return guild_shard(index, shard[1]) == shard[0]


def min_shard_count(guilds: int, max_guilds_per_shard: int) -> int:
    """The fewest shards Discord accepts for ``guilds`` guilds: ``ceil(guilds / max)``, at least 1."""
    return max(1, -(-guilds // max_guilds_per_shard))


def sharding_required(
    num_shards: int, guilds_on_shard: int, total_guilds: int, max_guilds_per_shard: int
) -> bool:
    """Close code 4011: the shard would hold too many guilds, or the total is too small.

    Discord refuses a session over 2,500 guilds (``max_guilds_per_shard``)
    and a shard count below the minimum for the bot's guilds, even for a
    shard of that count that happens to hold few enough (shared/PROTOCOL.md
    section 2, 4011).
    """
    return guilds_on_shard > max_guilds_per_shard or num_shards < min_shard_count(
        total_guilds, max_guilds_per_shard
    )


def parse_shard(value: Any, max_concurrency: int) -> ShardKey | None:
    """IDENTIFY's ``shard`` as ``(shard_id, num_shards)``, or None for close code 4010.

    Bad shape or types, ``shard_id`` outside ``[0, num_shards)``, and for a
    large bot (``max_concurrency > 1``) a total that is not a multiple of
    ``max_concurrency`` (shared/PROTOCOL.md section 5) are invalid.
    """
    if not isinstance(value, list | tuple) or len(value) != 2:
        return None
    shard_id, total = value
    if not all(isinstance(x, int) and not isinstance(x, bool) for x in (shard_id, total)):
        return None
    if total < 1 or not 0 <= shard_id < total:
        return None
    if max_concurrency > 1 and total % max_concurrency:
        return None
    return shard_id, total


def check_shard_count(value: object, max_concurrency: int, what: str = "shards") -> int:
    """A shard count the bot may be told to use (``/gateway/bot``), or ValueError."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what} must be an integer, got {type(value).__name__}")
    if not 1 <= value <= MAX_SHARDS:
        raise ValueError(f"{what} must be between 1 and {MAX_SHARDS}, got {value}")
    if max_concurrency > 1 and value % max_concurrency:
        raise ValueError(
            f"{what} ({value}) must be a multiple of max_concurrency ({max_concurrency})"
        )
    return value


class Slot:
    """The live sessions of one ``(shard_id, num_shards)`` and its load generator's state."""

    __slots__ = (
        "event_credit",
        "event_n",
        "event_table",
        "guilds",
        "key",
        "sessions",
        "share",
        "sources",
    )

    def __init__(self, key: ShardKey, guilds: Sequence[int]) -> None:
        self.key = key
        #: The slot's guild indices; a shard without guilds has one phantom guild
        #: (an index past the bot's guilds that the formula sends to it), so that
        #: load and emitted events still reach it.
        self.guilds = guilds
        self.sessions: list[Session] = []
        #: Guilds whose events this slot generates (it is their source).
        self.sources: Sequence[int] = guilds
        #: ``len(sources) / len(guilds)``: the slot generates ``event_rate * share``.
        self.share = 1.0
        #: Event types of the union of the intents of every session its events reach.
        self.event_table: list[str] = []
        self.event_credit = 0.0
        self.event_n = 0

    def live(self, now: float) -> bool:
        return any(s.live(now) for s in self.sessions)


class ShardRouter:
    """The live sessions by slot, and who generates and who receives each guild's events."""

    def __init__(self, total_guilds: int, tables: TableOf) -> None:
        self.total_guilds = total_guilds
        self._tables = tables
        self.slots: dict[ShardKey, Slot] = {}
        #: The shard counts with a live session, ascending.
        self.counts: tuple[int, ...] = ()
        self._version = -1

    def guilds_of(self, key: ShardKey) -> Sequence[int]:
        guilds = guild_index_range(key[0], key[1], self.total_guilds)
        return guilds if len(guilds) else range(guilds.start, guilds.start + 1)

    def sync(self, store: SessionStore, now: float) -> ShardRouter:
        """Rebuild if sessions were added or swept since the last build; returns self."""
        if store.version != self._version:
            self.rebuild(store.sessions.values(), now)
            self._version = store.version
        return self

    def rebuild(self, sessions: Iterable[Session], now: float) -> None:
        """Index the live ``sessions``; a slot that stays keeps its credit and counter."""
        old = self.slots
        slots: dict[ShardKey, Slot] = {}
        for session in sessions:
            if not session.live(now):
                continue
            key = (session.shard_id, session.num_shards)
            slot = slots.get(key)
            if slot is None:
                slot = old.get(key) or Slot(key, self.guilds_of(key))
                slot.sessions = []
                slots[key] = slot
            slot.sessions.append(session)
        self.slots = slots
        self.counts = tuple(sorted({key[1] for key in slots}))
        own = {key: _union(slot.sessions) for key, slot in slots.items()}
        for key, slot in slots.items():
            intents = own[key]
            smaller = [n for n in self.counts if n < key[1]]
            if not smaller or slot.guilds[0] >= self.total_guilds:
                slot.sources = slot.guilds  # the smallest count, or a phantom guild
            else:
                slot.sources = [
                    g
                    for g in slot.guilds
                    if not any((guild_shard(g, n), n) in slots for n in smaller)
                ]
            slot.share = len(slot.sources) / len(slot.guilds)
            if len(self.counts) > 1 and slot.guilds[0] < self.total_guilds:
                others = [n for n in self.counts if n != key[1]]
                for g in slot.sources:
                    for n in others:
                        intents |= own.get((guild_shard(g, n), n), 0)
            slot.event_table = self._tables(intents)

    def covering(self, index: int) -> list[Session]:
        """The indexed sessions whose shard covers guild ``index``, under every live count."""
        out: list[Session] = []
        slots = self.slots
        for n in self.counts:
            slot = slots.get((guild_shard(index, n), n))
            if slot is not None:
                out.extend(slot.sessions)
        return out

    def source(self, index: int) -> Slot | None:
        """The slot that generates guild ``index``'s events: the covering one with fewest shards."""
        for n in self.counts:
            slot = self.slots.get((guild_shard(index, n), n))
            if slot is not None:
                return slot
        return None

    def slots_of(self, shard_id: int, num_shards: int | None = None) -> list[Slot]:
        """The slots of ``shard_id`` (under ``num_shards``, or under every live count)."""
        counts = self.counts if num_shards is None else (num_shards,)
        return [s for n in counts if (s := self.slots.get((shard_id, n))) is not None]


def _union(sessions: Iterable[Session]) -> int:
    intents = 0
    for session in sessions:
        intents |= session.intents
    return intents
