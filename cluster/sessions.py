"""The session store: shard sessions saved to ``--state-dir`` so a restart RESUMEs.

One JSON file, written atomically (temp file, fsync, rename) with mode 0600.
It is keyed by a fingerprint of the token (a truncated SHA-256, never the
token) and by the total shard count: sessions of another bot or of another
shard layout are never offered for resume. Sessions older than ``max_age_s``
are skipped: Discord keeps a dropped session resumable for "a few minutes",
and a resume that fails anyway only costs a round trip before the IDENTIFY.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson

STATE_FORMAT_VERSION: Final = 1
SESSIONS_FILE: Final = "sessions.json"
DEFAULT_MAX_AGE_S: Final = 600.0


@dataclass(frozen=True, slots=True)
class SavedSession:
    session_id: str
    seq: int
    resume_url: str
    saved_at: float


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

    def save(self, sessions: dict[int, SavedSession]) -> None:
        """Replace the saved sessions atomically."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        document: dict[str, Any] = {
            "format": STATE_FORMAT_VERSION,
            "token_fingerprint": self._fingerprint,
            "total_shards": self._total_shards,
            "sessions": {
                str(shard_id): {
                    "session_id": s.session_id,
                    "seq": s.seq,
                    "resume_url": s.resume_url,
                    "saved_at": s.saved_at,
                }
                for shard_id, s in sorted(sessions.items())
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

    def load(
        self, max_age_s: float = DEFAULT_MAX_AGE_S, now: float | None = None
    ) -> dict[int, SavedSession]:
        """Sessions that may still be resumed; anything unreadable or foreign is ignored."""
        now = time.time() if now is None else now
        try:
            document = orjson.loads(self.path.read_bytes())
        except (FileNotFoundError, orjson.JSONDecodeError, OSError):
            return {}
        if (
            not isinstance(document, dict)
            or document.get("format") != STATE_FORMAT_VERSION
            or document.get("token_fingerprint") != self._fingerprint
            or document.get("total_shards") != self._total_shards
            or not isinstance(document.get("sessions"), dict)
        ):
            return {}
        sessions: dict[int, SavedSession] = {}
        for key, raw in document["sessions"].items():
            try:
                shard_id = int(key)
                session = SavedSession(
                    session_id=str(raw["session_id"]),
                    seq=int(raw["seq"]),
                    resume_url=str(raw["resume_url"]),
                    saved_at=float(raw["saved_at"]),
                )
            except (KeyError, TypeError, ValueError):
                continue
            if 0 <= shard_id < self._total_shards and 0 <= now - session.saved_at <= max_age_s:
                sessions[shard_id] = session
        return sessions

    def clear(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
