"""KServe v2 / Open Inference Protocol front end (`cw frontend`): HTTP and gRPC in front of a
controller, as a client of it, so tritonclient, perf_analyzer, curl and gateways can use
clockwork. See docs/frontend.md.

    registry.py     model names / versions / tensor descriptions from the controller's LS
    link.py         the controller connection (clockwork's client library) on the asyncio loop
    inference.py    one request through the controller: checks, limits, outcome
    errors.py       status mapping (clockwork status -> HTTP status / gRPC code)
    http_server.py  the REST API (an asyncio Protocol with httptools)
    grpc_server.py  inference.GRPCInferenceService (grpc.aio, tritonclient's generated code)
    metrics.py      Prometheus metrics of the front end
    command.py      `cw frontend`
"""
