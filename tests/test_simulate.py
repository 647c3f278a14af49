"""`cw simulate`: the real controller edge, scheduler and worker runtime in simulated time.

Simulated time only (no processes, no sleeps): deterministic byte for byte, every request
answered exactly once under faults, worker clocks skewed and drifting, one-line errors."""
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from clockwork.config import ConfigError
from clockwork.sim import config as sim_config
from clockwork.sim.run import SimError, Simulation, simulate

pytestmark = pytest.mark.timeout(300)

PROFILE = "h200-fp32"     # resnet50 batch 1 takes 4.9 ms: with batches of 1 a GPU serves ~204 r/s
CAPACITY_PER_GPU = 1e9 / 4_880_896


def make(tmp_path=None, scheduler="infer4", load=0.5, gpus=1, workers=2, duration=4.0, seed=0, **kw):
    cfg = sim_config.load(None)
    cfg.profile = PROFILE
    cfg.scheduler = scheduler
    cfg.gpus = gpus
    cfg.workers = workers
    cfg.duration_s = duration
    cfg.seed = seed
    cfg.base["controller"]["max_batch_size"] = 1
    rate = load * CAPACITY_PER_GPU * gpus * workers
    cfg.workload = "poisson-open-loop"
    cfg.workload_args = ["8", f"{rate:.3f}"]
    if tmp_path is not None:
        cfg.log_dir = str(tmp_path)
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def run(cfg):
    lines = []
    return simulate(cfg, out=lines.append), lines


def request_log(d):
    rows = Path(d, "clockwork_request_log.tsv").read_text().splitlines()
    head = rows[0].split("\t")
    return [dict(zip(head, r.split("\t"))) for r in rows[1:]]


def test_same_seed_same_logs_byte_for_byte(tmp_path):
    kw = dict(skew_ms=20.0, drift_ppm=200.0, exec_sigma=0.05, drop_rate=0.001,
              faults=[sim_config.Fault("stall", 1, 1.0, 1.2), sim_config.Fault("crash", 0, 2.0, 0.5)])
    outs = []
    for name in ("a", "b", "c"):
        seed = 1 if name == "c" else 0
        oc, lines = run(make(tmp_path / name, load=1.0, seed=seed, **kw))
        outs.append((oc, [l for l in lines if not l.startswith(("Simulated", "Logging"))]))
    for f in ("clockwork_request_log.tsv", "clockwork_action_log.tsv"):
        a, b, c = ((tmp_path / n / f).read_bytes() for n in "abc")
        assert len(a.splitlines()) > 100
        assert a == b, f
        assert a != c, f"{f}: another seed must give another run"
    assert outs[0][1] == outs[1][1]            # printed lines too (wall time aside)


@pytest.mark.parametrize("scheduler", ["infer4", "fifo", "clipper", "direct"])
@pytest.mark.parametrize("load", [0.5, 2.0])
def test_every_request_answered_exactly_once_under_faults(tmp_path, scheduler, load):
    """Workers crash and rejoin, stall past the timeout, slow down, lose connections, with
    skewed clocks and noisy exec times, while 8 models share weights caches that hold 2 of them
    per GPU (loads and evictions all the time)."""
    faults = [sim_config.Fault("crash", 0, 1.0, 0.7),       # dies, restarts empty, rejoins
              sim_config.Fault("stall", 1, 2.0, 1.5),       # silent past the worker timeout
              sim_config.Fault("slow", 1, 3.5, 0.5, 3.0)]
    cfg = make(tmp_path, scheduler, load, duration=5.0, drop_rate=0.002, skew_ms=30.0, drift_ppm=100.0,
               exec_sigma=0.05, faults=faults)
    cfg.base["worker"]["weights_cache_size"] = 16 * cfg.base["worker"]["page_size"]   # resnet50: 7 pages
    oc, lines = run(cfg)
    assert oc.sent > 0.9 * load * CAPACITY_PER_GPU * 2 * 5
    assert oc.unanswered == 0 and oc.duplicates == 0, oc.line()
    assert oc.answered == oc.sent
    rows = request_log(tmp_path)
    assert len(rows) == oc.sent
    assert all(n == 1 for n in Counter(r["request_id"] for r in rows).values())
    text = "\n".join(lines)
    assert "Worker 0 (sim-worker-0) lost: connection closed" in text
    assert "Worker 1 (sim-worker-1) lost: no message" in text
    assert text.count("joined with") >= 2                  # both came back
    statuses = Counter(int(r["result"]) for r in rows)
    assert statuses[0] > 0.1 * oc.sent                     # still serving, in spite of it all


