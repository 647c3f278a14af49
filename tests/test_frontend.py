"""`cw frontend` (KServe v2 / Open Inference Protocol) with the real tritonclient, http and grpc,
against real processes: front end + controller + emulated worker on loopback."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import grpc
import numpy as np
import pytest
from click.testing import CliRunner
import tritonclient.grpc as tg
import tritonclient.http as th
from tritonclient.grpc import service_pb2 as pb
from tritonclient.utils import InferenceServerException

from clockwork.client.api import NO_ANSWER, Client
from clockwork.client.echo import EchoController
from clockwork.local import LocalCluster
from clockwork.model.zoo import load_profile
from clockwork.status import Status
from clockwork.transport.security import keys_command
from frontend_procs import Frontend, InControllerFrontend

pytestmark = pytest.mark.timeout(180)

PROFILE = load_profile("h200")["models"]
MLP_IN = tuple(PROFILE["mlp"]["input"]["shape"])
MLP_OUT = tuple(PROFILE["mlp"]["output"]["shape"])
MAX_BODY_MB = 1


FRONTEND_ARGS = ("--model", "mlp", "--model", "resnet50:2", "--max-body-mb", str(MAX_BODY_MB))


@pytest.fixture(scope="module", params=["process", "in-process"])
def cluster(request, tmp_path_factory):
    """A generous default SLO: these tests assert answers, not the scheduler's judgement, and
    on a loaded machine 100 ms can pass before a cold model runs (the SLO tests set theirs).
    Every test runs against both front ends: `cw frontend` in its own process, and the one on a
    thread of the controller (`cw controller --frontend-in-process`)."""
    config = tmp_path_factory.mktemp("frontend") / "clockwork.toml"
    config.write_text("[controller]\ndefault_slo_ms = 10000.0\n")
    args = LocalCluster.in_process_frontend_args(0, 0, FRONTEND_ARGS) if request.param == "in-process" else ()
    with LocalCluster(gpus=1, config_file=config, controller_args=args) as c:
        c.frontend_mode = request.param
        yield c


@pytest.fixture(scope="module")
def fe(cluster):
    if cluster.frontend_mode == "in-process":
        f = InControllerFrontend(cluster)
        f.wait_ready()
        yield f
        return
    with Frontend(cluster.address, cluster.env(), *FRONTEND_ARGS) as f:
        f.wait_ready()
        yield f


def separate_process_only(fe, why: str = "it SIGSTOPs the controller's process, which holds this front end too"):
    if fe.mode == "in-process":
        pytest.skip(f"separate front-end process only: {why}")


@pytest.fixture(scope="module")
def native(cluster, fe):
    """clockwork's own client on the same controller: the reference path."""
    c = Client(cluster.address, log=lambda *_: None)
    yield c
    c.close()


@pytest.fixture
def http(fe):
    c = th.InferenceServerClient(fe.http)
    yield c
    c.close()


@pytest.fixture
def grpcc(fe):
    c = tg.InferenceServerClient(fe.grpc)
    yield c
    c.close()


def mlp_input(batch: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((batch, *MLP_IN), dtype=np.float32)


def http_input(x: np.ndarray, binary: bool = True, name: str = "input", datatype: str = "FP32"):
    i = th.InferInput(name, list(x.shape), datatype)
    i.set_data_from_numpy(x, binary_data=binary)
    return i


def grpc_input(x: np.ndarray, name: str = "input", datatype: str = "FP32"):
    i = tg.InferInput(name, list(x.shape), datatype)
    i.set_data_from_numpy(x)
    return i


def model_id(native: Client, name: str, version: int = 1) -> int:
    ids = sorted(m.model_id for m in native.ls() if m.source.rstrip("/").endswith("/" + name))
    return ids[version - 1]


def http_error(call) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as e:
        call()
    return e.value


def raw_http(address: str, request: bytes) -> tuple[int, dict, bytes]:
    """One HTTP/1.1 exchange on a fresh connection; returns (status, headers, body)."""
    host, port = address.split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        headers = {k.lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:])}
        n = int(headers.get("content-length", 0))
        while len(body) < n:
            chunk = s.recv(65536)
            if not chunk:
                break
            body += chunk
        return int(lines[0].split()[1]), headers, body


def post(address: str, path: str, body: bytes, extra: str = "") -> tuple[int, dict, bytes]:
    return raw_http(address, (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                              f"Content-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n").encode() + body)


@contextmanager
def stopped(proc):
    """The process SIGSTOPped (it accepts connections but answers nothing) until the block ends."""
    proc.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        proc.send_signal(signal.SIGCONT)


# ---------------------------------------------------------------- health and metadata

