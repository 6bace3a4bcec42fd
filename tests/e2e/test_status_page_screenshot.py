"""The status page in a real browser: headless Chromium renders the shard grid from a live /status.

A real :class:`cluster.http.HealthServer` serves a 64-shard cluster in mixed
states. Chromium loads ``/`` twice: ``--dump-dom`` shows the grid the page's
script built (one ``.cell`` per shard, its state as a class), and
``--screenshot`` proves it is painted: the PNG (read with zlib and struct, no
imaging library) holds the ready green and the fatal red.

Chromium is Debian's ``chromium`` package; ``.ci/run`` installs it. Outside
CI a machine without it skips this test and says why.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import struct
import zlib
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cluster.http import HealthServer
from cluster.status import ClusterStatus
from cluster.workers import WorkerState
from protocol.session import ShardPhase

pytestmark = pytest.mark.timeout(90)

SHARDS = 64
WIDTH, HEIGHT = 1280, 900
READY_GREEN = (0x3F, 0xB9, 0x50)
FATAL_RED = (0xF8, 0x51, 0x49)
#: Shard states by shard id: mostly ready, a few of every other phase, two fatal.
STATES = (
    ["ready"] * 44
    + ["resuming"] * 5
    + ["identifying"] * 3
    + ["awaiting_permit"] * 4
    + ["connecting"] * 2
    + ["awaiting_hello"] * 1
    + ["disconnected"] * 2
    + ["stopped"] * 1
    + ["fatal"] * 2
)
assert len(STATES) == SHARDS


def find_chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path is not None:
            return path
    if os.environ.get("CI") == "true":
        pytest.fail(
            "chromium is not installed; in CI .ci/run must install it (apt-get install chromium)"
        )
    pytest.skip(
        "chromium is not installed (apt-get install chromium); CI installs it and runs this test"
    )


@pytest.fixture
async def page_url() -> AsyncIterator[str]:
    budget = {"remaining": 936, "total": 1000, "exhausted": False, "reset_after_s": 5000.0}
    status = ClusterStatus(
        SHARDS,
        [(w, tuple(range(w * 16, w * 16 + 16))) for w in range(4)],
        identify_snapshot=lambda: budget,
    )
    for shard_id, state in enumerate(STATES):
        shard = status.shards[shard_id]
        shard.state = ShardPhase(state)
        shard.latency_ms = 30.0 + shard_id if state == "ready" else None
        shard.seq = shard.events = 1000 * shard_id
        shard.identifies = 1
    for worker in status.workers.values():
        worker.pid = 40000 + worker.worker_id
        worker.state = WorkerState.RUNNING
    # with --redis: this host and its peer, as Redis sees them
    status.sections["lease"] = lambda: {"held": True, "holder": "host-a:41:aa", "token": 3}
    status.sections["redis"] = lambda: {
        "up": True,
        "ranges": {
            "0-63": {"holder": "host-a:41:aa", "token": 3, "ttl_ms": 9500},
            "64-127": {"holder": "host-b:77:bb", "token": 1, "ttl_ms": 8100},
        },
    }
    # a reshard under way (the reshard section of /status)
    status.sections["reshard"] = lambda: {
        "switched_total": 0,
        "abandoned_total": 0,
        "deduplicated_total": 0,
        "phase": "starting",
        "old_shards": 64,
        "new_shards": 128,
        "new_ready": 32,
        "guild_creates_complete": False,
        "deduplicated": 0,
        "elapsed_s": 2.5,
        "eta_s": 1.8,
        "error": None,
    }
    server = HealthServer(status, "127.0.0.1", 0)
    await server.start()
    try:
        yield server.url + "/"
    finally:
        await server.stop()


async def chromium(binary: str, profile: Path, *args: str) -> bytes:
    """Run headless Chromium once; its stdout. Bounded, and killed on any failure."""
    process = await asyncio.create_subprocess_exec(
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=3000",
        f"--window-size={WIDTH},{HEIGHT}",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(60):
            out, err = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, err.decode(errors="replace")[-2000:]
    return out


# -- a minimal PNG reader (8-bit RGB/RGBA, non-interlaced: what Chromium writes) ----------


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def read_png(data: bytes) -> tuple[int, int, int, bytes]:
    """(width, height, bytes per pixel, unfiltered pixel rows concatenated)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, [], None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
        pos += 12 + length
    assert header is not None, "PNG without IHDR"
    width, height, depth, color, _, _, interlace = header
    assert depth == 8 and color in (2, 6) and interlace == 0, header
    bpp = 3 if color == 2 else 4
    raw = zlib.decompress(b"".join(idat))
    stride = width * bpp
    assert len(raw) == height * (stride + 1)
    rows: list[bytes] = []
    prev = bytes(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], raw[start + 1 : start + 1 + stride]
        if kind == 0:
            row = bytes(line)
        elif kind == 2:
            row = bytes((x + b) & 0xFF for x, b in zip(line, prev, strict=True))
        else:
            out = bytearray(line)
            for i in range(stride):
                a = out[i - bpp] if i >= bpp else 0
                b = prev[i]
                if kind == 1:
                    out[i] = (out[i] + a) & 0xFF
                elif kind == 3:
                    out[i] = (out[i] + ((a + b) >> 1)) & 0xFF
                else:
                    c = prev[i - bpp] if i >= bpp else 0
                    out[i] = (out[i] + _paeth(a, b, c)) & 0xFF
            row = bytes(out)
        rows.append(row)
        prev = row
    return width, height, bpp, b"".join(rows)


