"""`cw simulate`: clockwork's own controller edge, scheduler and worker runtime in simulated time.

Nothing here re-implements serving. The pieces that run in production run here unchanged; only
what lies outside them (time, sockets, processes) is simulated:

    events.py      the simulated clock and the event heap (integer ns, deterministic ties)
    network.py     in-memory stand-ins for ZeroMQ sockets, links with sampled delays, FIFO
                   order, connection resets (the only way TCP loses messages) and reconnects
    worker.py      a simulated worker process: the real WorkerRuntime over the emulated backend,
                   its own skewed and drifting clock, heartbeats, exec-time noise, slowdowns
    controller.py  the real Controller edge (validation, admission, clock conversion, loss and
                   rejoin, logs, stats) with its sockets replaced by network.py's
    client.py      the real workload engine (clockwork.client.workloads) driven in simulated time
    config.py      the simulation's settings (a TOML file and/or flags), checked with one-line errors
    fidelity.py    SLO attainment and goodput from a request log, the same way for real and simulated
    run.py         puts them together, runs, prints progress and stats lines
    command.py     `cw simulate`

Determinism: every random draw comes from a random.Random seeded from the one seed (delays,
drops, exec noise, worker clocks, the controller epoch, and the workloads' own arrival seeds),
nothing reads the wall clock, and same-time events run in scheduling order: the same config and
seed give the same logs byte for byte (tests/test_simulate.py).
"""