def test_health_and_server_metadata(fe, http, grpcc):
    assert http.is_server_live() and http.is_server_ready()
    assert grpcc.is_server_live() and grpcc.is_server_ready()
    for meta in (http.get_server_metadata(), grpcc.get_server_metadata(as_json=True)):
        assert meta["name"] == "clockwork"
        assert "binary_tensor_data" in meta["extensions"]


def test_model_metadata_names_datatypes_and_batch_dim(fe, http, grpcc):
    for meta in (http.get_model_metadata("mlp"), grpcc.get_model_metadata("mlp", as_json=True)):
        assert meta["name"] == "mlp"
        (i,), (o,) = meta["inputs"], meta["outputs"]
        assert (i["name"], i["datatype"], [int(d) for d in i["shape"]]) == ("input", "FP32", [-1, *MLP_IN])
        assert (o["name"], o["datatype"], [int(d) for d in o["shape"]]) == ("output", "FP32", [-1, *MLP_OUT])
    assert http.get_model_metadata("resnet50")["versions"] == ["1", "2"]
    assert http.get_model_metadata("resnet50", "2")["inputs"][0]["shape"] == \
        [-1, *PROFILE["resnet50"]["input"]["shape"]]
    config = http.get_model_config("mlp")
    assert config["max_batch_size"] == max(int(b) for b in PROFILE["mlp"]["exec_ns"])
    assert grpcc.get_model_config("mlp").config.max_batch_size == config["max_batch_size"]


def test_model_ready(fe, http, grpcc):
    assert http.is_model_ready("mlp") and grpcc.is_model_ready("mlp")
    assert http.is_model_ready("resnet50", "2") and grpcc.is_model_ready("resnet50", "2")
    assert not http.is_model_ready("resnet50", "3") and not grpcc.is_model_ready("resnet50", "3")
    assert not http.is_model_ready("nosuchmodel") and not grpcc.is_model_ready("nosuchmodel")


# ---------------------------------------------------------------- inference

def test_infer_outputs_match_the_native_client_byte_for_byte(fe, http, grpcc, native):
    x = mlp_input(3)
    reference = native.infer(model_id(native, "mlp"), inputs=x.tobytes(), batch_size=3).output
    assert len(reference) == 3 * 4 * int(np.prod(MLP_OUT))
    out_binary = http.infer("mlp", [http_input(x)]).as_numpy("output")
    as_json = http.infer("mlp", [http_input(x, binary=False)],
                         outputs=[th.InferRequestedOutput("output", binary_data=False)])
    assert "data" in as_json.get_response()["outputs"][0]         # really JSON, not binary
    out_json = as_json.as_numpy("output")
    out_grpc = grpcc.infer("mlp", [grpc_input(x)]).as_numpy("output")
    for out in (out_binary, out_json, out_grpc):
        assert out.shape == (3, *MLP_OUT) and out.dtype == np.float32
        assert out.tobytes() == reference


def test_versions_address_copies(fe, http, native):
    x = np.zeros((1, *PROFILE["resnet50"]["input"]["shape"]), np.float32)
    for version in ("1", "2"):
        r = http.infer("resnet50", [http_input(x)], model_version=version, parameters={"slo_ms": 1000}).get_response()
        assert r["model_version"] == version and r["parameters"]["clockwork_within_slo"] is True
        assert r["parameters"]["clockwork_model_id"] == model_id(native, "resnet50", int(version))
    assert http.infer("resnet50", [http_input(x)]).get_response()["parameters"]["clockwork_model_id"] == \
        model_id(native, "resnet50", 1)


def test_stream_infer_answers_each_request(fe, native):
    x = mlp_input(1)
    reference = native.infer(model_id(native, "mlp"), inputs=x.tobytes()).output
    answers = []
    c = tg.InferenceServerClient(fe.grpc)
    try:
        c.start_stream(callback=lambda result, error: answers.append((result, error)))
        c.async_stream_infer("mlp", [grpc_input(x)], request_id="a")
        c.async_stream_infer("nosuchmodel", [grpc_input(x)], request_id="b")
        c.async_stream_infer("mlp", [grpc_input(x)], request_id="c")
        c.stop_stream()                    # waits for the answers
    finally:
        c.close()
    results = {r.get_response().id: r for r, e in answers if e is None}
    errors = [e for r, e in answers if e is not None]
    assert len(answers) == 3 and sorted(results) == ["a", "c"]       # answered as they finish
    assert all(r.as_numpy("output").tobytes() == reference for r in results.values())
    assert len(errors) == 1 and "nosuchmodel" in str(errors[0])


