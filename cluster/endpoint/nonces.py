"""Request Guild Members answers go to the client that asked: nonces of the endpoint's own (pure).

Several clients share one shard, and Discord answers an op 8 with
GUILD_MEMBERS_CHUNK dispatches on the shard's session, naming the request
only by the ``nonce`` it carried (shared/PROTOCOL.md section 1). So the
endpoint replaces every client's nonce (or its absence) with one of its own
before the command reaches the shard (:meth:`NonceBook.issue`), and routes
each chunk (or a RATE_LIMITED about the request) back to the one client whose
nonce it stands for, with the client's nonce put back or removed
(:meth:`NonceBook.claim`, :func:`restore_nonce`). A chunk whose nonce the book
does not know (a request made on the control socket, or one that expired)
goes to no client.

Entries end with the last chunk (``chunk_index == chunk_count - 1``), a
RATE_LIMITED, their owner's end, or after ``ttl_s``; at most ``max_entries``
are kept (the oldest are dropped first).
"""

from __future__ import annotations

import secrets
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

from protocol.payloads import MAX_NONCE_BYTES

Owner = TypeVar("Owner", bound=Hashable)

DEFAULT_TTL_S: Final = 120.0
DEFAULT_MAX_ENTRIES: Final = 10_000


@dataclass(frozen=True, slots=True)
class _Entry(Generic[Owner]):
    owner: Owner
    client_nonce: str | None
    expires_at: float


class NonceBook(Generic[Owner]):
    """The endpoint's nonces in flight: ours -> (the client that asked, its own nonce)."""

    def __init__(
        self,
        ttl_s: float = DEFAULT_TTL_S,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        prefix: str | None = None,
    ) -> None:
        self._ttl_s = ttl_s
        self._max = max_entries
        #: per process, so a nonce of a previous run is never taken for one of ours
        self._prefix = f"tc{secrets.token_hex(3) if prefix is None else prefix}."
        self._next = 0
        self._entries: dict[str, _Entry[Owner]] = {}
        #: chunks routed, and chunks with a nonce this book does not know
        self.routed = 0
        self.unknown = 0

    def __len__(self) -> int:
        return len(self._entries)

    def issue(self, owner: Owner, client_nonce: str | None, now: float) -> str:
        """A new nonce of ours for a request ``owner`` made (with ``client_nonce``, or none)."""
        self._next += 1
        nonce = f"{self._prefix}{self._next:x}"
        assert len(nonce.encode()) <= MAX_NONCE_BYTES
        self._entries[nonce] = _Entry(owner, client_nonce, now + self._ttl_s)
        while len(self._entries) > self._max:
            del self._entries[next(iter(self._entries))]
        return nonce

    def claim(self, nonce: Any, now: float, last: bool = True) -> tuple[Owner, str | None] | None:
        """The owner of an answer carrying ``nonce`` and the client's nonce (None: nobody's).

        ``last``: this answer ends the request (the last chunk, or a RATE_LIMITED).
        """
        entry = self._entries.get(nonce) if isinstance(nonce, str) else None
        if entry is None or entry.expires_at < now:
            if entry is not None:
                del self._entries[nonce]
            self.unknown += 1
            return None
        if last:
            del self._entries[nonce]
        self.routed += 1
        return entry.owner, entry.client_nonce

    def forget(self, owner: Owner) -> None:
        """``owner`` is gone: its requests' answers go to nobody."""
        for nonce in [n for n, e in self._entries.items() if e.owner == owner]:
            del self._entries[nonce]

    def expire(self, now: float) -> None:
        for nonce in [n for n, e in self._entries.items() if e.expires_at < now]:
            del self._entries[nonce]


def restore_nonce(d: dict[str, Any], client_nonce: str | None) -> dict[str, Any]:
    """``d`` of an answer with the client's own nonce (or without one, as it asked)."""
    out = {k: v for k, v in d.items() if k != "nonce"}
    if client_nonce is not None:
        out["nonce"] = client_nonce
    return out


def is_last_chunk(d: dict[str, Any]) -> bool:
    index, count = d.get("chunk_index"), d.get("chunk_count")
    if not isinstance(index, int) or not isinstance(count, int):
        return True
    return index >= count - 1