def count_colour(pixels: bytes, bpp: int, rgb: tuple[int, int, int]) -> int:
    """Pixels of exactly ``rgb`` (opaque)."""
    needle = bytes(rgb) + (b"\xff" if bpp == 4 else b"")
    count, pos = 0, pixels.find(needle)
    while pos != -1:
        if pos % bpp == 0:
            count += 1
        pos = pixels.find(needle, pos + 1)
    return count


# -- the test -------------------------------------------------------------------------------


async def test_the_status_page_renders_the_shard_grid_in_chromium(
    page_url: str, tmp_path: Path
) -> None:
    binary = find_chromium()

    dom = (await chromium(binary, tmp_path / "profile-dom", "--dump-dom", page_url)).decode()
    cells = re.findall(r'<div class="cell ([a-z_]+)" data-shard="(\d+)"', dom)
    assert len(cells) == SHARDS, dom[:2000]
    assert {int(shard): state for state, shard in cells} == dict(enumerate(STATES))
    assert re.search(r'<b id="ready">44</b>', dom) and re.search(r'<b id="total">64</b>', dom)
    assert re.search(r'<b id="budget">936</b>', dom)
    legend = dict(re.findall(r"</i>([a-z_]+) <b>(\d+)</b>", dom))
    assert {state: int(n) for state, n in legend.items()} == Counter(STATES)
    assert '<div id="problems"></div>' in dom  # every fetch worked
    assert '<span id="health" class="degraded">' in dom
    assert "16-31" in dom  # the worker table
    assert '<b id="role">owner</b>' in dom
    panel = dom[dom.find('id="hosts-panel"') : dom.find("<h2>Workers")]
    hosts = re.findall(r"<td>(\d+-\d+)</td><td>([^<]+)</td><td>(\d+)</td>", panel)
    assert hosts == [("0-63", "host-a:41:aa", "3"), ("64-127", "host-b:77:bb", "1")], panel
    block = dom[dom.find('<div id="reshard"') : dom.find('<div id="legend"')]
    assert "hidden" not in block.split(">", 1)[0], block
    assert "Reshard in progress: 64 \u2192 128 shards" in block, block
    assert "<span>new shards ready <b>32 / 128</b></span>" in block
    assert "<span>time left <b>about 1.8 s</b></span>" in block

    shot = tmp_path / "page.png"
    await chromium(binary, tmp_path / "profile-shot", f"--screenshot={shot}", page_url)
    data = shot.read_bytes()
    assert len(data) > 20_000  # a painted page, not a blank one
    width, height, bpp, pixels = read_png(data)
    assert (width, height) == (WIDTH, HEIGHT)
    green = count_colour(pixels, bpp, READY_GREEN)
    red = count_colour(pixels, bpp, FATAL_RED)
    # 44 ready cells of ~90x56 px and 2 fatal ones: thousands of pixels each, legend aside
    assert green > 44 * 2000, green
    assert red > 2 * 2000, red
    background = count_colour(pixels, bpp, (0x0D, 0x11, 0x17))
    assert background > width * height // 4  # the dark page around the grid
