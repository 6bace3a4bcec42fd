"""The guild cache on disk: saved when the supervisor stops gracefully, read when it starts.

A supervisor restarted gracefully RESUMEs its shards (DESIGN.md rule 8): no
READY and no GUILD_CREATE arrive again, so the endpoint's cache must come back
from disk. The file (``<state dir>/gateway-cache[-A-B].msgpack``, msgpack,
mode 0600, written atomically) holds every ready shard's cache and the
``(session epoch, seq)`` of the last event it had seen. At start the cache of a
shard is used only when that stamp is exactly the shard's resume point (the
session and seq it RESUMEs from): then the cache and the stream continue
without a gap. A shard whose cache cannot be trusted (a SIGKILL, a stale file,
another host owned it meanwhile) is not resumed but IDENTIFYs, so its READY
and GUILD_CREATEs fill the cache again; that costs one session start per such
shard (:meth:`cluster.endpoint.server.GatewayEndpoint.adopt`).

The file holds guild data (no token); nothing in it is trusted beyond its
shape: a file that does not load is ignored, logged, and its shards identify.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import tempfile
from collections.abc import Iterable, Mapping
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


def save_cache(
    path: Path,
    cache: GuildCache,
    stamps: Mapping[int, tuple[int, int]],
    shard_ids: Iterable[int],
    sessions: list[list[Any]] | None = None,
) -> int:
    """Write the ready shards of ``shard_ids`` with their stamps, and the client
    sessions (:meth:`ClientSession.dump`); how many shards were written."""
    shards: dict[int, dict[str, Any]] = {}
    for shard_id in shard_ids:
        stamp = stamps.get(shard_id)
        data = cache.dump_shard(shard_id)
        if stamp is None or data is None:
            continue
        shards[shard_id] = {"epoch": stamp[0], "seq": stamp[1], "data": data}
    body = msgpack.packb(
        {"version": CACHE_FILE_VERSION, "shards": shards, "sessions": sessions or []},
        use_bin_type=True,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".gateway-cache.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(body)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
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