def test_stream_requests_are_served_concurrently(cluster, fe):
    separate_process_only(fe)
    x = mlp_input(1)
    answers = []
    c = tg.InferenceServerClient(fe.grpc)
    try:
        c.start_stream(callback=lambda result, error: answers.append((result, error)))
        with stopped(cluster.controller):       # both wait for the controller at once
            c.async_stream_infer("mlp", [grpc_input(x)], request_id="a")
            c.async_stream_infer("mlp", [grpc_input(x)], request_id="b")
            wait_for_metric(fe, "clockwork_frontend_inflight_requests", 2)
        c.stop_stream()
    finally:
        c.close()
    assert sorted(r.get_response().id for r, e in answers if e is None) == ["a", "b"]


class RecordingEcho(EchoController):
    """The echo controller, also keeping the input bytes and epoch of every Infer, and
    stamping its answers with an epoch as a controller does."""
    EPOCH = 0x5EED

    def __post_init__(self):
        super().__post_init__()
        self.inputs: list[bytes] = []
        self.epochs: list[int] = []

    def _answer(self, msg, data):
        response, frames = super()._answer(msg, data)
        if response is not None:
            response.epoch = self.EPOCH
        return response, frames

    def _infer(self, msg, data):
        self.inputs.append(b"".join(bytes(f.buffer) for f in data))
        self.epochs.append(msg.epoch)
        return super()._infer(msg, data)


def test_inputs_and_slo_reach_the_controller_intact():
    """Against the echo controller, which records what it receives (and whose models carry
    no tensor descriptions: served as UINT8 bytes)."""
    with RecordingEcho(record=True) as echo:
        loader = Client(echo.address, log=lambda *_: None)
        try:
            first, _, info = loader.load_model("mlp")
        finally:
            loader.close()
        with Frontend(echo.address, dict(os.environ)) as f:
            f.wait_ready()
            h = th.InferenceServerClient(f.http)
            g = tg.InferenceServerClient(f.grpc)
            try:
                meta = h.get_model_metadata("mlp")
                assert meta["inputs"][0]["datatype"] == "UINT8"
                assert meta["inputs"][0]["shape"] == [-1, info.input_size]
                xs = [np.random.default_rng(i).integers(0, 256, (2, info.input_size), dtype=np.uint8)
                      for i in range(4)]
                h.infer("mlp", [http_input(xs[0], datatype="UINT8")], parameters={"slo_ms": 12.5})
                g.infer("mlp", [grpc_input(xs[1], datatype="UINT8")], parameters={"slo_ms": 7})
                h.infer("mlp", [http_input(xs[2], binary=False, datatype="UINT8")])
                typed = pb.ModelInferRequest(model_name="mlp")        # gRPC typed contents, not raw
                t = typed.inputs.add(name="input", datatype="UINT8", shape=list(xs[3].shape))
                t.contents.uint_contents.extend(xs[3].ravel().tolist())
                with grpc.insecure_channel(f.grpc) as ch:
                    tg.service_pb2_grpc.GRPCInferenceServiceStub(ch).ModelInfer(typed, timeout=30)
            finally:
                h.close()
                g.close()
    assert echo.inputs == [x.tobytes() for x in xs]
    assert echo.epochs == [RecordingEcho.EPOCH] * 4       # ids named with the lifetime they are from
    assert [(m, slo_ns) for m, _, slo_ns, _ in echo.infers] == \
        [(first, 12_500_000), (first, 7_000_000), (first, 0), (first, 0)]


# ---------------------------------------------------------------- errors

def test_invalid_inputs_are_400_and_invalid_argument(fe, http, grpcc):
    x = mlp_input(2)
    cases = [  # (input name, array, datatype, parameters, what the error names)
        ("input", x.astype(np.float64), "FP64", None, "FP32"),
        ("input", x[:, :-1], "FP32", None, "shape"),
        ("input", mlp_input(17), "FP32", None, "batch size 17"),
        ("image", x, "FP32", None, "'input'"),
        ("input", x, "FP32", {"slo_ms": -1}, "slo_ms"),
        ("input", x, "FP32", {"slo_ms": "fast"}, "slo_ms"),
    ]
    for name, arr, datatype, params, says in cases:
        e = http_error(lambda: http.infer("mlp", [http_input(arr, name=name, datatype=datatype)],
                                          parameters=params))
        assert e.status() == "400" and says in e.message(), (says, e)
        e = http_error(lambda: grpcc.infer("mlp", [grpc_input(arr, name=name, datatype=datatype)],
                                           parameters=params))
        assert e.status() == "StatusCode.INVALID_ARGUMENT" and says in e.message(), (says, e)
        assert f"clockwork status {int(Status.INVALID_REQUEST)}" in e.message()
    status, _, body = post(fe.http, "/v2/models/mlp/infer", json.dumps(
        {"inputs": [{"name": "input", "shape": [2, *MLP_IN], "datatype": "FP32", "data": [1.0] * 5}]}).encode())
    err = json.loads(body)
    assert status == 400 and "elements" in err["error"]
    assert (err["clockwork_status"], err["clockwork_status_name"]) == (6, "invalid request")


