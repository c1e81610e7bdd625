"""embedsense server: the batching engine, the index, the senses logic and the gRPC API."""

import os

# Before torch loads OpenMP (libgomp reads it once): threads waiting at the end of a parallel
# region sleep instead of spinning. Spinning pays when the model has the cores to itself;
# when anything else runs on them (the event loop, gRPC, other processes), a spinning thread
# burns the time slice the thread it waits for needs: on a crowded 2-core machine a short
# forward then takes several times as long (tests/ops/load.py's clients share the cores).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