def test_skewed_drifting_clocks_are_converted(tmp_path):
    """Worker clocks 400 ms apart, drifting 500 ppm: windows still land (the controller's
    ClockSync conversion is exercised; switched off or reversed, actions miss their windows)."""
    oc, _ = run(make(tmp_path, load=0.5, skew_ms=400.0, drift_ppm=500.0, duration=3.0))
    assert oc.slo_attainment == 100.0, oc.line()


def test_more_load_than_capacity_is_dropped_not_late(tmp_path):
    """infer4 at 2x (batches of 1): about capacity succeeds, the rest is dropped early."""
    oc, _ = run(make(tmp_path, load=2.0, workers=1, duration=4.0))
    assert oc.successes == oc.slo_met                      # nothing answered after its deadline
    # the GPU can serve from the first arrival until the last one's 100 ms deadline: 4.1 s of
    # work at most, counted against the 4 s of sending
    assert 0.8 * CAPACITY_PER_GPU < oc.goodput <= CAPACITY_PER_GPU * 4.1 / 4.0


def test_workers_drop_and_rejoin_without_process_faults(tmp_path):
    oc, lines = run(make(tmp_path, load=0.5, duration=4.0, drop_rate=0.01))
    assert oc.unanswered == 0 and oc.duplicates == 0
    assert any("lost: connection closed" in l for l in lines)


# ---------------------------------------------------------------- config and command line

def test_config_file_and_errors(tmp_path):
    good = tmp_path / "sim.toml"
    good.write_text('[simulate]\nscheduler = "fifo"\nworkers = 3\nworkload = "simple"\n'
                    '[simulate.network]\nlatency_us = 20\n[[simulate.faults]]\nkind = "slow"\nworker = 2\n'
                    'factor = 2.5\n[controller]\nmax_batch_size = 4\n')
    cfg = sim_config.load(str(good))
    assert (cfg.scheduler, cfg.workers, cfg.latency_us) == ("fifo", 3, 20.0)
    assert cfg.faults[0].factor == 2.5 and cfg.base["controller"]["max_batch_size"] == 4
    bad = {'[simulate]\nworkerz = 2\n': "unknown key 'workerz'",
           '[simulate]\nworkers = "two"\n': "workers must be int",
           '[simulate.network]\ndrop = 1\n': "unknown key 'drop'",
           '[[simulate.faults]]\nkind = "meteor"\n': "kind must be one of",
           '[controller]\nnope = 1\n': "unknown key 'nope'",
           '[simulate\n': "sim.toml"}
    for text, why in bad.items():
        good.write_text(text)
        with pytest.raises(ConfigError, match=why):
            sim_config.load(str(good))
    for change, why in ((dict(gpus=0), "gpus must be >= 1"), (dict(drop_rate=1.0), "drop_rate"),
                        (dict(faults=[sim_config.Fault("crash", 5, 1.0)]), "workers 0..0"),
                        (dict(scheduler="lifo"), "scheduler 'lifo'")):
        with pytest.raises(ConfigError, match=why):
            Simulation(make(workers=1, **change))
    with pytest.raises(SimError, match="unknown workload"):
        Simulation(make(workers=1, workload="nope"))


def _cw(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "clockwork.cli", "simulate", *args], capture_output=True,
                          text=True, timeout=120, cwd=cwd)


def test_cli_help_and_one_line_errors(tmp_path):
    r = _cw("--help")
    assert r.returncode == 0 and "--fault" in r.stdout and "simulated" in r.stdout
    for args, why in ((["--workers", "0"], "workers must be >= 1"),
                      (["--fault", "crash:zero@1"], "--fault 'crash:zero@1'"),
                      (["--config", str(tmp_path / "missing.toml")], "config file not found"),
                      (["nosuchworkload"], "unknown workload"),
                      (["poisson-open-loop", "--rate", "x"], "rate: "),
                      (["--scheduler", "lifo"], "scheduler 'lifo'")):
        r = _cw(*args)
        assert r.returncode != 0
        err = [l for l in r.stderr.splitlines() if l.startswith("Error")]
        assert len(err) == 1 and why in err[0], r.stderr
        assert "Traceback" not in r.stderr


