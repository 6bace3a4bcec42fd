"""A worker process: one uvloop event loop running a group of gateway shards.

- :mod:`worker.main`: ``run_worker(spec)``, the multiprocessing target (worker.entry names it), and
  the exit codes the supervisor reads (``protocol.exitcodes.ExitCode``; FATAL = 78: do not respawn).
- :mod:`worker.entry`: the process target the supervisor names (``run_spec``), light
  to import;
  :mod:`worker.forkserver`: what the forkserver the workers fork from imports.
- :mod:`worker.spec`: the frozen ``WorkerSpec``, all a worker process is given.
- :mod:`worker.group`: ``ShardGroup`` (shards + the ZeroMQ channels of ``protocol.ipc``).
- :mod:`worker.shard`: the async runner of one shard: its reconnect loop and identify slots;
  :mod:`worker.connection`: one connection of it: messages, heartbeat, commands;
  :mod:`worker.websocket`: that connection's websocket (picows), whole messages and its ending.
- :mod:`worker.state`: the pure shard state machine; :mod:`worker.backoff`,
  :mod:`worker.ratelimit`: pure policies with an injected clock.
- :mod:`worker.permits`: the ``PermitSource`` protocol; :mod:`worker.identify_client`
  implements it against the cluster's identify coordinator.
"""