def test_unknown_model_or_version_is_404_and_not_found(fe, http, grpcc):
    x = mlp_input(1)
    for name, version in (("nosuchmodel", ""), ("resnet50", "3")):
        e = http_error(lambda: http.infer(name, [http_input(x)], model_version=version))
        assert e.status() == "404" and name in e.message()
        e = http_error(lambda: grpcc.infer(name, [grpc_input(x)], model_version=version))
        assert e.status() == "StatusCode.NOT_FOUND" and name in e.message()
    assert http_error(lambda: http.get_model_metadata("nosuchmodel")).status() == "404"


def test_malformed_json_and_protobuf_are_answered_and_harmless(fe, http, grpcc):
    for body, says in ((b"{not json", "malformed JSON"), (b'{"inputs": 5}', "malformed inference request"),
                       (b"", "malformed JSON")):
        status, _, reply = post(fe.http, "/v2/models/mlp/infer", body)
        assert status == 400 and says in json.loads(reply)["error"], reply
    header = b'{"inputs":[{"name":"input","shape":[1,784],"datatype":"FP32","parameters":{"binary_data_size":3136}}]}'
    for length in (len(header) + 10_000, 0, "x"):       # header length outside the body
        status, _, reply = post(fe.http, "/v2/models/mlp/infer", header + bytes(3136),
                                f"Inference-Header-Content-Length: {length}\r\n")
        assert status == 400 and "Inference-Header-Content-Length" in json.loads(reply)["error"]
    status, _, reply = post(fe.http, "/v2/models/mlp/infer", header + bytes(3000),   # too few bytes
                            f"Inference-Header-Content-Length: {len(header)}\r\n")
    assert status == 400 and "binary_data_size" in json.loads(reply)["error"]
    with grpc.insecure_channel(fe.grpc) as ch:
        call = ch.unary_unary("/inference.GRPCInferenceService/ModelInfer")   # bytes in, bytes out
        with pytest.raises(grpc.RpcError) as e:
            call(b"\xff\xff\xff\xff garbage", timeout=30)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "malformed" in e.value.details()
    x = mlp_input(1)
    assert http.infer("mlp", [http_input(x)]).as_numpy("output").shape == (1, *MLP_OUT)
    assert grpcc.infer("mlp", [grpc_input(x)]).as_numpy("output").shape == (1, *MLP_OUT)


def test_oversize_bodies_are_refused(fe, http, grpcc):
    big = np.zeros((2, *PROFILE["resnet50"]["input"]["shape"]), np.float32)
    assert big.nbytes > MAX_BODY_MB << 20
    e = http_error(lambda: http.infer("resnet50", [http_input(big)]))
    assert e.status() == "413"
    e = http_error(lambda: grpcc.infer("resnet50", [grpc_input(big)]))
    assert e.status() == "StatusCode.RESOURCE_EXHAUSTED"
    assert http.infer("resnet50", [http_input(big[:1])]).as_numpy("output").shape[0] == 1


def test_no_answer_in_time_is_504_and_deadline_exceeded(cluster, fe, http, grpcc):
    separate_process_only(fe)
    x = mlp_input(1)
    with stopped(cluster.controller):
        e = http_error(lambda: http.infer("mlp", [http_input(x)], timeout=300_000))
        assert e.status() == "504"
        assert json.loads(post(fe.http, "/v2/models/mlp/infer", json.dumps(
            {"inputs": [{"name": "input", "shape": [1, *MLP_IN], "datatype": "FP32", "data": [0.0] * 784}],
             "parameters": {"timeout": 300_000}}).encode())[2])["clockwork_status"] == NO_ANSWER
        e = http_error(lambda: grpcc.infer("mlp", [grpc_input(x)], timeout=300_000))
        assert e.status() == "StatusCode.DEADLINE_EXCEEDED"
    assert http.infer("mlp", [http_input(x)]).as_numpy("output").shape == (1, *MLP_OUT)