def test_cli_run_writes_logs_cw_plot_reads(tmp_path):
    r = _cw("-d", "2", "--log-dir", str(tmp_path / "logs"), "--no-progress", "simple")
    assert r.returncode == 0, r.stderr
    assert "Simulated" in r.stdout and "unanswered=0" in r.stdout
    rows = request_log(tmp_path / "logs")
    assert rows and all(r["result"] == "0" for r in rows)
    p = subprocess.run([sys.executable, "-m", "clockwork.cli", "plot", str(tmp_path / "logs")],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "logs" / "plots" / "throughput.png").exists()


def test_controller_cpu_cost_delays_answers_and_keeps_exactly_once(tmp_path):
    """With a cost per message the controller queues work like a busy process: answers come
    later (here: past their SLO when it saturates), and still exactly once, under faults."""
    free, _ = run(make(tmp_path / "free", load=0.5, workers=1, duration=3.0))
    faults = [sim_config.Fault("crash", 0, 1.0, 0.5)]
    busy, _ = run(make(tmp_path / "busy", load=0.5, workers=1, duration=3.0, controller_us=5000.0,
                       faults=faults))
    assert busy.unanswered == 0 and busy.duplicates == 0 and busy.answered == busy.sent
    assert free.slo_attainment > 99.0
    assert busy.slo_attainment < free.slo_attainment - 20


WORKLOAD_ARGS = {
    "simple-parametric": ["4", "2", "2", "50"],
    "poisson-open-loop": ["4", "100"],
    "spam": ["--copies", "4", "--concurrency", "4"],
    "single-spam": ["--concurrency", "20"],
    "simple-slo-factor": ["--period", "0.5"],
    "comparison_experiment2": ["4", "4"],
    "scalability-exp-1": ["4", "100", "400", "2", "mul", "0.5"],
    "slo-exp-1": ["resnet50", "4", "poisson", "100", "2", "32", "2", "mul", "0.5"],
    "slo-exp-2": ["resnet50", "2", "poisson", "50", "2", "32", "2", "mul", "0.5", "2", "2", "100"],
    "azure": ["--memory_load_factor=1"],
    "azure_scalability_exp": ["--memory_load_factor=1"],
}


def test_every_client_workload_runs_in_simulation(tmp_path):
    """Any `cw client` workload runs on the simulated client (the real engine), every request
    answered exactly once. A workload needing something SimClient lacks fails here."""
    from clockwork.client.azure import write_synthetic_trace
    from clockwork.client import workloads
    write_synthetic_trace(tmp_path / "trace", functions=300)
    names = sorted(workloads.all_workloads())
    assert len(names) >= 16
    for name in names:
        args = list(WORKLOAD_ARGS.get(name, []))
        if name.startswith("azure"):
            args.append(f"--trace_dir={tmp_path / 'trace'}")
        cfg = make(workers=1, duration=1.0, workload=name, workload_args=args, drain_s=30.0)
        cfg.base["controller"]["max_batch_size"] = 16
        oc, _ = run(cfg)
        assert oc.sent > 0, name
        assert oc.unanswered == 0 and oc.duplicates == 0 and oc.answered == oc.sent, (name, oc.line())


def test_worker_cpu_cost_delays_actions_and_keeps_exactly_once(tmp_path):
    """With a cost per action read the worker process is busy like a stalled one: actions are
    received late (here: past their windows when it saturates), and still answered once."""
    free, _ = run(make(tmp_path / "free", load=0.5, workers=1, duration=3.0))
    busy, _ = run(make(tmp_path / "busy", load=0.5, workers=1, duration=3.0, worker_us=12000.0,
                       faults=[sim_config.Fault("stall", 0, 1.0, 0.2)]))
    assert busy.unanswered == 0 and busy.duplicates == 0 and busy.answered == busy.sent
    assert busy.slo_attainment < free.slo_attainment - 20
