"""The real path on the CPU backend: zoo build (llvm) -> worker runtime -> TVM with paged weights.

Builds the MLP and the tiny CNN into a temporary zoo, loads them through the same WorkerRuntime
the GPU worker uses, and checks outputs against a float64 numpy reference, evict + reload into
other pages, and the error code of an Infer on evicted weights. Needs TVM (skipped without it).
"""
from __future__ import annotations

import time

import numpy as np
import pytest

tvm = pytest.importorskip("tvm", reason="TVM not installed (pip install apache-tvm==0.27.0.post1)")

from clockwork.model import build, nets  # noqa: E402
from clockwork.model.cpu import CpuBackend  # noqa: E402
from clockwork.model.format import load_spec  # noqa: E402
from clockwork.status import Status  # noqa: E402
from clockwork.transport import schema as s  # noqa: E402
from clockwork.worker.runtime import WorkerRuntime  # noqa: E402

PAGE = 2 << 20            # 2 MiB pages so the 2.6 MB MLP spans two pages
MODELS = ("mlp", "tinycnn")
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    build.build_zoo(MODELS, root, "llvm", page_size=PAGE, log=lambda *a: None)
    return root


class Driver:
    """Runs actions through a WorkerRuntime synchronously, collecting results by action id."""

    def __init__(self, zoo, total_pages=16):
        self.backend = CpuBackend(PAGE, total_pages, 16 << 20, 16 << 20)
        self.results = {}
        self.rt = WorkerRuntime(self.backend, zoo, self._send, PAGE, total_pages, 16 << 20, 16 << 20)
        self.next_id = 0

    def _send(self, reply_to, msg, frames):
        self.results[msg.action_id] = (msg, [bytes(f) for f in frames])

    def do(self, cls, **kw):
        self.next_id += 1
        aid = self.next_id
        data = kw.pop("data", [])
        now = time.monotonic_ns()
        fields = dict(action_id=aid, earliest=0, latest=now + 60_000_000_000) if cls is not s.GetWorkerState \
            else dict(action_id=aid)
        self.rt.handle(cls(**fields, **kw), data, None, now)
        deadline = time.monotonic() + 60
        while aid not in self.results:
            assert time.monotonic() < deadline, "action never completed"
            now = time.monotonic_ns()
            if self.rt.waiting_on_backend():
                self.rt.poll_backend(now)
            self.rt.advance(now)
        return self.results.pop(aid)


def _infer(d, model_id, x, gpu=0):
    msg, frames = d.do(s.Infer, model_id=model_id, gpu_id=gpu, batch_size=len(x),
                       data=[x.astype(np.float32).tobytes()])
    return msg, frames


@pytest.mark.parametrize("name", MODELS)
def test_outputs_match_numpy_reference(zoo, name):
    net = nets.get(name)
    spec = load_spec(zoo / name)
    assert spec.code == {"llvm": "llvm.so"} and spec.weights_file == "weights.bin"
    d = Driver(zoo)
    msg, _ = d.do(s.LoadModelFromDisk, model_id=0, path=name)
    assert isinstance(msg, s.LoadModelFromDiskResult), msg
    assert msg.models[0].batch_sizes == list(nets.BATCH_SIZES)
    msg, _ = d.do(s.LoadWeights, model_id=0, gpu_id=0)
    assert isinstance(msg, s.LoadWeightsResult), msg
    weights = net.init_weights(0)
    rng = np.random.default_rng(7)
    for b in (1, 3, 16):                     # 3 runs padded to the compiled batch 4
        x = rng.standard_normal((b, *net.input_shape)).astype(np.float32)
        msg, frames = _infer(d, 0, x)
        assert isinstance(msg, s.InferResult), msg
        out = np.frombuffer(frames[0], np.float32).reshape(b, *net.output_shape)
        ref = nets.reference(net, x, weights)
        err = np.abs(out - ref).max() / np.abs(ref).max()
        assert err < 1e-4, f"{name} b{b}: relative error {err}"


