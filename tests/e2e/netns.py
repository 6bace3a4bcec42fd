"""Several simulated hosts on one machine, for multi-host end-to-end tests.

:class:`HostNet` gives each simulated host its own Linux network namespace,
joined by a veth pair to a bridge in the root namespace::

    root namespace                          namespace of host i
    bridge <base>b 198.51.100.1/24  <-->  veth <base>r<i> | eth0 198.51.100.(10+i)/24

The root side (``.server_ip``) is where tests bind the simulator and Redis;
each host runs its processes through ``host.command(argv)``, and
``host.partition_from(ip, port)`` cuts it off from one TCP endpoint with
iptables rules inside its own namespace (``heal()`` removes them). The root
namespace's firewall is never touched.

Only addresses in TEST-NET-2 (198.51.100.0/24) are used, IPv6 address
generation is turned off on every link we create, and the namespaces get no
default route, so nothing leaves the machine. Every name carries the pid and
a per-process counter (``tcn<pid36>-<n36>...``, at most 15 characters);
everything is removed at exit, also on failure or Ctrl-C, and whatever a
killed earlier run left behind is removed at the next start. As all runs use
the same subnet, a machine-wide lock lets one :class:`HostNet` exist at a
time; a second one (another pytest process, say) waits for it, bounded by
``lock_timeout``. Every command has a timeout.

Without root, ``ip`` or namespace support (see :func:`netns_available`), or
with ``TC_E2E_HOSTNET=loopback``, :class:`HostNet` falls back to distinct
loopback addresses (127.0.0.11, 127.0.0.12, ...; the server side is
127.0.0.1) behind the same interface, where ``command`` runs argv unchanged
and ``partition_from`` raises :class:`NetnsUnavailable`.

Run ``python -m tests.e2e.netns --cleanup`` to remove leftovers by hand.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import functools
import ipaddress
import itertools
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Literal

__all__ = [
    "ENV_MODE",
    "PREFIX",
    "SERVER_IP",
    "SUBNET",
    "Host",
    "HostNet",
    "NetnsError",
    "NetnsUnavailable",
    "cleanup_stale",
    "netns_available",
]

Mode = Literal["netns", "loopback"]

PREFIX = "tcn"
SUBNET = ipaddress.IPv4Network("198.51.100.0/24")  # TEST-NET-2 (RFC 5737)
SERVER_IP = "198.51.100.1"
HOST_OFFSET = 10  # host i is 198.51.100.(10 + i)
LOOPBACK_SERVER_IP = "127.0.0.1"
LOOPBACK_OFFSET = 11  # host i is 127.0.0.(11 + i) in loopback mode
MAX_HOSTS = 200
IFNAMSIZ = 15
ENV_MODE = "TC_E2E_HOSTNET"  # "auto" (default), "netns" or "loopback"

COMMAND_TIMEOUT = 10.0  # seconds, for one ip/iptables command
PROCESS_EXIT_TIMEOUT = 2.0  # seconds to wait for killed leftovers in a namespace

_NAME_RE = re.compile(
    rf"^{PREFIX}(?P<pid>[0-9a-z]{{1,6}})-(?P<n>[0-9a-z]{{1,3}})(?P<kind>[a-z][0-9a-z]*)$"
)
_LOCK_NAME = "titanium-e2e-hostnet.lock"
_counter = itertools.count()
_active: set[HostNet] = set()


class NetnsUnavailable(Exception):
    """Network namespaces (or, for a partition, iptables) cannot be used here."""


class NetnsError(RuntimeError):
    """An ip/iptables command failed or timed out, or cleanup was incomplete."""


# --------------------------------------------------------------------------- commands


def _run(
    argv: Sequence[str], *, timeout: float = COMMAND_TIMEOUT, check: bool = True
) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(
            list(argv),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise NetnsError(f"`{shlex.join(argv)}` timed out after {timeout:g}s") from exc
    except OSError as exc:
        raise NetnsError(f"`{shlex.join(argv)}` could not run: {exc}") from exc
    if check and proc.returncode != 0:
        raise NetnsError(
            f"`{shlex.join(argv)}` failed with exit code {proc.returncode}: {proc.stderr.strip()}"
        )
    return proc


def _b36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return out


def _new_base() -> str:
    """``tcn<pid36>-<n36>``: unique per process and per :class:`HostNet` in it."""
    return f"{PREFIX}{_b36(os.getpid())}-{_b36(next(_counter) % 36**3)}"


def _checked(name: str) -> str:
    if len(name) > IFNAMSIZ or not _NAME_RE.match(name):
        raise NetnsError(f"bad generated name {name!r}")
    return name


def _pid_of(name: str) -> int | None:
    m = _NAME_RE.match(name)
    return int(m.group("pid"), 36) if m else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purposes
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def _list_netns() -> list[str]:
    out = _run(["ip", "netns", "list"]).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _list_links() -> list[str]:
    out = _run(["ip", "-j", "link", "show"]).stdout
    return [str(link["ifname"]) for link in json.loads(out or "[]")]


def _addresses_in_subnet() -> list[tuple[str, str]]:
    """(interface, address) pairs of the root namespace inside :data:`SUBNET`."""
    out = _run(["ip", "-j", "-4", "addr", "show"]).stdout
    found = []
    for link in json.loads(out or "[]"):
        for addr in link.get("addr_info", []):
            local = addr.get("local")
            if local and ipaddress.IPv4Address(local) in SUBNET:
                found.append((str(link["ifname"]), str(local)))
    return found


def _kill_netns_processes(ns: str) -> list[int]:
    """SIGKILL whatever still runs in namespace ``ns``; waits (bounded) for it to go."""
    proc = _run(["ip", "netns", "pids", ns], check=False)
    pids = [int(p) for p in proc.stdout.split() if p.isdigit() and int(p) != os.getpid()]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + PROCESS_EXIT_TIMEOUT
    while any(_pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    return pids


def _delete_netns(ns: str) -> None:
    if ns not in _list_netns():
        return
    killed = _kill_netns_processes(ns)
    if killed:
        print(f"[netns] killed leftover processes {killed} in namespace {ns}", file=sys.stderr)
    _run(["ip", "netns", "delete", ns])


def _delete_link(name: str) -> None:
    proc = _run(["ip", "link", "delete", "dev", name], check=False)
    if proc.returncode != 0 and name in _list_links():
        raise NetnsError(f"could not delete link {name}: {proc.stderr.strip()}")


# --------------------------------------------------------------------------- lock and cleanup


def _lock_path() -> Path:
    run_lock = Path("/run/lock")
    base = run_lock if run_lock.is_dir() and os.access(run_lock, os.W_OK) else None
    return (base or Path(tempfile.gettempdir())) / _LOCK_NAME


def _acquire_lock(timeout: float) -> int:
    """The machine-wide lock: only one set of hosts owns 198.51.100.0/24 at a time."""
    path = _lock_path()
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                holder = path.read_text().strip() or "?"
                os.close(fd)
                raise NetnsError(
                    f"another HostNet (pid {holder}) held {path} for more than {timeout:g}s"
                ) from None
            time.sleep(0.05)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _release_lock(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
    os.close(fd)  # closing drops the flock


def _remove_stale() -> list[str]:
    """Remove our namespaces and links whose owning process is dead (or is us but idle).

    The caller holds the lock, and no :class:`HostNet` of this process is open.
    """
    me = os.getpid()
    removed: list[str] = []
    # namespaces first: that removes their veth ends and so the root-side veths
    for ns in _list_netns():
        pid = _pid_of(ns)
        if pid is not None and (pid == me or not _pid_alive(pid)):
            _delete_netns(ns)
            removed.append(ns)
    for link in _list_links():
        pid = _pid_of(link)
        if pid is not None and (pid == me or not _pid_alive(pid)):
            _delete_link(link)
            removed.append(link)
    return removed


def cleanup_stale(lock_timeout: float = 30.0) -> list[str]:
    """Remove leftovers of dead runs (namespaces and links named ``tcn...``); returns their names."""
    if _active:
        raise NetnsError("a HostNet of this process is open")
    fd = _acquire_lock(lock_timeout)
    try:
        return _remove_stale()
    finally:
        _release_lock(fd)


# --------------------------------------------------------------------------- availability


def _requested_mode() -> str:
    value = os.environ.get(ENV_MODE, "auto").strip().lower() or "auto"
    if value not in ("auto", "netns", "loopback"):
        raise ValueError(f"{ENV_MODE} must be auto, netns or loopback, not {value!r}")
    return value


@functools.lru_cache(maxsize=1)
def _probe() -> str | None:
    if not sys.platform.startswith("linux"):
        return f"network namespaces need Linux (this is {sys.platform})"
    if os.geteuid() != 0:
        return f"network namespaces need root (euid is {os.geteuid()})"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    base = _new_base()
    ns, veth, bridge = f"{base}p", f"{base}pv", f"{base}pb"
    steps = [
        ("ip netns add", ["ip", "netns", "add", ns]),
        (
            "veth creation",
            ["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns],
        ),
        ("bridge creation", ["ip", "link", "add", bridge, "type", "bridge"]),
        ("ip netns exec", ["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"]),
    ]
    try:
        for what, argv in steps:
            try:
                _run(argv, timeout=5.0)
            except NetnsError as exc:
                return f"{what} fails: {exc}"
        return None
    finally:
        for cleanup in (
            ["ip", "netns", "delete", ns],
            ["ip", "link", "delete", "dev", veth],
            ["ip", "link", "delete", "dev", bridge],
        ):
            with contextlib.suppress(NetnsError):
                _run(cleanup, timeout=5.0, check=False)


def netns_available() -> str | None:
    """None when :class:`HostNet` can use network namespaces, else the reason why not.

    The probe (root, ``ip``, creating a namespace, a veth pair and a bridge) runs once
    per process; ``TC_E2E_HOSTNET=loopback`` makes it report unavailable.
    """
    if _requested_mode() == "loopback":
        return f"{ENV_MODE}=loopback"
    return _probe()


# --------------------------------------------------------------------------- hosts


@dataclass(eq=False)
class Host:
    """One simulated host: a namespace (``name``) with its own address (``ip``)."""

    index: int
    name: str
    ip: str
    mode: Mode
    _partitions: list[tuple[str, int]] = field(default_factory=list, repr=False)
    _closed: bool = field(default=False, repr=False)

    def command(self, argv: Sequence[str]) -> list[str]:
        """The argv that runs ``argv`` on this host (in its namespace; unchanged in loopback mode).

        ``ip netns exec`` execs the program in place: its pid is the program's pid, and
        the environment and working directory are inherited.
        """
        if self.mode == "loopback":
            return list(argv)
        return ["ip", "netns", "exec", self.name, *argv]

    @property
    def partitions(self) -> list[tuple[str, int]]:
        """The (ip, port) endpoints this host is currently cut off from."""
        return list(self._partitions)

    def _rules(self, ip: str, port: int) -> list[list[str]]:
        return [
            ["OUTPUT", "-p", "tcp", "-d", f"{ip}/32", "--dport", str(port), "-j", "DROP"],
            ["INPUT", "-p", "tcp", "-s", f"{ip}/32", "--sport", str(port), "-j", "DROP"],
        ]

    def _iptables(self, op: str, rule: list[str], *, check: bool = True) -> int:
        argv = self.command(["iptables", "-w", "5", op, *rule])
        return _run(argv, check=check).returncode

    def partition_from(self, ip: str, port: int) -> None:
        """Drop all TCP between this host and ``ip:port``, both directions, new and established.

        Adds, inside this host's namespace, ``OUTPUT -p tcp -d ip --dport port -j DROP``
        and ``INPUT -p tcp -s ip --sport port -j DROP`` (inserted first in their chains).
        Packets vanish silently: connects and writes time out, nothing is reset.
        Raises :class:`NetnsUnavailable` in loopback mode or without ``iptables``.
        """
        if self.mode == "loopback":
            raise NetnsUnavailable(
                "partitions need network namespaces: in loopback mode all hosts share "
                "one network stack and an iptables rule would hit every host"
            )
        if self._closed:
            raise NetnsError(f"host {self.name} is gone (HostNet closed)")
        if shutil.which("iptables") is None:
            raise NetnsUnavailable("the `iptables` command is not installed")
        addr = str(ipaddress.IPv4Address(ip))
        if not 0 < port < 65536:
            raise ValueError(f"bad port {port}")
        if (addr, port) in self._partitions:
            return
        added: list[list[str]] = []
        try:
            for rule in self._rules(addr, port):
                self._iptables("-I", rule)
                added.append(rule)
        except BaseException:
            for rule in added:
                with contextlib.suppress(NetnsError):
                    self._iptables("-D", rule, check=False)
            raise
        self._partitions.append((addr, port))

    def heal(self) -> None:
        """Remove exactly the rules that :meth:`partition_from` added (idempotent)."""
        if self._closed:  # the namespace and its rules are gone
            self._partitions.clear()
            return
        while self._partitions:
            addr, port = self._partitions[-1]
            for rule in self._rules(addr, port):
                if self._iptables("-D", rule, check=False) != 0 and (
                    self._iptables("-C", rule, check=False) == 0
                ):
                    raise NetnsError(f"could not remove iptables rule {rule} in {self.name}")
            self._partitions.pop()


# --------------------------------------------------------------------------- the network


class HostNet:
    """``n_hosts`` simulated hosts around a server side, as a context manager (sync or async).

    ``mode``: None or "auto" uses namespaces when :func:`netns_available` says so,
    else loopback addresses; "netns" raises :class:`NetnsUnavailable` instead of
    falling back; "loopback" never uses namespaces. The ``TC_E2E_HOSTNET``
    environment variable sets the default. The chosen mode is printed on entry.

    The ``ip`` commands run synchronously (about 5 ms each) also under ``async with``.
    At exit, processes still running inside a host's namespace are SIGKILLed (after
    the test's own teardown should have stopped them) so that the namespace goes away.
    """

    def __init__(
        self,
        n_hosts: int,
        *,
        mode: Literal["auto", "netns", "loopback"] | None = None,
        lock_timeout: float = 30.0,
    ) -> None:
        if not 1 <= n_hosts <= MAX_HOSTS:
            raise ValueError(f"n_hosts must be 1..{MAX_HOSTS}, not {n_hosts}")
        requested = mode or _requested_mode()
        self.fallback_reason: str | None = None
        if requested == "loopback":
            self.mode: Mode = "loopback"
        else:
            reason = netns_available()
            if reason is None:
                self.mode = "netns"
            elif requested == "netns":
                raise NetnsUnavailable(reason)
            else:
                self.mode, self.fallback_reason = "loopback", reason
        self.n_hosts = n_hosts
        self.lock_timeout = lock_timeout
        self.base = _new_base()
        self.bridge = _checked(f"{self.base}b")
        self.hosts: list[Host] = []
        if self.mode == "netns":
            self.server_ip = SERVER_IP
            for i in range(n_hosts):
                ip = str(SUBNET.network_address + HOST_OFFSET + i)
                self.hosts.append(Host(i, _checked(f"{self.base}h{_b36(i)}"), ip, "netns"))
        else:
            self.server_ip = LOOPBACK_SERVER_IP
            for i in range(n_hosts):
                ip = f"127.0.0.{LOOPBACK_OFFSET + i}"
                self.hosts.append(Host(i, f"loopback{i}", ip, "loopback"))
        self._lock_fd: int | None = None
        self._namespaces: list[str] = []  # created, to delete
        self._links: list[str] = []  # root-side links created, to delete (veths, then bridge)
        self._state: Literal["new", "open", "closed"] = "new"

    def __repr__(self) -> str:
        return f"HostNet(mode={self.mode!r}, server_ip={self.server_ip!r}, hosts={[h.ip for h in self.hosts]!r})"

    def _veth(self, host: Host) -> str:
        return _checked(f"{self.base}r{_b36(host.index)}")

    # ------------------------------------------------------------------ set up

    def open(self) -> HostNet:
        if self._state != "new":
            raise NetnsError(f"HostNet can be opened once (it is {self._state})")
        self._state = "open"
        try:
            if self.mode == "netns":
                self._open_netns()
        except BaseException:
            self.close(raise_errors=False)
            raise
        note = f" (namespaces unavailable: {self.fallback_reason})" if self.fallback_reason else ""
        print(f"[netns] HostNet mode={self.mode}{note}: {self!r}", flush=True)
        return self

    def _open_netns(self) -> None:
        if _active:
            raise NetnsError("only one HostNet at a time per process (they share 198.51.100.0/24)")
        _active.add(self)
        self._lock_fd = _acquire_lock(self.lock_timeout)
        removed = _remove_stale()
        if removed:
            print(f"[netns] removed leftovers of earlier runs: {removed}", file=sys.stderr)
        taken = _addresses_in_subnet()
        if taken:
            raise NetnsError(f"{SUBNET} is already in use in the root namespace: {taken}")
        prefix = SUBNET.prefixlen

        def no_ipv6(dev: str, *ns: str) -> None:
            # no fe80:: address on our links: the only non-loopback addresses are ours
            _run(["ip", *ns, "link", "set", "dev", dev, "addrgenmode", "none"], check=False)

        self._links.append(self.bridge)
        _run(["ip", "link", "add", "name", self.bridge, "type", "bridge", "stp_state", "0"])
        no_ipv6(self.bridge)
        _run(["ip", "addr", "add", f"{self.server_ip}/{prefix}", "dev", self.bridge])
        _run(["ip", "link", "set", "dev", self.bridge, "up"])
        for host in self.hosts:
            veth = self._veth(host)
            in_ns = ["-n", host.name]
            self._namespaces.append(host.name)
            _run(["ip", "netns", "add", host.name])
            self._links.insert(0, veth)  # the veths go before the bridge
            _run(
                [
                    *("ip", "link", "add", "name", veth, "type", "veth"),
                    *("peer", "name", "eth0", "netns", host.name),
                ]
            )
            no_ipv6(veth)
            _run(["ip", "link", "set", "dev", veth, "master", self.bridge, "up"])
            _run(["ip", *in_ns, "link", "set", "dev", "lo", "up"])
            no_ipv6("eth0", *in_ns)
            _run(["ip", *in_ns, "addr", "add", f"{host.ip}/{prefix}", "dev", "eth0"])
            _run(["ip", *in_ns, "link", "set", "dev", "eth0", "up"])
        self._wait_up()

    def _wait_up(self, timeout: float = 5.0) -> None:
        """Every link operationally up (veth carrier needs both ends up; no STP delay)."""
        deadline = time.monotonic() + timeout
        pending = {h.name for h in self.hosts}
        while True:
            for name in list(pending):
                out = _run(["ip", "-n", name, "-j", "link", "show", "dev", "eth0"]).stdout
                if json.loads(out)[0].get("operstate") == "UP":
                    pending.discard(name)
            if not pending:
                return
            if time.monotonic() >= deadline:
                raise NetnsError(f"eth0 not up after {timeout:g}s in {sorted(pending)}")
            time.sleep(0.02)

    # ------------------------------------------------------------------ tear down

    def close(self, *, raise_errors: bool = True) -> None:
        """Remove every namespace and link this HostNet made; idempotent.

        Keeps going past errors, then raises one :class:`NetnsError` naming them
        (unless ``raise_errors`` is false: then they are printed to stderr).
        """
        if self._state == "closed":
            return
        errors: list[str] = []
        for host in self.hosts:
            host._closed = True
            host._partitions.clear()
        # namespaces first (killing what still runs there), then the root-side veths (gone
        # with their namespace, unless a process kept it alive), then the bridge
        for ns in list(self._namespaces):
            try:
                _delete_netns(ns)
                self._namespaces.remove(ns)
            except NetnsError as exc:
                errors.append(str(exc))
        for name in list(self._links):
            try:
                _delete_link(name)
                self._links.remove(name)
            except NetnsError as exc:
                errors.append(str(exc))
        # only now: if Ctrl-C cut the loop above short, the atexit hook tries again
        self._state = "closed"
        if self._lock_fd is not None:
            _release_lock(self._lock_fd)
            self._lock_fd = None
        _active.discard(self)
        if errors:
            message = "HostNet cleanup incomplete: " + "; ".join(errors)
            if raise_errors:
                raise NetnsError(message)
            print(f"[netns] {message}", file=sys.stderr)

    def leftovers(self) -> list[str]:
        """Namespaces and root-namespace links of this HostNet that still exist."""
        if self.mode == "loopback":
            return []
        names = [*_list_netns(), *_list_links()]
        return [n for n in names if n.startswith(self.base) and _NAME_RE.match(n)]

    def __enter__(self) -> HostNet:
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close(raise_errors=exc is None)

    async def __aenter__(self) -> HostNet:
        return self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close(raise_errors=exc is None)


@atexit.register
def _close_all() -> None:
    for net in list(_active):
        net.close(raise_errors=False)


if __name__ == "__main__":
    if sys.argv[1:] != ["--cleanup"]:
        sys.exit("usage: python -m tests.e2e.netns --cleanup")
    reason = netns_available()
    if reason:
        sys.exit(f"nothing to do: {reason}")
    print("removed:", cleanup_stale() or "nothing")
