"""The Open Inference Protocol over gRPC: inference.GRPCInferenceService on grpc.aio.

The message classes and the service registration are the generated code tritonclient ships
(tritonclient.grpc.service_pb2 / service_pb2_grpc), so the wire format is Triton's own.
Implemented: ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata, ModelConfig,
ModelInfer and ModelStreamInfer (requests of one stream are answered in order); the other
methods answer UNIMPLEMENTED. Input tensors come in raw_input_contents (no copy: the bytes go
to the controller as they are) or in the typed `contents` fields; outputs always go out in
raw_output_contents. Errors are gRPC codes (errors.py) whose details end with clockwork's status,
which also travels as trailing metadata `clockwork-status`.
"""
from __future__ import annotations

import time

import grpc
import numpy as np
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pbg

from .. import __version__
from .errors import FrontendError, bad_request
from .http_server import EXTENSIONS
from .inference import MAX_SLO_MS, Inference, number_param
from .registry import NUMPY_DTYPES, ModelVersion

# protocol datatype -> the typed contents field that may carry it
CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
            "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
            "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
            "FP32": "fp32_contents", "FP64": "fp64_contents"}


def _params(params) -> dict:
    """A protobuf map<string, InferParameter> as plain values."""
    out = {}
    for key, p in params.items():
        which = p.WhichOneof("parameter_choice")
        if which is not None:
            out[key] = getattr(p, which)
    return out


def _tensor_metadata(t) -> pb.ModelMetadataResponse.TensorMetadata:
    return pb.ModelMetadataResponse.TensorMetadata(name=t.name, datatype=t.datatype, shape=[-1, *t.shape])


class GrpcFrontend(pbg.GRPCInferenceServiceServicer):
    def __init__(self, inference: Inference, metrics, *, credentials=None):
        self.inference = inference
        self.link = inference.link
        self.metrics = metrics
        self.credentials = credentials
        self.server: grpc.aio.Server | None = None
        self.port = 0

    async def start(self, host: str, port: int) -> int:
        limits = self.inference.limits
        self.server = grpc.aio.server(       # no maximum_concurrent_rpcs: it would refuse health checks too
            options=[("grpc.max_receive_message_length", limits.max_body),
                     ("grpc.max_send_message_length", -1),
                     ("grpc.so_reuseport", 0)])
        pbg.add_GRPCInferenceServiceServicer_to_server(self, self.server)
        address = f"{host}:{port}"
        if self.credentials is not None:
            self.port = self.server.add_secure_port(address, self.credentials)
        else:
            self.port = self.server.add_insecure_port(address)
        await self.server.start()
        return self.port

    async def close(self) -> None:
        if self.server is not None:
            await self.server.stop(0.5)

    # ------------------------------------------------------------------ health and metadata

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.link.ready)

    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name="clockwork", version=__version__, extensions=EXTENSIONS)

    async def ModelReady(self, request, context):
        try:
            await self.inference.model(request.name, request.version)
        except FrontendError:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    async def _model(self, name: str, version: str, context) -> ModelVersion:
        try:
            return await self.inference.model(name, version)
        except FrontendError as e:
            await self._abort(context, e)

    async def ModelMetadata(self, request, context):
        m = await self._model(request.name, request.version, context)
        return pb.ModelMetadataResponse(name=m.name, versions=self.link.registry.versions(m.name),
                                        platform="clockwork", inputs=[_tensor_metadata(m.input)],
                                        outputs=[_tensor_metadata(m.output)])

    async def ModelConfig(self, request, context):
        m = await self._model(request.name, request.version, context)

        def tensor(cls, t):
            return cls(name=t.name, data_type=mc.DataType.Value(f"TYPE_{t.datatype}"), dims=list(t.shape))
        config = mc.ModelConfig(name=m.name, platform="clockwork", backend="clockwork",
                                max_batch_size=m.max_batch, input=[tensor(mc.ModelInput, m.input)],
                                output=[tensor(mc.ModelOutput, m.output)])
        return pb.ModelConfigResponse(config=config)

    # ------------------------------------------------------------------ inference

    async def _abort(self, context, e: FrontendError):
        await context.abort(e.grpc_code, e.details(),
                            trailing_metadata=(("clockwork-status", str(e.status if e.status is not None else "")),))

    async def ModelInfer(self, request, context):
        t0 = time.perf_counter()
        try:
            response = await self._infer(request, context.time_remaining())
        except FrontendError as e:
            self.metrics.failure("grpc", e.http, e.status)
            await self._abort(context, e)
        self.metrics.success("grpc", time.perf_counter() - t0)
        return response

    async def ModelStreamInfer(self, request_iterator, context):
        async for request in request_iterator:
            t0 = time.perf_counter()
            try:
                response = await self._infer(request, None)
            except FrontendError as e:
                self.metrics.failure("grpc", e.http, e.status)
                yield pb.ModelStreamInferResponse(error_message=e.details())
                continue
            self.metrics.success("grpc", time.perf_counter() - t0)
            yield pb.ModelStreamInferResponse(infer_response=response)

    async def _infer(self, request, deadline_s: float | None) -> pb.ModelInferResponse:
        """deadline_s: the time left of the call's gRPC deadline (the client's timeout)."""
        inference = self.inference
        m = await inference.model(request.model_name, request.model_version)
        if len(request.inputs) != 1:
            raise bad_request(f"model {m.name!r} takes exactly one input ({m.input.name!r}), "
                              f"got {len(request.inputs)}")
        t = request.inputs[0]
        batch = inference.check_input(m, t.name, t.datatype, t.shape)
        raw = request.raw_input_contents
        if len(raw) > 1:
            raise bad_request(f"{len(raw)} raw_input_contents for one input")
        if raw:
            data = raw[0]
        else:
            field = CONTENTS.get(t.datatype)
            values = getattr(t.contents, field) if field else ()
            count = batch * m.input.item_elements
            if len(values) != count:
                raise bad_request(f"input {t.name!r}: {len(values)} values in contents"
                                  f"{'.' + field if field else ''}; shape {list(t.shape)} takes {count} "
                                  f"(or send raw_input_contents)")
            data = np.asarray(values, dtype=NUMPY_DTYPES[t.datatype]).data.cast("B")
        for o in request.outputs:
            if o.name != m.output.name:
                raise bad_request(f"model {m.name!r} has one output, {m.output.name!r}; asked for {o.name!r}")
        params = _params(request.parameters)
        slo_ms = number_param(params, "slo_ms", 0, MAX_SLO_MS)
        timeout_us = number_param(params, "timeout", 0, 3.6e9)
        timeout_s = timeout_us / 1e6 if timeout_us else None
        if deadline_s is not None and (timeout_s is None or deadline_s < timeout_s):
            timeout_s = deadline_s
        answer, out = await inference.run(m, batch, data, slo_ms, timeout_s)
        o = m.output
        response = pb.ModelInferResponse(model_name=m.name, model_version=m.version, id=request.id)
        tensor = response.outputs.add()
        tensor.name, tensor.datatype = o.name, o.datatype
        tensor.shape.extend((batch, *o.shape))
        response.parameters["clockwork_model_id"].int64_param = m.model_id
        response.parameters["clockwork_latency_ns"].int64_param = answer.latency_ns
        response.raw_output_contents.append(bytes(out))
        return response
