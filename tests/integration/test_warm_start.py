"""Starting the workers' forkserver early (cluster/warm_start.py): a real server process."""

from __future__ import annotations

import psutil
import pytest

from cluster.warm_start import start_forkserver, worker_context


def test_the_forkserver_starts_at_once_and_imports_beside_us() -> None:
    if worker_context().get_start_method() != "forkserver":
        pytest.skip("this platform has no forkserver: workers are spawned")
    assert start_forkserver()
    commands = [" ".join(child.cmdline()) for child in psutil.Process().children()]
    assert any("forkserver" in command for command in commands)
