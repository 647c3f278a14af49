"""clockwork: predictable multi-tenant DNN inference serving.

Processes (see README): clients -> controller -> workers, joined by ZeroMQ.
Packages follow that diagram: transport (wire schema and sockets), worker (runtime, executors,
memory), model (directory format and device backends), controller (edge and schedulers),
client (library and workloads), telemetry.
"""

__version__ = "0.1.0"
