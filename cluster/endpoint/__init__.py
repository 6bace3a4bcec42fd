"""The gateway endpoint (``cluster up --gateway HOST:PORT``): unchanged bot libraries connect here.

A websocket server in the supervisor speaking the Discord Gateway (v10, JSON,
zlib-stream / zstd-stream / none) to bot clients, fed by the relay, answering
IDENTIFY from a guild cache so a bot's restart costs no IDENTIFY at Discord.

- :mod:`cluster.endpoint.settings`: the options and the security rule off loopback
- :mod:`cluster.endpoint.server`: the aiohttp server, REST routes, the relay tap and the pump
- :mod:`cluster.endpoint.connection`: one websocket: Discord's rules, reading, writing
- :mod:`cluster.endpoint.session`: one client session: its seq numbering and replay buffer (pure)
- :mod:`cluster.endpoint.cache`: the guild cache, applying dispatches (pure)
- :mod:`cluster.endpoint.persist`: the cache on disk (periodic and graceful saves), and
  what a start does with it (go on, catch up by the RESUME's replay, or IDENTIFY)
- :mod:`cluster.endpoint.filters`: which dispatches a client's intents take, content blanked (pure)
- :mod:`cluster.endpoint.nonces`: member-chunk answers to the client that asked (pure)

Importing this package imports nothing heavy; ``server`` (aiohttp) is imported by
the supervisor only with ``--gateway``.
"""
