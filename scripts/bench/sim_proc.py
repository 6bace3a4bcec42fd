"""The full simulator in its own process (its CPU is not the receiver's).

``python -m scripts.bench.sim_proc '{"shards": 1024, ...}'`` (SimulatorConfig
fields as JSON); prints ``URLS <rest_url> <gateway_url>`` once it listens and
runs until SIGTERM.
"""

from __future__ import annotations

import asyncio
import signal
import sys

import orjson

from simulator import Simulator, SimulatorConfig


async def main() -> None:
    config = SimulatorConfig(**{"host": "127.0.0.1", "port": 0, **orjson.loads(sys.argv[1])})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with Simulator(config) as sim:
        print(f"URLS {sim.rest_url} {sim.gateway_url}", flush=True)
        await stop.wait()


if __name__ == "__main__":
    import uvloop

    uvloop.install()
    asyncio.run(main())
