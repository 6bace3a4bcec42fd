"""Benchmarks of Titanium Cluster against the simulator on loopback (issue 5).

Run ``python -m scripts.bench [--quick] [--only NAME ...] [--repeat N]``; the
result is written to ``docs/BENCHMARKS.md``. Module map: ``run`` (the command
and the benchmarks), ``procs`` (processes, CPU of a process tree, line
protocol with children), ``stats`` (median and spread), ``report`` (machine
facts and the markdown), ``sink`` (the PULL/SUB consumer process),
``floor``/``worker_proc``/``dpy_recv``/``hikari_recv`` (receivers, each a
process of its own), ``node/`` (@discordjs/ws receiver), ``sim_proc`` (the
full simulator in its own process).
"""
