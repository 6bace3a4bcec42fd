"""The guild cache on disk: saved every ``--gateway-cache-save-interval`` and at a graceful stop.

A supervisor restarted RESUMEs its shards (DESIGN.md rule 8): no READY and no
GUILD_CREATE arrive again, so the endpoint's cache must come back from disk.
The file (``<state dir>/gateway-cache[-A-B].msgpack``, msgpack, mode 0600,
written to a temporary file and renamed) holds every ready shard's cache and the
``(session epoch, seq)`` of the last event it had applied (its stamp). At start
(:meth:`cluster.endpoint.server.GatewayEndpoint.adopt`) a shard whose saved
session is the stamp's session RESUMEs, so a SIGKILL costs no IDENTIFY:

- stamp = the resume point (a graceful stop): cache and stream go on without a gap;
  the client sessions saved with it may RESUME at the endpoint;
- stamp older than the resume point (a SIGKILL after the last periodic save): the
  shard RESUMEs from the stamp's seq; Discord replays the events after it, the
  relay publishes none of those it had published and hands them to the cache only
  (:meth:`cluster.relay.SessionBook.resume_from`), and clients of the shard wait
  for their READY until the cache has caught up;
- stamp newer than the resume point (saved after the last checkpoint): the shard
  RESUMEs from the checkpoint; the events the cache has are published again (rule 8)
  but neither applied twice nor sent to clients.

A shard whose cache cannot be used (none saved, another session: the shard had to
IDENTIFY since, or another host ran it) IDENTIFYs, so its READY and GUILD_CREATEs
fill the cache again (one session start). So does one whose RESUME Discord refuses
(its replay buffer no longer reaches back to the stamp).

Saving (:class:`CacheWriter`; :meth:`cluster.endpoint.server.GatewayEndpoint.save`)
streams the file: the endpoint packs a shard's guilds on its loop (msgpack of the
JSON bytes the cache holds, about a megabyte per turn of the loop) while its pump
waits, so the shard's file matches its stamp, and writes each piece in a thread;
nothing but the piece in hand is held in memory, and the snapshot makes few
objects (no work for the garbage collector). Periodic saves carry no client
sessions: a client connected when the supervisor died has seen events its saved
session would not replay, so it IDENTIFYs again and gets its READY from the cache.

The file holds guild data (no token); nothing in it is trusted beyond its
shape: a file that does not load is ignored, logged, and its shards identify.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cluster.endpoint.cache import GuildCache

log = logging.getLogger("cluster.gateway")

#: msgpack has no type information (protocol/brokerformat.py imports it the same way)
msgpack: Any = importlib.import_module("msgpack")

CACHE_FILE_VERSION: Final = 1


def cache_path(state_dir: Path, shard_ids: Iterable[int], total_shards: int) -> Path:
    """Where a range's cache is kept (one file for all shards, else one per range)."""
    ids = sorted(shard_ids)
    if not ids or (ids[0], ids[-1]) == (0, total_shards - 1):
        return state_dir / "gateway-cache.msgpack"
    return state_dir / f"gateway-cache-{ids[0]}-{ids[-1]}.msgpack"


@dataclass(frozen=True, slots=True)
class SavedShard:
    epoch: int
    seq: int
    data: dict[str, Any]


#: One shard of a snapshot: (shard id, (session epoch, seq), :meth:`GuildCache.dump_shard`).
ShardSnapshot = tuple[int, tuple[int, int], dict[str, Any]]


def snapshot(
    cache: GuildCache, stamps: Mapping[int, tuple[int, int]], shard_ids: Iterable[int]
) -> list[ShardSnapshot]:
    """The ready shards of ``shard_ids`` with their stamps (all at once; the endpoint
    takes them one shard per turn of its loop instead)."""
    shards: list[ShardSnapshot] = []
    for shard_id in shard_ids:
        stamp = stamps.get(shard_id)
        data = cache.dump_shard(shard_id)
        if stamp is not None and data is not None:
            shards.append((shard_id, stamp, data))
    return shards


