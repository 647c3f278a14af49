"""Fidelity of `cw simulate`: the same small workload as real processes (emulated worker,
controller, client over loopback) and simulated gives SLO attainment within 0.5 points and
goodput within 2%. Small and well below capacity on purpose, so that this loaded 2-core
machine's scheduling noise does not decide the outcome; tools/bench/simulate.py compares
heavier loads, where the real side depends on the machine's other load.

The real side is only as steady as the machine: with a 100 ms SLO, on this machine at load
average ~11 (other jobs), the fifo case failed twice in full-suite runs (once: 8 of 786 real
requests late, 98.98% against the simulation's 100%) as the processes were held off the CPU. A 500 ms SLO
makes it robust to most such stalls without touching the bounds (a simulated worker 2.5x too
slow still fails it by 12-32 points); at load average 14 a full-suite run still failed it once
(infer4), while it passed alone minutes later. On an unshared CI machine it should not."""
import pytest

from clockwork.local import LocalCluster
from clockwork.model.zoo import write_emulated_zoo
from clockwork.sim import config as sim_config
from clockwork.sim.fidelity import from_request_log
from clockwork.sim.run import simulate

pytestmark = pytest.mark.timeout(240)

DURATION = 8.0
PROFILE = "h200-fp32"                             # resnet50 batch 1: 4.9 ms
WORKLOAD = ["poisson-open-loop", "4", "100"]      # 0.5x of one such GPU
CONFIG = "[controller]\nmax_batch_size = 1\n"    # no batching: capacity is 1 / exec time
SLO_MS = 500     # a loaded machine stalls real processes for 100+ ms at times: not a simulation matter


@pytest.mark.parametrize("scheduler", ["infer4", "fifo"])
def test_real_processes_and_simulation_agree(tmp_path, scheduler):
    real_logs = tmp_path / "real"
    conf = tmp_path / "clockwork.toml"
    conf.write_text(CONFIG)
    zoo = tmp_path / "zoo"
    write_emulated_zoo(zoo, PROFILE, log=lambda *_: None)
    with LocalCluster(gpus=1, scheduler=scheduler, log_dir=real_logs, config_file=conf, model_dir=zoo) as cluster:
        r = cluster.run_client(WORKLOAD[0], ["--duration", str(DURATION), "--no-inputs", "--slo-ms",
                                             str(SLO_MS), *WORKLOAD[1:]], timeout=120)
        assert r.returncode == 0, r.stdout
    cfg = sim_config.load(str(conf))
    cfg.scheduler, cfg.workers, cfg.gpus, cfg.duration_s = scheduler, 1, 1, DURATION
    cfg.model_dir = str(zoo)                     # the very model directories the real worker read
    cfg.workload, cfg.workload_args = WORKLOAD[0], WORKLOAD[1:]
    cfg.log_dir = str(tmp_path / "sim")
    cfg.slo_ms = SLO_MS
    oc = simulate(cfg, out=lambda line: None)
    assert oc.unanswered == 0 and oc.duplicates == 0
    real = from_request_log(real_logs / "clockwork_request_log.tsv", DURATION)
    sim = from_request_log(tmp_path / "sim" / "clockwork_request_log.tsv", DURATION)
    assert real.requests > 0.9 * 100 * DURATION and sim.requests > 0.9 * 100 * DURATION
    assert abs(real.attainment - sim.attainment) <= 0.5, (real, sim)
    assert abs(real.goodput - sim.goodput) <= 0.02 * sim.goodput, (real, sim)
