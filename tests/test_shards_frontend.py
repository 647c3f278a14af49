"""The KServe front end over a sharded controller: `cw frontend A,B` and `cw controller --shards K
--http PORT`, with the real tritonclient, against real processes on 127.0.0.1 free ports.

- one front end serves models loaded on both shards (by its own `--model`, round-robin, and
  by another client), each request answered by its model's shard, outputs byte for byte those
  of clockwork's own client; metadata lists the models of both shards;
- a shard that stops answering makes the front end not ready, naming that shard; ready again
  once it answers;
- `cw controller --shards 2 --http PORT` serves both shards through one `cw frontend` child,
  and one shard's death stops everything, the front end included;
"""
from __future__ import annotations

import os
import signal
import socket
import time

import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.http as th
from tritonclient.utils import InferenceServerException

from clockwork.client.shards import ShardedClient
from clockwork.limits import SHARD_ID_BITS
from clockwork.local import LocalCluster
from clockwork.model.zoo import load_profile
from clockwork.transport.sockets import free_port
from frontend_procs import Frontend
from proc_tree import children, still_running

pytestmark = pytest.mark.timeout(240)

PROFILE = load_profile("h200")["models"]
MLP_IN = tuple(PROFILE["mlp"]["input"]["shape"])
MLP_OUT = tuple(PROFILE["mlp"]["output"]["shape"])


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A generous default SLO: these tests check where answers come from, not the scheduler."""
    config = tmp_path_factory.mktemp("shards-frontend") / "clockwork.toml"
    config.write_text("[controller]\ndefault_slo_ms = 10000.0\n")
    with LocalCluster(gpus=1, workers=2, shards=2, config_file=config) as c:
        yield c


@pytest.fixture(scope="module")
def native(cluster):
    c = ShardedClient(cluster.address.split(","), log=lambda *_: None)
    yield c
    c.close()


@pytest.fixture(scope="module")
def fe(cluster, native):
    # --model loads go to the shards in turn: mlp to shard 0, resnet18 to shard 1
    with Frontend(cluster.address, cluster.env(), "--model", "mlp", "--model", "resnet18") as f:
        f.wait_ready()
        yield f


def mlp_input(batch: int) -> np.ndarray:
    return np.random.default_rng(batch).random((batch, *MLP_IN), dtype=np.float32)


def http_input(x: np.ndarray):
    i = th.InferInput("input", list(x.shape), "FP32")
    i.set_data_from_numpy(x)
    return i


def grpc_input(x: np.ndarray):
    i = tg.InferInput("input", list(x.shape), "FP32")
    i.set_data_from_numpy(x)
    return i


def ids_of(native: ShardedClient, name: str) -> list[int]:
    return sorted(m.model_id for m in native.ls() if m.source.rstrip("/").endswith("/" + name))


def wait_until(predicate, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_one_frontend_serves_both_shards(cluster, native, fe):
    (mlp_0,) = ids_of(native, "mlp")
    (resnet18,) = ids_of(native, "resnet18")
    assert (mlp_0 >> SHARD_ID_BITS, resnet18 >> SHARD_ID_BITS) == (0, 1), "--model loads alternate shards"
    native.load_model("resnet50")                   # this client's turn: shard 0, then shard 1
    mlp_1, _, _ = native.load_model("mlp")
    assert mlp_1 >> SHARD_ID_BITS == 1
    x = mlp_input(3)
    http = th.InferenceServerClient(fe.http)
    grpcc = tg.InferenceServerClient(fe.grpc)
    try:
        # loaded by another client a moment ago: a lookup miss lists the shards again
        wait_until(lambda: http.is_model_ready("mlp", "2"), "mlp version 2 (shard 1) never listed")
        for name in ("mlp", "resnet18", "resnet50"):
            assert http.is_model_ready(name) and grpcc.is_model_ready(name), name
        assert http.get_model_metadata("mlp")["versions"] == ["1", "2"]
        for version, mid in (("1", mlp_0), ("2", mlp_1)):
            reference = native.infer(mid, inputs=x.tobytes(), batch_size=3).output
            r = http.infer("mlp", [http_input(x)], model_version=version)
            assert r.get_response()["parameters"]["clockwork_model_id"] == mid
            assert r.as_numpy("output").shape == (3, *MLP_OUT)
            assert r.as_numpy("output").tobytes() == reference
            g = grpcc.infer("mlp", [grpc_input(x)], model_version=version)
            assert g.get_response().parameters["clockwork_model_id"].int64_param == mid
            assert g.as_numpy("output").tobytes() == reference
        y = np.zeros((1, *PROFILE["resnet18"]["input"]["shape"]), np.float32)
        r = http.infer("resnet18", [http_input(y)]).get_response()
        assert r["parameters"]["clockwork_model_id"] == resnet18
    finally:
        http.close()
        grpcc.close()


def test_a_shard_not_answering_makes_the_frontend_not_ready(cluster, fe):
    shards = children(cluster.controller.pid)
    assert len(shards) == 2, shards
    shard_1 = next(p for p in shards if "--shard-index\x001\x00" in open(f"/proc/{p}/cmdline").read())
    http = th.InferenceServerClient(fe.http)
    os.kill(shard_1, signal.SIGSTOP)              # connected, but no LS answered
    try:
        fe.wait_ready(False)
        with pytest.raises(InferenceServerException) as e:
            http.infer("mlp", [http_input(mlp_input(1))])     # a shard 0 model: refused too
        assert e.value.status() == "503" and "not ready" in e.value.message()
        assert f"shard 1 at 127.0.0.1:{cluster.client_port + 1}" in e.value.message(), e.value.message()
    finally:
        os.kill(shard_1, signal.SIGCONT)
    fe.wait_ready(True)
    assert http.infer("mlp", [http_input(mlp_input(1))]).as_numpy("output").shape == (1, *MLP_OUT)
    http.close()


def test_shard_addresses_out_of_order_are_a_not_ready_reason(cluster, fe):
    """Infers would go to the wrong shard: the front end says why instead of serving."""
    reversed_order = ",".join(reversed(cluster.address.split(",")))
    with Frontend(reversed_order, cluster.env()) as wrong:
        http = th.InferenceServerClient(wrong.http)
        try:
            def refused_for_order():
                try:
                    http.infer("mlp", [http_input(mlp_input(1))])
                except InferenceServerException as e:
                    return e.status() == "503" and "in shard order" in e.message()
                return False
            wait_until(refused_for_order, "".join(wrong.lines))
            assert not http.is_server_ready()
        finally:
            http.close()


def test_frontend_survives_a_restart_of_the_sharded_controller(cluster, fe):
    """Every shard's connection drops and comes back with a new epoch: the front end lists
    each shard again and loads its --models again, one per shard in turn. (Last on `cluster`.)"""
    cluster.controller.terminate()
    assert cluster.controller.wait(30) == 0
    fe.wait_ready(False)
    cluster.start_controller()
    fe.wait_ready(True)
    native = ShardedClient(cluster.address.split(","), log=lambda *_: None)
    http = th.InferenceServerClient(fe.http)
    try:
        shards = {m.source.rstrip("/").rsplit("/", 1)[-1]: m.model_id >> SHARD_ID_BITS for m in native.ls()}
        assert sorted(shards.values()) == [0, 1], shards     # one --model per shard, in turn
        for name, shape in (("mlp", MLP_IN), ("resnet18", tuple(PROFILE["resnet18"]["input"]["shape"]))):
            x = np.zeros((1, *shape), np.float32)
            r = http.infer(name, [http_input(x)]).get_response()
            assert r["parameters"]["clockwork_model_id"] >> SHARD_ID_BITS == shards[name]
    finally:
        native.close()
        http.close()


def test_cw_controller_shards_serve_kserve_through_one_frontend_child():
    port = free_port()
    with LocalCluster(gpus=1, workers=2, shards=2, controller_args=("--http", str(port))) as c:
        loader = ShardedClient(c.address.split(","), log=lambda *_: None)
        try:
            a, _, _ = loader.load_model("mlp")
            b, _, _ = loader.load_model("mlp")
        finally:
            loader.close()
        h = th.InferenceServerClient(f"127.0.0.1:{port}")
        try:
            def listed():
                try:
                    return h.is_model_ready("mlp", "2")
                except (InferenceServerException, OSError):
                    return False            # not listening yet
            wait_until(listed, "".join(c.output.get("controller", [])[-20:]))
            for version, mid in (("1", a), ("2", b)):
                r = h.infer("mlp", [http_input(mlp_input(1))], model_version=version)
                assert r.get_response()["parameters"]["clockwork_model_id"] == mid
        finally:
            h.close()
        procs = children(c.controller.pid)
        assert len(procs) == 3, procs                  # two shards and the front end
        shard_1 = next(p for p in procs if "--shard-index\x001\x00" in open(f"/proc/{p}/cmdline").read())
        os.kill(shard_1, signal.SIGKILL)
        assert c.controller.wait(60) == 1
        assert not still_running(procs, 30), "a shard or the front end outlived the command"
        assert any("shard 1" in line and "stopping the other shards and the front end" in line
                   for line in c.output["controller"]), c.output["controller"][-5:]
    with pytest.raises(OSError):                       # the front end stopped with them
        socket.create_connection(("127.0.0.1", port), timeout=5).close()

