"""The examples of docs/frontend.md run as written (ports swapped for the test's free ones)
against a real front end + controller + emulated worker."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from clockwork.local import LocalCluster
from clockwork.model.zoo import load_profile
from frontend_procs import Frontend

pytestmark = pytest.mark.timeout(180)

DOC = Path(__file__).resolve().parent.parent / "docs" / "frontend.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), re.S)


@pytest.fixture(scope="module")
def fe():
    with LocalCluster(gpus=1) as c, Frontend(c.address, c.env(), "--model", "mlp") as f:
        f.wait_ready()
        yield f


def local(text: str, fe) -> str:
    return text.replace("localhost:8000", fe.http).replace("localhost:8001", fe.grpc)


def test_curl_examples(fe):
    (script,) = blocks("bash")
    r = subprocess.run(["bash", "-euc", local(script, fe)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    docs = [json.loads(d) for d in r.stdout.replace("}{", "}\n{").splitlines() if d.strip()]
    metadata, answer = docs
    assert metadata["name"] == "mlp" and metadata["inputs"][0]["shape"][0] == -1
    assert answer["outputs"][0]["shape"] == [1, metadata["outputs"][0]["shape"][1]]
    assert len(answer["outputs"][0]["data"]) == metadata["outputs"][0]["shape"][1]


def test_tritonclient_example(fe):
    (script,) = blocks("python")
    r = subprocess.run([sys.executable, "-c", local(script, fe)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    shape = (4, *load_profile("h200")["models"]["mlp"]["output"]["shape"])
    assert r.stdout.splitlines() == [str(shape)] * 2


@pytest.mark.skipif(shutil.which("perf_analyzer") is None,
                    reason="perf_analyzer not installed (it ships with Triton's SDK, not PyPI)")
def test_perf_analyzer_example(fe):
    (script,) = blocks("sh")
    for line in local(script, fe).strip().splitlines():
        r = subprocess.run(line.split() + ["--measurement-interval", "1000"], capture_output=True,
                           text=True, timeout=170)
        assert r.returncode == 0, r.stdout + r.stderr