def test_evict_reload_elsewhere_and_infer_on_evicted(zoo):
    net = nets.get("mlp")
    spec = load_spec(zoo / "mlp")
    assert len(spec.pages) >= 2, "MLP should span several pages"
    d = Driver(zoo, total_pages=16)
    assert isinstance(d.do(s.LoadModelFromDisk, model_id=0, path="mlp", copies=2)[0],
                      s.LoadModelFromDiskResult)
    x = np.random.default_rng(3).standard_normal((4, 784)).astype(np.float32)

    assert isinstance(d.do(s.LoadWeights, model_id=0, gpu_id=0)[0], s.LoadWeightsResult)
    first_pages = list(d.rt.gpus[0].resident[0].pages)
    before = _infer(d, 0, x)[1][0]

    # copy 1 occupies the next pages, then model 0 is evicted and reloaded into other pages
    assert isinstance(d.do(s.LoadWeights, model_id=1, gpu_id=0)[0], s.LoadWeightsResult)
    assert isinstance(d.do(s.EvictWeights, model_id=0, gpu_id=0)[0], s.EvictWeightsResult)

    msg, frames = _infer(d, 0, x)
    assert isinstance(msg, s.ErrorResult) and msg.status == Status.WEIGHTS_NOT_PRESENT, msg
    assert frames == []

    # overwrite the freed pages with garbage (a stale view into them would now give garbage),
    # and hold them with a blocker so model 0 is reloaded into other pages
    for p in first_pages:
        d.backend._caches[0][p * PAGE:(p + 1) * PAGE] = 0x7F
    blocker = d.rt.gpus[0].mem.pages.alloc(len(first_pages))
    assert isinstance(d.do(s.LoadWeights, model_id=0, gpu_id=0)[0], s.LoadWeightsResult)
    second_pages = list(d.rt.gpus[0].resident[0].pages)
    assert second_pages != first_pages
    d.rt.gpus[0].mem.pages.release(blocker)

    after = _infer(d, 0, x)[1][0]
    assert after == before
    copy = _infer(d, 1, x)[1][0]
    assert copy == before
    ref = nets.reference(net, x, net.init_weights(0))
    out = np.frombuffer(after, np.float32).reshape(4, 10)
    assert np.abs(out - ref).max() / np.abs(ref).max() < 1e-4


def test_profile_only_model_is_refused(zoo, tmp_path):
    from clockwork.model.zoo import write_emulated_zoo
    write_emulated_zoo(tmp_path, models=["mlp"], log=lambda *a: None)
    d = Driver(tmp_path)
    msg, _ = d.do(s.LoadModelFromDisk, model_id=0, path="mlp")
    assert isinstance(msg, s.ErrorResult) and msg.status == Status.LOAD_FAILED
    assert "profile-only" in msg.message


def test_build_skips_unchanged(zoo):
    logs = []
    build.build_zoo(["mlp"], zoo, "llvm", page_size=PAGE, log=logs.append)
    assert any("up to date" in line for line in logs), logs
    assert not any("compiling" in line for line in logs), logs


def test_cuda_build_without_device_code_is_refused(monkeypatch, tmp_path):
    """If TVM emits CUDA source instead of a binary, nothing is written."""
    class FakeChild:
        """A compile that 'succeeds' but leaves what TVM writes without libcuda: CUDA source."""
        returncode = 0

        def __init__(self, cmd, **kw):
            with open(cmd[-1], "wb") as f:
                f.write(b"\x7fELF" + b"\0" * 64 + b'extern "C" __global__ void default_function_kernel() {}')

        def wait(self, timeout=None):
            return 0

    monkeypatch.setattr(build, "_start_child", FakeChild)
    monkeypatch.setattr(build, "stub_dir", lambda: tmp_path)
    out = tmp_path / "cuda-sm_90.so"
    with pytest.raises(build.BuildError, match="refusing"):
        build.compile_model("mlp", "cuda", "sm_90", [1], out)
    assert not out.exists() and not list(tmp_path.glob("*.tmp"))


def test_bad_target_is_a_clear_error():
    with pytest.raises(build.BuildError, match="sm_90"):
        build.target_key("cuda", "90")
    with pytest.raises(build.BuildError, match="unknown target"):
        build.target_key("rocm", None)


def test_bundle_weights_regenerate_from_seed(zoo, tmp_path):
    """Bundles ship models without weights.bin; regenerating must give the same bytes, and a
    mismatch with the recorded sha256 must be an error, not silently different weights."""
    import json
    import shutil
    d = tmp_path / "mlp"
    d.mkdir()
    shutil.copy(zoo / "mlp" / "model.json", d / "model.json")
    build.materialize_weights(d, log=lambda *a: None)
    assert (d / "weights.bin").read_bytes() == (zoo / "mlp" / "weights.bin").read_bytes()
    (d / "weights.bin").unlink()
    meta = json.loads((d / "model.json").read_text())
    meta["weights"]["sha256"] = "0" * 64
    (d / "model.json").write_text(json.dumps(meta))
    with pytest.raises(build.BuildError, match="differ"):
        build.materialize_weights(d, log=lambda *a: None)
    assert not (d / "weights.bin").exists()


def test_check_model_command_on_the_cpu_backend(zoo):
    """`cw check-model` opens a backend the way the worker does (it passed a stale extra
    pool size once: a TypeError on CUDA, millions of GPUs on the CPU)."""
    from click.testing import CliRunner

    from clockwork.model.commands import check_model_command
    r = CliRunner().invoke(check_model_command, [str(zoo / "mlp"), "--backend", "cpu", "--runs", "2"])
    assert r.exit_code == 0, r.output
    rows = [line.split() for line in r.output.splitlines() if line.split()[:1] == ["16"]]
    assert rows and float(rows[0][1]) > 0, r.output