class CacheWriter:
    """A cache file written piece by piece to a temporary file, renamed over ``path`` at the end.

    One msgpack document, ``{"version", "shards": {id: {"epoch", "seq", "data":
    {"ready", "guilds": [[id, entry], ...]}}}, "sessions"}``. The ``pack_*`` methods
    make the bytes of each piece (the endpoint calls them on its loop, a guild at a
    time: :meth:`GuildEntry.dump` holds live references, packed before the cache can
    change); :meth:`write`, :meth:`commit` and :meth:`abort` do the file I/O (in a
    thread).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = 0
        packer = msgpack.Packer(use_bin_type=True)
        self._pack: Callable[[Any], bytes] = packer.pack
        self._map: Callable[[int], bytes] = packer.pack_map_header
        self._array: Callable[[int], bytes] = packer.pack_array_header
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, self._tmp = tempfile.mkstemp(prefix=".gateway-cache.", dir=path.parent)
        self._file = os.fdopen(fd, "wb")

    def pack_head(self, shards: int) -> bytes:
        pack = self._pack
        return b"".join(
            (
                self._map(3),
                pack("version"),
                pack(CACHE_FILE_VERSION),
                pack("shards"),
                self._map(shards),
            )
        )

    def pack_shard(self, shard_id: int, stamp: tuple[int, int], ready: bytes, guilds: int) -> bytes:
        """A shard's head; ``guilds`` :meth:`pack_guild` pieces follow it."""
        pack = self._pack
        return b"".join(
            (
                pack(shard_id),
                self._map(3),
                pack("epoch"),
                pack(stamp[0]),
                pack("seq"),
                pack(stamp[1]),
                pack("data"),
                self._map(2),
                pack("ready"),
                pack(ready),
                pack("guilds"),
                self._array(guilds),
            )
        )

    def pack_guild(self, guild_id: int, entry: list[Any] | None) -> bytes:
        return self._pack([guild_id, entry])

    def pack_tail(self, sessions: list[list[Any]] | None) -> bytes:
        return self._pack("sessions") + self._pack(sessions or [])

    def write(self, data: bytes) -> None:
        self.size += len(data)
        self._file.write(data)

    def commit(self) -> int:
        """Flush, fsync, mode 0600, rename over ``path``; the bytes written."""
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.chmod(self._tmp, 0o600)
            os.replace(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise
        return self.size

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()
        with contextlib.suppress(OSError):
            os.unlink(self._tmp)


def write_cache(
    path: Path, shards: list[ShardSnapshot], sessions: list[list[Any]] | None = None
) -> int:
    """Write a snapshot and the client sessions (:meth:`ClientSession.dump`) to ``path``
    atomically (a :class:`CacheWriter`); the bytes written."""
    writer = CacheWriter(path)
    try:
        writer.write(writer.pack_head(len(shards)))
        for shard_id, stamp, data in shards:
            guilds = data["guilds"]
            writer.write(writer.pack_shard(shard_id, stamp, data["ready"], len(guilds)))
            for guild_id, entry in guilds:
                writer.write(writer.pack_guild(guild_id, entry))
        writer.write(writer.pack_tail(sessions))
    except BaseException:
        writer.abort()
        raise
    return writer.commit()


def save_cache(
    path: Path,
    cache: GuildCache,
    stamps: Mapping[int, tuple[int, int]],
    shard_ids: Iterable[int],
    sessions: list[list[Any]] | None = None,
) -> int:
    """:func:`snapshot` and :func:`write_cache` in one call; how many shards were written."""
    shards = snapshot(cache, stamps, shard_ids)
    write_cache(path, shards, sessions)
    return len(shards)


@dataclass(frozen=True, slots=True)
class SavedCache:
    shards: dict[int, SavedShard]
    #: client sessions as :meth:`cluster.endpoint.session.ClientSession.dump` made them
    sessions: list[list[Any]]


def load_cache(path: Path) -> SavedCache:
    """What ``path`` holds (nothing: no file, or one that does not load)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return SavedCache({}, [])
    except OSError as exc:
        log.warning("cannot read the gateway cache %s: %s", path, exc.strerror or exc)
        return SavedCache({}, [])
    try:
        doc = msgpack.unpackb(raw, raw=False, strict_map_key=False)
        if not isinstance(doc, dict) or doc.get("version") != CACHE_FILE_VERSION:
            raise ValueError("not a gateway cache of this version")
        shards = {
            int(shard_id): SavedShard(int(entry["epoch"]), int(entry["seq"]), entry["data"])
            for shard_id, entry in doc["shards"].items()
        }
        sessions = doc.get("sessions") or []
        if not isinstance(sessions, list):
            raise ValueError("sessions is not a list")
        return SavedCache(shards, sessions)
    except (ValueError, TypeError, KeyError, AttributeError, msgpack.UnpackException) as exc:
        log.warning("ignoring the gateway cache %s: %s", path, exc)
        return SavedCache({}, [])
