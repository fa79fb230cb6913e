"""Benchmarks of the `convox` CLI and rack against the Docker CLI, run side by side on the same machine.

Absolute times are noisy on shared machines, so every case measures a convox operation and its closest
Docker equivalent interleaved (same load, same caches) and reports the ratio convox/docker next to the
medians. ``python -m bench`` runs every case in :data:`bench.cases.CASES`, prints a table and writes
``bench/results/latest.json``. ``python -m bench.ceiling`` (``make bench-ceiling``) is a probe, not a case:
the exec throughput that one ideal relaying process between the engine and a client reaches against
``docker exec``.
"""
