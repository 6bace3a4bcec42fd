"""Every exit status a process of the cluster ends with: one contract, read by supervisors and operators.

Workers end with OK, CRASH or FATAL and the supervisor decides from it
(cluster/restart_policy.py: FATAL is never respawned). ``cluster up`` ends with
the same numbers, so systemd (``RestartPreventExitStatus=2 78``) and Kubernetes
tell a retry that can help from one that cannot.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    #: Stopped or drained as asked.
    OK = 0
    #: An unexpected error, or a failure worth retrying (Discord or Redis unreachable).
    CRASH = 1
    #: A bad option or value: retrying with the same command line cannot help.
    USAGE = 2
    #: EX_CONFIG: a fatal gateway close code (4004 token, 4010-4014 shards, version,
    #: intents): retrying with the same configuration cannot help.
    FATAL = 78
    #: A second SIGINT/SIGTERM ended the drain at once (128 + SIGINT, as shells do).
    INTERRUPTED = 130
