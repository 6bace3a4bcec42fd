"""Tests of the multi-host harness (tests/e2e/netns.py) itself.

Each simulated host runs a small line-driven socket agent (``AGENT``) started
with ``host.command([sys.executable, "-c", AGENT])``; the server side is an
asyncio echo server in the test process. The netns cases skip, with the
reason, when :func:`netns_available` says namespaces cannot be used; the
loopback cases run everywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.e2e.netns import (
    IFNAMSIZ,
    SUBNET,
    Host,
    HostNet,
    NetnsUnavailable,
    netns_available,
)

pytestmark = pytest.mark.timeout(10)

REPO = Path(__file__).resolve().parents[2]
SHORT = 0.5  # seconds: a connection attempt across a partition must give up by then

# One command per stdin line, one reply per stdout line:
#   connect IP PORT TIMEOUT [SRC] -> "ok ID" | "timeout" | "error ..."
#   echo ID TIMEOUT               -> "ok" | "timeout" | "error ..."   (on connection ID)
#   serve IP                      -> "ok PORT"                         (an echo server)
AGENT = r"""
import socket, sys, threading

def echo(conn):
    with conn:
        while data := conn.recv(4096):
            conn.sendall(data)

def serve(srv):
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=echo, args=(conn,), daemon=True).start()

socks = []
for line in sys.stdin:
    cmd, *args = line.split()
    try:
        if cmd == "connect":
            src = (args[3], 0) if len(args) > 3 else None
            s = socket.create_connection((args[0], int(args[1])), float(args[2]), src)
            socks.append(s)
            reply = f"ok {len(socks) - 1}"
        elif cmd == "echo":
            s = socks[int(args[0])]
            s.settimeout(float(args[1]))
            s.sendall(b"ping")
            data = s.recv(4)
            reply = "ok" if data == b"ping" else f"error got {data!r}"
        elif cmd == "serve":
            srv = socket.create_server((args[0], 0))
            threading.Thread(target=serve, args=(srv,), daemon=True).start()
            reply = f"ok {srv.getsockname()[1]}"
        else:
            reply = f"error unknown command {cmd}"
    except TimeoutError:
        reply = "timeout"
    except OSError as exc:
        reply = f"error {exc}"
    print(reply, flush=True)
"""


class Agent:
    """The AGENT program running on one host."""

    def __init__(self, host: Host, process: asyncio.subprocess.Process) -> None:
        self.host = host
        self.process = process

    @classmethod
    async def start(cls, host: Host) -> Agent:
        process = await asyncio.create_subprocess_exec(
            *host.command([sys.executable, "-c", AGENT]),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(host, process)

    async def ask(self, line: str, wait: float = 5.0) -> str:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(line.encode() + b"\n")
        await self.process.stdin.drain()
        reply = await asyncio.wait_for(self.process.stdout.readline(), wait)
        if not reply:
            assert self.process.stderr is not None
            err = await asyncio.wait_for(self.process.stderr.read(), 2)
            raise AssertionError(f"agent on {self.host.name} died: {err.decode()}")
        return reply.decode().strip()

    async def connect(self, ip: str, port: int, give_up: float = 2.0) -> str:
        """Connect from this host; in loopback mode from its address explicitly."""
        src = f" {self.host.ip}" if self.host.mode == "loopback" else ""
        return await self.ask(f"connect {ip} {port} {give_up}{src}", give_up + 3)

    async def stop(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
        await asyncio.wait_for(self.process.wait(), 5)


@contextlib.asynccontextmanager
async def agents(net: HostNet) -> AsyncIterator[list[Agent]]:
    started: list[Agent] = []
    try:
        for host in net.hosts:
            started.append(await Agent.start(host))
        yield started
    finally:
        for agent in started:
            await agent.stop()


class EchoServer:
    """An asyncio echo server in the test process that records its peers' addresses."""

    def __init__(self) -> None:
        self.peers: list[str] = []
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.peers.append(writer.get_extra_info("peername")[0])
        self.writers.append(writer)
        try:
            while data := await reader.read(4096):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def start(self, ip: str) -> EchoServer:
        self.server = await asyncio.start_server(self._handle, ip, 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for writer in self.writers:
            writer.close()


@contextlib.asynccontextmanager
async def echo_server(ip: str) -> AsyncIterator[EchoServer]:
    server = await EchoServer().start(ip)
    try:
        yield server
    finally:
        await server.stop()


def _mode_param(mode: str) -> str:
    if mode == "netns":
        reason = netns_available()
        if reason is not None:
            pytest.skip(f"network namespaces unavailable: {reason}")
    return mode


@pytest.fixture(params=["netns", "loopback"])
def mode(request: pytest.FixtureRequest) -> str:
    return _mode_param(str(request.param))


@pytest.fixture
def netns_mode() -> str:
    return _mode_param("netns")


def _output(argv: list[str]) -> str:
    """stdout of a short command (run synchronously: a few ms)."""
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=5, check=False)
    assert proc.returncode == 0, (argv, proc.stderr)
    return proc.stdout