def test_controller_rejection_is_503_with_clockwork_status():
    """A controller that holds no inputs at all rejects every request OVERLOADED at once (and
    lists its models one per LS page: the front end reads every page)."""
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write("[controller]\nmax_queued_input_bytes = 1\nls_page_size = 1\n")
    try:
        with LocalCluster(gpus=1, config_file=Path(f.name)) as c, \
                Frontend(c.address, c.env(), "--model", "mlp", "--model", "resnet50:2") as front:
            front.wait_ready()
            x = mlp_input(1)
            h = th.InferenceServerClient(front.http)
            g = tg.InferenceServerClient(front.grpc)
            try:
                assert h.get_model_metadata("resnet50")["versions"] == ["1", "2"] and h.is_model_ready("mlp")
                e = http_error(lambda: h.infer("mlp", [http_input(x)]))
                assert e.status() == "503" and "limit" in e.message()
                status, _, body = post(front.http, "/v2/models/mlp/infer", json.dumps(
                    {"inputs": [{"name": "input", "shape": [1, *MLP_IN], "datatype": "FP32",
                                 "data": [0.0] * 784}]}).encode())
                err = json.loads(body)
                assert status == 503 and (err["clockwork_status"], err["clockwork_status_name"]) == \
                    (int(Status.OVERLOADED), "overloaded")
                e = http_error(lambda: g.infer("mlp", [grpc_input(x)]))
                assert e.status() == "StatusCode.UNAVAILABLE"
                assert f"clockwork status {int(Status.OVERLOADED)}: overloaded" in e.message()
            finally:
                h.close()
                g.close()
    finally:
        os.unlink(f.name)


# ---------------------------------------------------------------- HTTP/1.1 as clients speak it

MLP_HEADER = json.dumps({"inputs": [{"name": "input", "shape": [1, *MLP_IN], "datatype": "FP32",
                                     "parameters": {"binary_data_size": 4 * int(np.prod(MLP_IN))}}]}).encode()


def infer_request(extra: str = "", body: bytes | None = None) -> bytes:
    body = MLP_HEADER + mlp_input(1).tobytes() if body is None else body
    return (f"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
            f"Inference-Header-Content-Length: {len(MLP_HEADER)}\r\n{extra}\r\n").encode() + body


def read_response(s: socket.socket, buf: bytearray) -> tuple[int, bytes]:
    """One response from a keep-alive connection (bytes after it stay in buf)."""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        assert chunk, "connection closed before a response"
        buf += chunk
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    n = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1)) if b"ength" in head else 0
    while len(rest) < n:
        chunk = s.recv(65536)
        assert chunk, "connection closed mid-response"
        rest += chunk
    buf[:] = rest[n:]
    return int(head.split()[1]), head + b"\r\n\r\n" + rest[:n]


def test_keep_alive_and_pipelined_requests_are_answered_in_order(fe):
    """Several requests on one connection, the second and third sent before the first is
    answered: the slow one (through the controller) is still answered first."""
    host, port = fe.http.split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        buf = bytearray()
        for _ in range(3):                                 # plain keep-alive
            s.sendall(infer_request())
            assert read_response(s, buf)[0] == 200
        s.sendall(infer_request() + b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n" +
                  b"GET /v2/models/nosuchmodel HTTP/1.1\r\nHost: x\r\n\r\n")
        statuses = [read_response(s, buf) for _ in range(3)]
        assert [st for st, _ in statuses] == [200, 200, 404]
        assert b'"model_name":"mlp"' in statuses[0][1]            # the infer's answer came first


