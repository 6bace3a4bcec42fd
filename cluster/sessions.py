"""The session store: shard sessions saved to ``--state-dir`` so a restart RESUMEs.

One JSON file, written atomically (temp file, fsync, rename, fsync of the
directory) with mode 0600. It is keyed by a fingerprint of the token (a
truncated SHA-256, never the token) and by the total shard count: sessions of
another bot or of another shard layout are never offered for resume. A file
older than ``max_age_s`` (one ``saved_at`` for the whole file) offers nothing:
Discord keeps a dropped session resumable for "a few minutes", and a resume
that fails anyway only costs a round trip before the IDENTIFY.

Format 2 (format 1 had a ``saved_at`` per session, and is still read)::

    {"format": 2, "token_fingerprint": "...", "total_shards": 16, "saved_at": 1700000000.0,
     "sessions": {"0": {"session_id": "...", "seq": 41, "resume_url": "wss://..."}}}
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import orjson

from protocol.session import Session

STATE_FORMAT_VERSION: Final = 2
#: The format before ``saved_at`` moved from each session to the file; still read.
_FORMAT_V1: Final = 1
SESSIONS_FILE: Final = "sessions.json"
DEFAULT_MAX_AGE_S: Final = 600.0


def token_fingerprint(token: str) -> str:
    return hashlib.sha256(b"titanium-cluster:" + token.encode()).hexdigest()[:16]


class SessionStore:
    """Sessions of one supervisor: all shards, or its ``--shard-ids`` range.

    A supervisor that runs a range of the shards keeps its own file
    (``sessions-A-B.json``), so several hosts may share one state dir.
    """

    def __init__(
        self,
        state_dir: Path | str,
        token: str,
        total_shards: int,
        shard_range: tuple[int, int] | None = None,
    ) -> None:
        if shard_range is None or shard_range == (0, total_shards - 1):
            name = SESSIONS_FILE
        else:
            name = f"sessions-{shard_range[0]}-{shard_range[1]}.json"
        self.path = Path(state_dir) / name
        self._fingerprint = token_fingerprint(token)
        self._total_shards = total_shards

    def save(self, sessions: Mapping[int, Session], saved_at: float | None = None) -> None:
        """Replace the saved sessions atomically; ``saved_at`` (wall clock) defaults to now."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        document: dict[str, Any] = {
            "format": STATE_FORMAT_VERSION,
            "token_fingerprint": self._fingerprint,
            "total_shards": self._total_shards,
            "saved_at": time.time() if saved_at is None else saved_at,
            "sessions": {
                str(shard_id): session.to_json() for shard_id, session in sorted(sessions.items())
            },
        }
        fd, tmp = tempfile.mkstemp(prefix=".sessions-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(orjson.dumps(document, option=orjson.OPT_INDENT_2))
                file.flush()
                os.fsync(file.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        # The rename is durable once the directory entry is on disk too.
        dir_fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def load(
        self, max_age_s: float = DEFAULT_MAX_AGE_S, now: float | None = None
    ) -> dict[int, Session]:
        """Sessions that may still be resumed; anything unreadable or foreign is ignored."""
        now = time.time() if now is None else now
        try:
            document = orjson.loads(self.path.read_bytes())
        except (FileNotFoundError, orjson.JSONDecodeError, OSError):
            return {}
        if (
            not isinstance(document, dict)
            or document.get("format") not in (STATE_FORMAT_VERSION, _FORMAT_V1)
            or document.get("token_fingerprint") != self._fingerprint
            or document.get("total_shards") != self._total_shards
            or not isinstance(document.get("sessions"), dict)
        ):
            return {}
        v1 = document["format"] == _FORMAT_V1
        if not v1 and not _fresh(document.get("saved_at"), now, max_age_s):
            return {}
        sessions: dict[int, Session] = {}
        for key, raw in document["sessions"].items():
            try:
                shard_id = int(key)
                session = Session.from_json(raw)
            except ValueError:
                continue
            if v1 and not _fresh(raw.get("saved_at"), now, max_age_s):
                continue
            if 0 <= shard_id < self._total_shards:
                sessions[shard_id] = session
        return sessions

    def clear(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def _fresh(saved_at: object, now: float, max_age_s: float) -> bool:
    """True when ``saved_at`` is a time at most ``max_age_s`` before ``now``."""
    if isinstance(saved_at, bool) or not isinstance(saved_at, int | float):
        return False
    return 0 <= now - saved_at <= max_age_s