def _ip_names() -> tuple[list[str], list[str]]:
    """(namespaces, root-namespace links) as ``ip netns list`` and ``ip link show`` print them."""
    netns, links = _output(["ip", "netns", "list"]), _output(["ip", "-o", "link", "show"])
    ns_names = [line.split()[0] for line in netns.splitlines() if line.strip()]
    link_names = [line.split(":")[1].strip().split("@")[0] for line in links.splitlines()]
    return ns_names, link_names


def _ours(names: list[str], base: str) -> list[str]:
    return [n for n in names if n.startswith(base)]


# --------------------------------------------------------------------------- (a) and (b)


async def test_server_side_reachable_from_every_host(mode: str) -> None:
    """(a) a server bound on server_ip in the root namespace answers each host's process."""
    async with HostNet(3, mode=mode) as net, echo_server(net.server_ip) as server:  # type: ignore[arg-type]
        assert net.mode == mode
        async with agents(net) as hosts:
            for agent in hosts:
                reply = await agent.connect(net.server_ip, server.port)
                assert reply == "ok 0", (agent.host, reply)
                assert await agent.ask("echo 0 2") == "ok"
        # each host is seen with its own address
        assert server.peers == [h.ip for h in net.hosts]


async def test_host_side_reachable_from_test_process(mode: str) -> None:
    """(b) a server bound in a host (on host.ip) answers the test process."""
    async with HostNet(2, mode=mode) as net, agents(net) as hosts:  # type: ignore[arg-type]
        for agent in hosts:
            reply = await agent.ask(f"serve {agent.host.ip}")
            assert reply.startswith("ok "), reply
            port = int(reply.split()[1])
            reader, writer = await asyncio.wait_for(asyncio.open_connection(agent.host.ip, port), 2)
            try:
                writer.write(b"hello")
                assert await asyncio.wait_for(reader.readexactly(5), 2) == b"hello"
            finally:
                writer.close()


async def test_host_to_host(netns_mode: str) -> None:
    """Hosts reach each other across the bridge (host 0 serves, host 1 connects)."""
    async with HostNet(2, mode="netns") as net, agents(net) as (a0, a1):
        reply = await a0.ask(f"serve {a0.host.ip}")
        assert reply.startswith("ok "), reply
        assert await a1.connect(a0.host.ip, int(reply.split()[1])) == "ok 0"
        assert await a1.ask("echo 0 2") == "ok"


# --------------------------------------------------------------------------- (c) partitions


async def test_partition_and_heal(netns_mode: str) -> None:
    """(c) partition_from cuts one endpoint (new and established connections), heal restores it."""
    async with (
        HostNet(2, mode="netns") as net,
        echo_server(net.server_ip) as cut,
        echo_server(net.server_ip) as other,
        agents(net) as (a0, a1),
    ):
        host = net.hosts[0]
        assert await a0.connect(net.server_ip, cut.port) == "ok 0"  # established before
        assert await a0.ask("echo 0 2") == "ok"

        host.partition_from(net.server_ip, cut.port)
        host.partition_from(net.server_ip, cut.port)  # idempotent
        assert host.partitions == [(net.server_ip, cut.port)]

        started = time.monotonic()
        assert await a0.connect(net.server_ip, cut.port, give_up=SHORT) == "timeout"
        assert SHORT * 0.8 <= time.monotonic() - started < SHORT + 1.5
        assert await a0.ask(f"echo 0 {SHORT}") == "timeout"  # the established one stalls too
        assert await a0.connect(net.server_ip, other.port) == "ok 1"  # another port still works
        assert await a0.ask("echo 1 2") == "ok"
        assert await a1.connect(net.server_ip, cut.port) == "ok 0"  # other hosts unaffected

        host.heal()
        assert host.partitions == []
        assert await a0.connect(net.server_ip, cut.port) == "ok 2"
        assert await a0.ask("echo 2 2") == "ok"
        # the stalled connection recovers on its own once TCP retransmits (no reset)
        assert await a0.ask("echo 0 4", wait=6) == "ok"
        rules = _output(host.command(["iptables", "-S"]))
        assert "DROP" not in rules, rules
        host.heal()  # idempotent


