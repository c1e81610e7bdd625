"""embedsense server: the batching engine, the index, the senses logic and the gRPC API."""

import os

# Before torch loads OpenMP (libgomp reads these once): how long a thread waiting for the next
# parallel region spins before it sleeps. libgomp's default (about 300,000 spins, or
# OMP_WAIT_POLICY=ACTIVE's minutes) burns, on a crowded machine, the time slice the thread it
# waits for needs; sleeping at once (PASSIVE) costs a wake-up at each of a forward's hundreds of
# parallel regions, which served 0.86x the texts/s at 32 callers. 10,000 spins (tenths of a
# millisecond) cover the gaps inside a forward, not those between forwards
# (docs/performance.md). The environment's settings win.
if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["GOMP_SPINCOUNT"] = "10000"