def test_expect_100_continue_chunked_bodies_and_bad_routes(fe):
    host, port = fe.http.split(":")
    body = MLP_HEADER + mlp_input(1).tobytes()
    with socket.create_connection((host, int(port)), timeout=30) as s:
        buf = bytearray()
        request = infer_request("Expect: 100-continue\r\n")
        s.sendall(request[:-len(body)])                    # headers only, as curl does
        assert read_response(s, buf)[1].startswith(b"HTTP/1.1 100 Continue")
        s.sendall(body)
        assert read_response(s, buf)[0] == 200
        chunked = (f"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                   f"Inference-Header-Content-Length: {len(MLP_HEADER)}\r\n\r\n").encode()
        for part in (body[:1000], body[1000:]):
            chunked += b"%x\r\n%s\r\n" % (len(part), part)
        s.sendall(chunked + b"0\r\n\r\n")
        assert read_response(s, buf)[0] == 200
        for request, status in ((b"GET /v2/models/mlp/infer", 405), (b"POST /v2/health/live", 405),
                                (b"GET /v2/nothing", 404), (b"GET /v2/models/mlp/versions//ready", 404)):
            s.sendall(request + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
            assert read_response(s, buf)[0] == status, request
    status, headers, reply = raw_http(fe.http, b"NOT HTTP AT ALL\r\n\r\n")
    assert status == 400 and "malformed HTTP" in json.loads(reply)["error"]


def test_endless_request_head_is_refused_not_buffered(fe, http):
    """A header that never ends (httptools has no limit of its own) is answered 431 and the
    connection closed once the head passes MAX_HEAD, instead of growing without bound."""
    from clockwork.frontend.http_server import MAX_HEAD
    host, port = fe.http.split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Long: ")
        sent, piece = 0, b"a" * 65536
        try:
            while sent <= MAX_HEAD + len(piece):
                s.sendall(piece)
                sent += len(piece)
        except (BrokenPipeError, ConnectionResetError):
            pass                                   # closed on us while sending: also fine
        buf = bytearray()
        assert read_response(s, buf)[0] == 431
    assert http.is_server_live()


# ---------------------------------------------------------------- misbehaving clients, limits

def test_client_disconnecting_mid_request_disturbs_nobody(cluster, fe, http):
    header = b'{"inputs":[{"name":"input","shape":[1,784],"datatype":"FP32","parameters":{"binary_data_size":3136}}]}'
    request = (f"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {len(header) + 3136}\r\n"
               f"Inference-Header-Content-Length: {len(header)}\r\n\r\n").encode() + header
    host, port = fe.http.split(":")
    x = mlp_input(1)
    with socket.create_connection((host, int(port))) as s:     # slow: half the body, then waits
        s.sendall(request + bytes(1000))
        assert http.infer("mlp", [http_input(x)]).as_numpy("output").shape == (1, *MLP_OUT)
    # ... and is gone half-way through the body
    separate_process_only(fe)
    with stopped(cluster.controller):                          # gone while the controller works
        with socket.create_connection((host, int(port))) as s:
            s.sendall(request + bytes(3136))
            wait_for_metric(fe, "clockwork_frontend_inflight_requests", 1)
    assert http.infer("mlp", [http_input(x)]).as_numpy("output").shape == (1, *MLP_OUT)
    assert fe.proc.poll() is None
    assert not any("Traceback" in line or "internal error" in line for line in fe.lines), "".join(fe.lines)


def metric(address: str, name: str) -> float:
    status, _, body = raw_http(address, b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status == 200
    values = [float(l.rsplit(" ", 1)[1]) for l in body.decode().splitlines() if l.startswith(name)]
    return sum(values)


def wait_for_metric(fe, name: str, value: float, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while metric(fe.http, name) != value:
        assert time.monotonic() < deadline, f"{name} never reached {value}"
        time.sleep(0.02)


def test_batch_connection_and_inflight_limits(cluster, fe):
    separate_process_only(fe, "it starts a front-end process of its own")
    with Frontend(cluster.address, cluster.env(), "--max-connections", "3", "--max-inflight", "1",
                  "--max-batch", "2") as f:
        f.wait_ready(grpc=True)                   # no HTTP connection of ours left over
        g = tg.InferenceServerClient(f.grpc)
        try:
            e = http_error(lambda: g.infer("mlp", [grpc_input(mlp_input(3))]))
            assert e.status() == "StatusCode.INVALID_ARGUMENT" and "(1..2)" in e.message()
            assert g.infer("mlp", [grpc_input(mlp_input(2))]).as_numpy("output").shape == (2, *MLP_OUT)
        finally:
            g.close()
        host, port = f.http.split(":")
        live = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n"
        held = [socket.create_connection((host, int(port))) for _ in range(3)]
        try:
            for s in held:                        # each one answered: all three are open
                s.sendall(live)
                assert s.recv(4096).startswith(b"HTTP/1.1 200")
            status, _, body = raw_http(f.http, live)
            assert status == 503 and b"limit of 3 connections" in body
        finally:
            for s in held:
                s.close()
        x = mlp_input(1)
        g = tg.InferenceServerClient(f.grpc)
        try:
            with stopped(cluster.controller):
                g.async_infer("mlp", [grpc_input(x)], callback=lambda result, error: None, client_timeout=60)
                wait_for_metric(f, "clockwork_frontend_inflight_requests", 1)
                e = http_error(lambda: g.infer("mlp", [grpc_input(x)]))
                assert e.status() == "StatusCode.UNAVAILABLE" and "in flight" in e.message()
        finally:
            g.close()


def test_metrics_count_requests_and_failures(fe, http):
    ok0 = metric(fe.http, 'clockwork_frontend_requests_total{code="200",protocol="http"}')
    nf0 = metric(fe.http, 'clockwork_frontend_requests_total{code="404",protocol="http"}')
    x = mlp_input(1)
    for _ in range(3):
        http.infer("mlp", [http_input(x)])
    http_error(lambda: http.infer("nosuchmodel", [http_input(x)]))
    assert metric(fe.http, 'clockwork_frontend_requests_total{code="200",protocol="http"}') == ok0 + 3
    assert metric(fe.http, 'clockwork_frontend_requests_total{code="404",protocol="http"}') == nf0 + 1
    assert metric(fe.http, 'clockwork_frontend_request_duration_seconds_count{protocol="http"}') >= 3
    assert metric(fe.http, "clockwork_frontend_controller_ready") == 1


# ---------------------------------------------------------------- controller restart (last: it kills it)

def test_frontend_survives_a_controller_restart(cluster, fe, http, grpcc):
    separate_process_only(fe, "the front end goes with its process (tests/test_frontend_in_process.py)")
    x = mlp_input(1)
    cluster.controller.terminate()
    cluster.controller.wait(30)
    fe.wait_ready(False)
    assert not grpcc.is_server_ready()
    e = http_error(lambda: http.infer("mlp", [http_input(x)]))
    assert e.status() == "503" and "not ready" in e.message()
    e = http_error(lambda: grpcc.infer("mlp", [grpc_input(x)]))
    assert e.status() == "StatusCode.UNAVAILABLE"
    cluster.start_controller()
    fe.wait_ready(True)                     # the front end loaded mlp again (--model)
    assert http.infer("mlp", [http_input(x)]).as_numpy("output").shape == (1, *MLP_OUT)
    assert grpcc.infer("mlp", [grpc_input(x)]).as_numpy("output").shape == (1, *MLP_OUT)


# ---------------------------------------------------------------- CURVE to the controller, TLS to clients

@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command for a test certificate")
def test_curve_to_the_controller_and_tls_to_clients(tmp_path):
    keys = tmp_path / "keys"
    assert CliRunner().invoke(keys_command, ["--dir", str(keys)]).exit_code == 0
    conf = tmp_path / "secure.toml"
    # the long default SLO: a cold first infer on a loaded machine must not be refused (504)
    conf.write_text(f'[security]\nenabled = true\nkey_dir = "{keys}"\n'
                    '[controller]\ndefault_slo_ms = 10000.0\n')
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key),
                    "-out", str(cert)], check=True, capture_output=True)
    with LocalCluster(gpus=1, config_file=conf) as c, \
            Frontend(c.address, c.env(), "--model", "mlp", "--tls-cert", str(cert), "--tls-key", str(key)) as f:
        h = th.InferenceServerClient(f.http, ssl=True, ssl_context_factory=lambda *a, **kw:
                                     ssl.create_default_context(cafile=str(cert)))
        g = tg.InferenceServerClient(f.grpc, ssl=True, root_certificates=str(cert))
        try:
            deadline = time.monotonic() + 60
            while not g.is_server_ready():
                assert time.monotonic() < deadline and f.proc.poll() is None, "".join(f.lines)
                time.sleep(0.05)
            x = mlp_input(1)
            assert h.infer("mlp", [http_input(x)]).as_numpy("output").shape == (1, *MLP_OUT)
            assert g.infer("mlp", [grpc_input(x)]).as_numpy("output").shape == (1, *MLP_OUT)
            # the cluster's links are secure: the worker said so before it served (its output is
            # read by a thread of LocalCluster, so the line may reach us a moment after the infers)
            while not any("CURVE" in line for line in c.output["worker"]):
                assert time.monotonic() < deadline, "".join(c.output["worker"])
                time.sleep(0.05)
        finally:
            h.close()
            g.close()
        host, port = f.http.split(":")
        with socket.create_connection((host, int(port)), timeout=30) as s:   # plain HTTP: not served
            s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            try:
                answer = s.recv(4096)
            except ConnectionResetError:
                answer = b""
        assert not answer.startswith(b"HTTP/")


@pytest.mark.parametrize("mode", ["process", "in-process", "sharded"])
def test_cw_run_serves_the_protocol_beside_its_workload(mode):
    """`cw run --http PORT [--frontend-in-process | --shards 2]`: the workload's models answer
    tritonclient while the workload runs (sharded: one front end over both shards)."""
    from clockwork.transport.sockets import free_port
    port = free_port()
    in_process = mode == "in-process"
    mode = {"process": ["--gpus", "1"], "in-process": ["--gpus", "1", "--frontend-in-process"],
            "sharded": ["--gpus", "2", "--shards", "2"]}[mode]
    run = subprocess.Popen([sys.executable, "-m", "clockwork.cli", "run", "--duration", "8",
                            "--http", str(port), *mode, "--workload", "simple", "--", "--model", "mlp"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        h = th.InferenceServerClient(f"127.0.0.1:{port}")
        try:
            deadline = time.monotonic() + 60
            while True:                         # ready, and the workload has loaded its model
                try:
                    if h.is_model_ready("mlp"):
                        break
                except (InferenceServerException, OSError):
                    pass                        # not listening yet
                assert time.monotonic() < deadline and run.poll() is None, "front end never served mlp"
                time.sleep(0.1)
            assert h.infer("mlp", [http_input(mlp_input(1))]).as_numpy("output").shape == (1, *MLP_OUT)
        finally:
            h.close()
        out, _ = run.communicate(timeout=120)
        said = re.search(r"\[(\w+)\] .*frontend: HTTP on 127\.0\.0\.1:", out)
        assert run.returncode == 0 and said, out
        assert said.group(1) == ("controller" if in_process else "frontend")      # which process serves
    finally:
        if run.poll() is None:
            run.terminate()
            run.wait(10)


def test_several_processes_share_the_ports(cluster, fe):
    """--processes 2: two front ends on the same ports (SO_REUSEPORT), both serving; SIGTERM to
    the parent stops them all."""
    separate_process_only(fe, "--processes")
    import threading
    from clockwork.transport.sockets import free_port
    http_port, grpc_port = free_port(), free_port()
    proc = subprocess.Popen([sys.executable, "-m", "clockwork.frontend.command", cluster.address,
                             "--host", "127.0.0.1", "--http", str(http_port), "--grpc", str(grpc_port),
                             "--processes", "2"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=cluster.env())
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    address = f"127.0.0.1:{http_port}"
    listening = (f"frontend: HTTP on {address}", f"frontend: gRPC on 127.0.0.1:{grpc_port}",
                 f"frontend: controller {cluster.address} ready")
    try:
        deadline = time.monotonic() + 60
        while not all("".join(lines).count(x) == 2 for x in listening):
            assert time.monotonic() < deadline and proc.poll() is None, "".join(lines)   # both ready
            time.sleep(0.05)
        header = json.dumps({"inputs": [{"name": "input", "shape": [1, *MLP_IN], "datatype": "FP32",
                                         "parameters": {"binary_data_size": 3136}}]}).encode()
        for _ in range(10):                       # a fresh connection each: whichever process
            status, _, _ = post(address, "/v2/models/mlp/infer", header + bytes(3136),
                                f"Inference-Header-Content-Length: {len(header)}\r\n")
            assert status == 200
        g = tg.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        try:
            assert g.infer("mlp", [grpc_input(mlp_input(1))]).as_numpy("output").shape == (1, *MLP_OUT)
        finally:
            g.close()
    finally:
        proc.terminate()
        proc.wait(60)
        reader.join(10)
    assert proc.returncode == 0, "".join(lines)
    with pytest.raises(OSError):                  # nobody listens any more
        socket.create_connection(("127.0.0.1", http_port), timeout=5).close()


def test_large_json_request_is_decoded_off_the_loop(fe, http):
    """A JSON tensor above the offload threshold (resnet50: 150528 values) is served as well."""
    from clockwork.frontend.http_server import JSON_OFFLOAD
    x = np.zeros((1, *PROFILE["resnet50"]["input"]["shape"]), np.float32)
    body_estimate = x.size * len("0.0,")
    assert JSON_OFFLOAD < body_estimate < MAX_BODY_MB << 20
    r = http.infer("resnet50", [http_input(x, binary=False)])
    assert r.as_numpy("output").shape == (1, *PROFILE["resnet50"]["output"]["shape"])


@pytest.mark.parametrize("which", ["--http", "--grpc"])
def test_port_in_use_and_bad_arguments_are_one_line_errors(which):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        other = "--grpc" if which == "--http" else "--http"
        for args in ([which, str(port), other, "0"], ["--model", "mlp:x"], ["--processes", "2", "--http", "0"],
                     [which, "70000"]):
            r = subprocess.run([sys.executable, "-m", "clockwork.cli", "frontend", "127.0.0.1:9",
                                "--host", "127.0.0.1", *args], capture_output=True, text=True, timeout=60)
            assert r.returncode != 0 and "Traceback" not in r.stderr + r.stdout, r.stderr
            assert r.stderr.strip().splitlines()[-1].startswith("Error:"), r.stderr


def test_cw_controller_starts_a_frontend_child():
    """`cw controller --http PORT`: the protocol served beside the controller, stopped with it."""
    from clockwork.transport.sockets import free_port
    port = free_port()
    with LocalCluster(gpus=1, controller_args=("--http", str(port))) as c:
        loader = Client(c.address, log=lambda *_: None)
        try:
            loader.load_model("mlp")
        finally:
            loader.close()
        h = th.InferenceServerClient(f"127.0.0.1:{port}")
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if h.is_model_ready("mlp"):
                        break
                except (InferenceServerException, OSError):
                    pass                        # not listening yet
                assert time.monotonic() < deadline, "".join(c.output.get("controller", []))
                time.sleep(0.1)
            assert h.infer("mlp", [http_input(mlp_input(1))]).as_numpy("output").shape == (1, *MLP_OUT)
        finally:
            h.close()
    with pytest.raises(OSError):                # stopped with the controller
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