async def test_partition_unavailable_in_loopback_mode() -> None:
    async with HostNet(1, mode="loopback") as net:
        with pytest.raises(NetnsUnavailable, match="loopback"):
            net.hosts[0].partition_from(net.server_ip, 1234)
        net.hosts[0].heal()  # nothing to heal


# --------------------------------------------------------------------------- (d) cleanup


async def test_cleanup_leaves_nothing(netns_mode: str) -> None:
    """(d) after exit no namespace, link or address of ours remains, and exit is idempotent."""
    net = HostNet(3, mode="netns")
    async with net:
        names_ns, names_links = _ip_names()
        assert sorted(_ours(names_ns, net.base)) == sorted(h.name for h in net.hosts)
        assert len(_ours(names_links, net.base)) == 1 + len(net.hosts)  # bridge + veths
        assert all(len(n) <= IFNAMSIZ for n in _ours(names_links, net.base))
        for host in net.hosts:  # only our TEST-NET-2 address (and loopback) in a host
            out = _output(["ip", "-n", host.name, "-j", "addr", "show"])
            addrs = [a["local"] for link in json.loads(out) for a in link.get("addr_info", [])]
            assert all(ipaddress.ip_address(a).is_loopback or a == host.ip for a in addrs), addrs
            assert host.ip in addrs
        # a process left running in a host is killed at exit
        straggler = await Agent.start(net.hosts[1])
        assert await straggler.ask(f"serve {net.hosts[1].ip}") != ""
        net.hosts[0].partition_from(net.server_ip, 9)
    assert await asyncio.wait_for(straggler.process.wait(), 5) == -signal.SIGKILL
    names_ns, names_links = _ip_names()
    assert _ours(names_ns, net.base) == []
    assert _ours(names_links, net.base) == []
    assert net.leftovers() == []
    out = _output(["ip", "-j", "-4", "addr", "show"])
    ours = [
        a["local"]
        for link in json.loads(out)
        for a in link.get("addr_info", [])
        if ipaddress.ip_address(a["local"]) in SUBNET and link["ifname"].startswith(net.base)
    ]
    assert ours == []
    net.close()  # idempotent
    net.hosts[0].heal()  # harmless once closed


def test_cleanup_on_error_sync(netns_mode: str) -> None:
    """The sync form cleans up too when the body raises."""
    net = HostNet(2, mode="netns")
    with pytest.raises(ZeroDivisionError), net:
        assert net.leftovers()
        _ = 1 / 0
    assert net.leftovers() == []


def test_leftovers_of_killed_run_are_removed(netns_mode: str) -> None:
    """A run killed with SIGKILL leaves its namespaces; the next HostNet removes them."""
    code = (
        "import sys, time\n"
        "from tests.e2e.netns import HostNet\n"
        "net = HostNet(2, mode='netns').open()\n"
        "print('BASE', net.base, flush=True)\n"
        "time.sleep(30)\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert child.stdout is not None
        base = ""
        for line in child.stdout:  # bounded by the test timeout
            if line.startswith("BASE "):
                base = line.split()[1]
                break
        assert base, child.stderr.read() if child.stderr else ""
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(5)
    names_ns, names_links = _ip_names()
    assert len(_ours(names_ns, base)) == 2 and _ours(names_links, base)
    with HostNet(1, mode="netns"):
        names_ns, names_links = _ip_names()
        assert _ours(names_ns, base) == [] and _ours(names_links, base) == []


def test_names_are_short_and_unique() -> None:
    """Names fit IFNAMSIZ and differ between instances; loopback addresses as documented."""
    a, b = HostNet(3, mode="loopback"), HostNet(3, mode="loopback")
    assert a.base != b.base
    assert len(a.bridge) <= IFNAMSIZ
    assert [h.ip for h in a.hosts] == ["127.0.0.11", "127.0.0.12", "127.0.0.13"]
    assert a.server_ip == "127.0.0.1"
    assert a.hosts[0].command(["true"]) == ["true"]
    if netns_available() is None:
        n = HostNet(200, mode="netns")  # not opened: nothing is created
        assert n.server_ip == "198.51.100.1"
        assert n.hosts[0].ip == "198.51.100.10" and n.hosts[-1].ip == "198.51.100.209"
        assert n.hosts[0].command(["true"]) == ["ip", "netns", "exec", n.hosts[0].name, "true"]
        assert all(len(n._veth(h)) <= IFNAMSIZ for h in n.hosts)
