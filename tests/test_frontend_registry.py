"""The front end's pure parts: model names / versions / tensors from LS, and the status mapping."""
import grpc
import pytest

from clockwork.client.api import CONNECTION_LOST, NO_ANSWER, SEND_FAILED, WRONG_PEER
from clockwork.frontend.errors import FrontendError, http_status
from clockwork.frontend.registry import Registry
from clockwork.status import Status
from clockwork.transport.schema import ModelInfo


def info(model_id, source, shape=(3, 4), dtype="float32", out_shape=(5,), out_dtype="float16",
         batch_sizes=(1, 2, 8)):
    import numpy as np
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize if dtype else 7
    out = int(np.prod(out_shape)) * np.dtype(out_dtype).itemsize if out_dtype else 3
    return ModelInfo(model_id, source, size, out, 100, 1, list(batch_sizes), [1] * len(batch_sizes), 1,
                     list(shape) if dtype else [], dtype, list(out_shape) if out_dtype else [], out_dtype)


def test_names_versions_and_default_copy():
    reg = Registry([info(5, "/models/zoo/resnet50"), info(2, "zoo/resnet50/"), info(3, "mlp"),
                    info(9, "/other/resnet50")])
    assert sorted(reg.models) == ["mlp", "resnet50"]
    assert reg.versions("resnet50") == ["1", "2", "3"]
    assert [reg.get("resnet50", v).model_id for v in ("1", "2", "3")] == [2, 5, 9]
    assert reg.get("resnet50").model_id == 2                 # no version: the lowest model id
    assert reg.get("resnet50", "4") is None and reg.get("nosuch") is None


def test_tensors_metadata_and_config():
    reg = Registry([info(0, "m", shape=(3, 4), dtype="float32", out_shape=(5,), out_dtype="float16")])
    m = reg.get("m")
    meta = reg.metadata(m)
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 3, 4]}]
    assert meta["outputs"] == [{"name": "output", "datatype": "FP16", "shape": [-1, 5]}]
    config = Registry.config(m)
    assert config["max_batch_size"] == 8
    assert config["input"] == [{"name": "input", "data_type": "TYPE_FP32", "dims": [3, 4]}]
    assert (m.input_size, m.output_size) == (48, 10)


@pytest.mark.parametrize("dtype,shape", [("", ()), ("complex64", (2,)), ("float32", (1000,))])
def test_undescribed_or_inconsistent_tensors_are_served_as_bytes(dtype, shape):
    m = ModelInfo(0, "m", 48, 10, 1, 1, [1], [1], 1, list(shape), dtype, [5], "float16")
    v = Registry([m]).get("m")
    assert (v.input.datatype, v.input.shape) == ("UINT8", (48,))
    assert (v.output.datatype, v.output.shape) == ("FP16", (5,))


def test_status_mapping():
    rejected = (Status.INITIALIZING, Status.CONTROLLER_SKIPPED, Status.COULD_NOT_START_IN_TIME,
                Status.OVERLOADED, Status.WORKER_LOST, Status.STALE_EPOCH, CONNECTION_LOST, SEND_FAILED,
                WRONG_PEER)
    for code in Status:
        expected = (200 if code == Status.SUCCESS else 400 if code == Status.INVALID_REQUEST
                    else 504 if code == Status.TIMEOUT else 503 if code in rejected else 500)
        assert http_status(code) == expected, code
    assert http_status(NO_ANSWER) == 504 and http_status(CONNECTION_LOST) == 503
    e = FrontendError.from_status(Status.COULD_NOT_START_IN_TIME, "too late")
    assert e.grpc_code == grpc.StatusCode.UNAVAILABLE
    assert e.body() == {"error": "too late", "clockwork_status": 8,
                        "clockwork_status_name": "could not start in time"}
    assert e.details() == "too late [clockwork status 8: could not start in time]"
    assert FrontendError.from_status(NO_ANSWER, "").grpc_code == grpc.StatusCode.DEADLINE_EXCEEDED


def test_link_loads_missing_models_once_and_keeps_an_unchanged_registry(echo, monkeypatch):
    """ControllerLink on asyncio against the echo controller (in-process, records requests)."""
    import asyncio

    from clockwork.client.api import Client
    from clockwork.frontend import link as link_mod
    from clockwork.frontend.link import ControllerLink
    monkeypatch.setattr(link_mod, "MISS_REFRESH_S", 0.0)     # a miss may list again at once

    async def main():
        link = ControllerLink(echo.address, refresh_s=3600, load=[("zoo/mlp", 2)], log=lambda *_: None)
        await link.start()
        try:
            assert await link.refresh()
            assert link.ready and link.registry.versions("mlp") == ["1", "2"]
            assert echo.received["load"] == 1
            first = link.registry
            assert await link.refresh()
            assert link.registry is first and echo.received["load"] == 1    # nothing new: kept
            other = Client(echo.address, log=lambda *_: None)                # another client loads
            try:
                other.load_model("resnet50")
            finally:
                other.close()
            assert await link.lookup("resnet50") is not None                # a miss lists again
            assert link.registry is not first and echo.received["load"] == 2
        finally:
            await link.close()
    asyncio.run(main())


def test_metrics_exposition_parses_and_counts():
    """Read back with prometheus-client's own parser: counters, cumulative buckets (a value on
    a bound counts in that bound's bucket), gauges."""
    from prometheus_client.parser import text_string_to_metric_families

    from clockwork.frontend.metrics import BUCKETS_S, FrontendMetrics
    m = FrontendMetrics(lambda: 3)
    observed = [BUCKETS_S[0] / 2, BUCKETS_S[1], BUCKETS_S[1] * 1.5, 10.0]
    for s in observed:
        m.success("http", s)
    m.failure("grpc", 503, 8)
    m.failure("http", 413, None)
    m.set_ready(True)
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(m.exposition().decode()) for s in f.samples}
    assert samples[("clockwork_frontend_requests_total", (("code", "200"), ("protocol", "http")))] == 4
    assert samples[("clockwork_frontend_requests_total", (("code", "413"), ("protocol", "http")))] == 1
    assert samples[("clockwork_frontend_failures_total", (("clockwork_status", "8"), ("protocol", "grpc")))] == 1
    for bound in BUCKETS_S:
        key = ("clockwork_frontend_request_duration_seconds_bucket", (("le", repr(bound)), ("protocol", "http")))
        assert samples[key] == sum(s <= bound for s in observed), bound
    assert samples[("clockwork_frontend_request_duration_seconds_count", (("protocol", "http"),))] == 4
    assert samples[("clockwork_frontend_request_duration_seconds_sum", (("protocol", "http"),))] == \
        pytest.approx(sum(observed))
    assert samples[("clockwork_frontend_inflight_requests", ())] == 3
    assert samples[("clockwork_frontend_controller_ready", ())] == 1
