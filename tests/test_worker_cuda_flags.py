"""The CUDA backend's two modes (CUDA graphs, exec gate) are worker config keys; the
environment variables CLOCKWORK_CUDA_GRAPHS / CLOCKWORK_CUDA_GATE (0 or 1) still override them.
Checked without a GPU: the worker command's backend constructor is replaced by a recorder."""
from __future__ import annotations

import pytest
from click.testing import CliRunner

from clockwork.model.backend import BackendUnavailable
from clockwork.model.cuda import env_flag
from clockwork.worker import command

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("value,default,want", [(None, False, False), (None, True, True),
                                                ("1", False, True), ("0", True, False),
                                                ("yes", True, True), ("", False, False)])
def test_env_flag_overrides_only_with_0_or_1(monkeypatch, value, default, want):
    if value is None:
        monkeypatch.delenv("CLOCKWORK_TEST_FLAG", raising=False)
    else:
        monkeypatch.setenv("CLOCKWORK_TEST_FLAG", value)
    assert env_flag("CLOCKWORK_TEST_FLAG", default) is want


def _worker_backend_kwargs(monkeypatch, tmp_path, config_text, env):
    seen = {}

    class Recorder:
        def __init__(self, **kw):
            seen.update(kw)
            raise BackendUnavailable("recorded")   # stop the command here: no device needed

    monkeypatch.setattr(command, "backend_class", lambda name: Recorder)
    for k in ("CLOCKWORK_CUDA_GRAPHS", "CLOCKWORK_CUDA_GATE", "CLOCKWORK_CONFIG_FILE"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    cfg = tmp_path / "w.toml"
    cfg.write_text(config_text)
    r = CliRunner().invoke(command.worker_command, ["--backend", "cuda", "--config", str(cfg)])
    assert "recorded" in r.output
    return seen["graphs"], seen["gate"]


def test_worker_config_keys_reach_the_cuda_backend(monkeypatch, tmp_path):
    assert _worker_backend_kwargs(monkeypatch, tmp_path, "", {}) == (True, True)     # the defaults
    off = "[worker]\ncuda_graphs = false\ncuda_gate = false\n"
    assert _worker_backend_kwargs(monkeypatch, tmp_path, off, {}) == (False, False)
    assert _worker_backend_kwargs(monkeypatch, tmp_path, "", {"CLOCKWORK_CUDA_GATE": "0"}) == (True, False)
    assert _worker_backend_kwargs(monkeypatch, tmp_path, off, {"CLOCKWORK_CUDA_GRAPHS": "1"}) == (True, False)


def test_a_non_boolean_value_is_refused(monkeypatch, tmp_path):
    cfg = tmp_path / "w.toml"
    cfg.write_text('[worker]\ncuda_graphs = "yes"\n')
    r = CliRunner().invoke(command.worker_command, ["--backend", "cuda", "--config", str(cfg)])
    assert r.exit_code != 0 and "cuda_graphs" in r.output
