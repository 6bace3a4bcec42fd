"""systemd's notify protocol (``Type=notify``): READY, STATUS, WATCHDOG and STOPPING.

systemd starts the service with ``NOTIFY_SOCKET`` (a unix datagram socket: a path, or
``@name`` in the abstract namespace) and, with ``WatchdogSec=``, ``WATCHDOG_USEC``
(and ``WATCHDOG_PID``: the pid it expects the pings from). Each notification is one
datagram of ``KEY=VALUE`` lines (sd_notify(3)). Without ``NOTIFY_SOCKET`` every call
here is a no-op, so the supervisor calls it unconditionally.

:class:`SystemdNotifier` keeps the socket and what it last said;
:func:`watch` is the supervisor's task: ``READY=1`` once the supervisor is ready for
its role (an owner with every shard READY, a spare able to take over: the
readiness of ``/health``), a ``STATUS=`` line whenever the shard count changes,
``WATCHDOG=1`` every half watchdog interval from the supervisor's own event loop
(a stuck loop stops the pings and systemd restarts the service; a Discord outage
does not). ``STOPPING=1`` is sent by the supervisor when it starts to drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable, Mapping
from typing import Final

log = logging.getLogger(__name__)

#: How often the status line and readiness are looked at (without a watchdog).
STATUS_INTERVAL_S: Final = 1.0


class SystemdNotifier:
    """Sends notifications to ``NOTIFY_SOCKET``; does nothing without one."""

    def __init__(self, address: str | None, watchdog_s: float | None = None) -> None:
        self.watchdog_s = watchdog_s
        self._sock: socket.socket | None = None
        self._address: str | bytes | None = None
        self.ready_sent = False
        self._status: str | None = None
        if not address:
            return
        # "@name" is the abstract namespace: a leading NUL byte on the wire.
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._sock.setblocking(False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SystemdNotifier:
        """From ``NOTIFY_SOCKET`` and ``WATCHDOG_USEC`` (ignored if ``WATCHDOG_PID`` is another's)."""
        env = os.environ if environ is None else environ
        watchdog_s = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if (
            usec.isascii()
            and usec.isdigit()
            and int(usec) > 0
            and (not pid or pid == str(os.getpid()))
        ):
            watchdog_s = int(usec) / 1_000_000
        return cls(env.get("NOTIFY_SOCKET"), watchdog_s)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, *lines: str) -> bool:
        """Send one datagram of ``lines``; False (and one log line) if it cannot go out."""
        if self._sock is None or self._address is None:
            return False
        try:
            self._sock.sendto("\n".join(lines).encode(), self._address)
        except OSError as exc:
            log.warning("sd_notify to %s failed: %s", self._address, exc.strerror or exc)
            return False
        return True

    def ready(self, status: str) -> None:
        if not self.ready_sent:
            self.ready_sent = self.notify("READY=1", f"STATUS={status}")
            self._status = status

    def status(self, status: str) -> None:
        if status != self._status:
            self._status = status
            self.notify(f"STATUS={status}")

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")

    def stopping(self, status: str = "draining") -> None:
        self.notify("STOPPING=1", f"STATUS={status}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


async def watch(notifier: SystemdNotifier, readiness: Callable[[], tuple[bool, str]]) -> None:
    """The supervisor's systemd task: readiness, status lines and watchdog pings, until cancelled.

    ``readiness()`` is (ready for the role, a one-line status such as
    ``"owner: 16/16 shards ready"``).
    """
    if not notifier.enabled:
        return
    interval = STATUS_INTERVAL_S
    if notifier.watchdog_s is not None:
        interval = min(interval, notifier.watchdog_s / 2)
    while True:
        with contextlib.suppress(Exception):  # a status callback must not end the pings
            ready, line = readiness()
            if ready:
                notifier.ready(line)
            notifier.status(line)
        if notifier.watchdog_s is not None:
            notifier.watchdog()
        await asyncio.sleep(interval)
