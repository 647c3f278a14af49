"""Every named workload runs briefly against the in-test controller with each request
accounted for; the registry, argument parsing and `cw client` behave."""
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from clockwork.client.api import Client
from clockwork.client.azure import write_synthetic_trace
from clockwork.client.command import client_command
from clockwork.client.stats import Stats
from clockwork.client.workloads.engine import Engine
from clockwork.client.workloads.experiments import bursty_segments
from clockwork.client.workloads import all_workloads, get
from clockwork.client.workloads.registry import ParamError
from clockwork.transport.sockets import free_port

pytestmark = pytest.mark.timeout(120)

ORIGINAL = ["example", "spam", "single-spam", "fill_memory", "simple", "simple-slo-factor",
            "simple-parametric", "poisson-open-loop", "scalability-exp-1", "slo-exp-1", "slo-exp-2",
            "comparison_experiment", "comparison_experiment2", "azure", "azure_scalability_exp",
            "bursty_experiment"]

# Small arguments so each runs for well under a second (the ones that end by themselves do).
SMALL = {
    "example": [],
    "spam": ["--copies", "2", "--concurrency", "3"],
    "single-spam": ["--concurrency", "4"],
    "fill_memory": [],
    "simple": [],
    "simple-slo-factor": ["resnet50", "0.1"],
    "simple-parametric": ["4", "2", "2", "10"],
    "poisson-open-loop": ["3", "200"],
    "scalability-exp-1": ["2", "100", "400", "2", "mul", "0.2"],
    "slo-exp-1": ["resnet50", "2", "poisson", "100", "2", "8", "2", "mul", "0.2"],
    "slo-exp-2": ["resnet50", "2", "fixed-rate", "100", "2", "8", "2", "mul", "0.2", "2", "1", "100"],
    "comparison_experiment": ["3", "300"],
    "comparison_experiment2": ["3", "2"],
    "azure": ["--memory-load-factor", "1", "--interval", "0.1"],
    "azure_scalability_exp": ["1", "2", "8", "2", "0.2", "1"],
    "bursty_experiment": ["5", "2", "0.1", "200", "50"],
}
SELF_ENDING = {"simple-parametric", "scalability-exp-1", "slo-exp-1", "slo-exp-2", "azure_scalability_exp",
               "bursty_experiment"}


@pytest.fixture(scope="module")
def trace_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("azure")
    write_synthetic_trace(d, functions=400, seed=3, mean_rate_per_min=60)
    return d


def run_workload(echo, name, args, duration=0.6, send_inputs=False, seed=0, trace_dir=None):
    spec = get(name)
    params = spec.parse(list(args) + (["--trace-dir", str(trace_dir)] if trace_dir else []))
    client = Client(echo.address, timeout_s=10, connect_timeout_s=10, log=lambda m: None)
    try:
        stats = Stats(print_interval_s=0.2, log=lambda m: None)
        engine = Engine(client, stats, send_inputs=send_inputs, seed=seed,
                        duration_s=None if name in SELF_ENDING else duration, log=lambda m: None,
                        zoo=["mlp", "resnet18", "resnet50"])
        spec.fn(engine, **params)
        engine.run(drain_s=10)
        return engine, stats
    finally:
        client.close()


def test_registry_has_every_workload_of_the_original():
    assert set(ORIGINAL) <= set(all_workloads())
    assert set(SMALL) == set(all_workloads())


@pytest.mark.parametrize("name", ORIGINAL)
def test_workload_runs_and_accounts_for_every_request(echo, name, trace_dir):
    engine, stats = run_workload(echo, name, SMALL[name],
                                 trace_dir=trace_dir if name.startswith("azure") else None)
    assert stats.sent > 0, name
    assert stats.sent == stats.answered == stats.succeeded == echo.received["infer"]
    assert stats.finished() == stats.sent
    assert engine.outstanding_at_end == 0 and engine.client.outstanding == 0
    if name in SELF_ENDING:
        assert engine.stop_reason in ("workload finished",) or "schedule finished" in engine.stop_reason


def test_closed_loop_keeps_exactly_its_concurrency_in_flight(echo):
    """Against a controller that never answers, a closed loop sends `concurrency` requests
    and then waits; the unanswered ones are reported as such, not lost."""
    echo.silent_models.update(range(100))
    client = Client(echo.address, timeout_s=60, connect_timeout_s=10, log=lambda m: None)
    try:
        stats = Stats(print_interval_s=10, log=lambda m: None)
        engine = Engine(client, stats, send_inputs=False, duration_s=0.3, log=lambda m: None, zoo=[])
        get("spam").fn(engine, model="resnet50", copies=2, concurrency=3)
        engine.run(drain_s=0.05)
    finally:
        client.close()
    assert stats.sent == 6 and stats.answered == 0
    assert engine.outstanding_at_end == 6
    assert "sent=6 answered=0 succeeded=0 unanswered=6" in stats.summary(engine.outstanding_at_end)


def test_simple_parametric_sends_exactly_its_requests(echo):
    engine, stats = run_workload(echo, "simple-parametric", ["5", "2", "3", "7"])
    assert stats.sent == 2 * 7                       # 2 clients x 7 requests, then it ends
    assert {m for m, *_ in echo.infers} == set(range(5))


def test_slo_factor_schedule_reaches_the_controller(echo):
    run_workload(echo, "slo-exp-1", ["resnet50", "2", "fixed-rate", "200", "2", "8", "2", "mul", "0.15"])
    factors = [f for _, f, _, _ in echo.infers]
    assert factors == sorted(factors)                # only increases
    assert set(factors) <= {2.0, 4.0, 8.0} and {2.0, 8.0} <= set(factors)


def test_slo_exp_2_background_uses_its_slo_factor(echo):
    # 100 background requests in flight, started over 10 s of jitter (seeded): a few start
    # while the 0.4 s foreground schedule runs.
    run_workload(echo, "slo-exp-2", ["resnet50", "1", "poisson", "50", "2", "4", "2", "add", "0.2",
                                     "1", "100", "100"])
    bg = [f for m, f, _, _ in echo.infers if m == 1]
    fg = [f for m, f, _, _ in echo.infers if m == 0]
    assert bg and all(f == 100.0 for f in bg)
    assert fg and set(fg) <= {2.0, 4.0}


def test_inputs_are_sent_from_one_buffer_or_not_at_all(echo):
    engine, stats = run_workload(echo, "spam", ["--copies", "3", "--concurrency", "2"], duration=0.3,
                                 send_inputs=True)
    assert stats.sent > 0 and stats.succeeded == stats.sent   # echo checks every input's size
    assert all(size == 602112 for *_, size in echo.infers)
    assert len(engine._frames) == 1                  # one preallocated buffer for 3 instances
    assert len({id(m.input_frame) for m in engine.models}) == 1
    echo.infers.clear()
    run_workload(echo, "spam", ["--copies", "3", "--concurrency", "2"], duration=0.3, send_inputs=False)
    assert echo.infers and all(size == 0 for *_, size in echo.infers)


def test_same_seed_same_arrivals(echo):
    """Arrival times are pure functions of --seed: the order in which models are hit repeats
    with the same seed and changes with another."""
    def order(seed):
        echo.infers.clear()
        run_workload(echo, "poisson-open-loop", ["4", "400"], duration=0.3, seed=seed)
        return [m % 4 for m, *_ in echo.infers]        # each run loads 4 new ids
    a, b, c = order(7), order(7), order(8)
    n = min(len(a), len(b), len(c))
    assert n > 20
    assert a[:n] == b[:n]
    assert a[:n] != c[:n]


def test_bursty_experiment_shares_the_total_rate():
    num, lead, total = 10, 3, 1000.0
    per_model = [list(bursty_segments(i, num, lead, total, 1.0)) for i in range(num)]
    # every model is silent through the lead-in and until its turn
    for i, segs in enumerate(per_model):
        assert segs[0] == ((lead + i) * 1.0, 0.0)
    # in each interval after the lead-in the active models share exactly total r/s
    for k in range(num):
        active = k + 1
        rates = [segs[1 + k - i][1] for i, segs in enumerate(per_model) if i < active]
        assert sum(rates) == pytest.approx(total)


def test_params_positional_named_and_errors():
    spec = get("slo-exp-1")
    p = spec.parse("resnet18 4 poisson 100 2 32 2 mul 7".split())
    assert p["model"] == "resnet18" and p["copies"] == 4 and p["slo_op"] == "mul" and p["period"] == 7.0
    p2 = spec.parse("--model resnet18 --copies 4 --dist=poisson --rate 100 --slo-start 2 --slo_end 32 "
                    "--slo-factor 2 --slo-op mul --period 7".split())
    assert p == p2
    with pytest.raises(ParamError, match="needs: copies"):
        spec.parse(["resnet50"])
    with pytest.raises(ParamError, match="must be one of"):
        spec.parse("resnet50 4 gaussian 100 2 32 2 mul 7".split())
    with pytest.raises(ParamError, match="must be an integer"):
        spec.parse("resnet50 four poisson 100 2 32 2 mul 7".split())
    with pytest.raises(ParamError, match="no parameter --bogus"):
        get("simple").parse(["--bogus", "1"])
    with pytest.raises(ParamError, match="at most"):
        get("simple").parse(["a", "b"])
    assert get("azure").parse(["2", "0"])["use_all_models"] is False
    with pytest.raises(ParamError, match="unknown workload"):
        get("nope")


# ---------------------------------------------------------------- cw client

def invoke(args, env=None):
    return CliRunner().invoke(client_command, args, env=env or {}, catch_exceptions=False)


def test_cw_client_help_lists_workloads_and_arguments():
    r = invoke(["--help"])
    assert r.exit_code == 0
    for name in ORIGINAL:
        assert name in r.output
    for arg in ("memory_load_factor", "slo_start_fg", "concurrency_bg", "total_requests", "rate_op"):
        assert arg in r.output


def test_cw_client_runs_stops_after_duration_and_logs_requests(echo, tmp_path):
    log = tmp_path / "req.tsv"
    r = invoke([echo.address, "--workload", "simple", "--duration", "0.5", "--print-interval", "0.2",
                "--request-log", str(log), "--seed", "3"], env={"CLOCKWORK_DISABLE_INPUTS": "1"})
    assert r.exit_code == 0, r.output
    assert "Client inputs are DISABLED" in r.output
    assert "throughput=" in r.output and "success=" in r.output and "p99=" in r.output
    assert "duration 0.5 s reached" in r.output
    summary = [line for line in r.output.splitlines() if line.startswith("Summary:")][0]
    sent = int(summary.split("sent=")[1].split()[0])
    answered = int(summary.split("answered=")[1].split()[0])
    assert sent == answered == echo.received["infer"] > 0
    lines = log.read_text().splitlines()
    assert lines[0].startswith("t_sent\trequest_id") and len(lines) == sent + 1
    assert all(line.split("\t")[6] == "0" for line in lines[1:])


def test_cw_client_original_argument_style(echo):
    r = invoke([echo.address, "poisson-open-loop", "2", "100", "--duration", "0.3", "--no-inputs"])
    assert r.exit_code == 0, r.output
    assert "Running workload `poisson-open-loop`" in r.output


def test_cw_client_unreachable_exits_nonzero():
    r = invoke([f"127.0.0.1:{free_port()}", "--workload", "simple", "--connect-timeout", "0.3",
                "--duration", "1"])
    assert r.exit_code == 1
    assert "is `cw controller` running there?" in r.output and "Traceback" not in r.output


def test_cw_client_bad_arguments_exit_2(echo):
    for args in (["--workload", "nope"], ["--workload", "poisson-open-loop", "x", "1"], [],
                 ["--workload", "simple", "--duration", "-1"]):
        r = invoke([echo.address, *args])
        assert r.exit_code == 2, (args, r.output)
        assert "Traceback" not in r.output


def test_cw_client_missing_trace_is_a_clear_error(echo, tmp_path):
    r = invoke([echo.address, "--workload", "azure", "--duration", "1"], env={"AZURE_TRACE_DIR": str(tmp_path)})
    assert r.exit_code == 1 and "no trace for day 1" in r.output


def test_python_dash_m_entry_point(echo):
    env = dict(os.environ, CLOCKWORK_DISABLE_INPUTS="1")
    p = subprocess.run([sys.executable, "-m", "clockwork.client.command", echo.address, "--workload",
                        "comparison_experiment", "2", "200", "--duration", "0.5"],
                       capture_output=True, text=True, timeout=60, env=env)
    assert p.returncode == 0, p.stderr
    assert "Summary:" in p.stdout


# ---------------------------------------------------------------- end to end, real controller

@pytest.mark.timeout(180)
@pytest.mark.parametrize("workload,args", [
    ("simple", []),                                          # closed loop, inputs sent
    ("poisson-open-loop", ["3", "150", "--no-inputs"]),      # open loop, inputs made by the controller
])
def test_end_to_end_with_emulated_worker_and_controller(workload, args):
    from clockwork.local import LocalCluster
    with LocalCluster(gpus=1) as cluster:
        r = cluster.run_client(workload, ["--duration", "2", "--print-interval", "1", "--connect-timeout", "60",
                                          *args], timeout=150)
    assert r.returncode == 0, r.stdout
    summary = [line for line in r.stdout.splitlines() if line.startswith("Summary:")][0]
    sent = int(summary.split("sent=")[1].split()[0])
    answered = int(summary.split("answered=")[1].split()[0])
    succeeded = int(summary.split("succeeded=")[1].split()[0])
    assert sent > 0 and sent == answered
    assert succeeded > 0, r.stdout


def test_sigterm_stops_the_client_with_a_summary(echo):
    import signal
    env = dict(os.environ, CLOCKWORK_DISABLE_INPUTS="1", PYTHONUNBUFFERED="1")
    p = subprocess.Popen([sys.executable, "-m", "clockwork.client.command", echo.address, "--workload", "simple"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        for line in p.stdout:                        # wait until requests flow
            if line.startswith("Starting workload"):
                break
        p.send_signal(signal.SIGTERM)
        out, _ = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 130
    assert "Interrupted" in out and "Summary:" in out


def test_stats_lines_and_summary():
    import io

    import numpy as np

    from clockwork.client.api import NO_ANSWER, SEND_FAILED
    t = [100.0]
    tsv = io.StringIO()
    lines = []
    st = Stats(print_interval_s=2.0, log=lines.append, tsv=tsv, clock=lambda: t[0])
    lat = [0.001, 0.002, 0.003, 0.004]
    for x in lat:
        st.on_sent()
        st.on_answer(0, x)
    st.on_sent()
    st.on_answer(8, 0.0005)                          # answered, not a success
    st.on_sent()
    st.on_answer(NO_ANSWER, 30.0)                     # never answered
    st.on_sent()
    st.on_answer(SEND_FAILED, 0.0)                    # never left
    t[0] += 1.0
    st.maybe_print()
    assert not lines                                  # not yet an interval
    t[0] += 1.0
    st.maybe_print()
    a = np.array(lat) * 1e3
    p50, p99 = np.percentile(a, [50, 99])
    assert lines == [f"throughput={5 / 2.0:.2f} goodput=0.00 slo=0.00% min={a.min():.2f} max={a.max():.2f} mean={a.mean():.2f} "
                     f"p50={p50:.2f} p99={p99:.2f} success={100 * 4 / 5:.2f}%"]
    assert st.sent == 6 and st.answered == 5 and st.succeeded == 4
    s = st.summary(outstanding=0)
    assert "sent=6 answered=5 succeeded=4 unanswered=1" in s
    assert "client timeouts=1" in s and "not sent=1" in s
    assert "status 8 could not start in time: 1" in s
    st.record(t[0], 42, 3, 1, 1, 2.5, 0, 0.004, 3_000_000)
    row = tsv.getvalue().strip().split("\t")
    assert row[1:7] == ["42", "3", "1", "1", "2.5", "0"] and float(row[7]) == 4.0 and float(row[8]) == 3.0


def test_closed_loop_survives_a_full_send_queue(echo):
    """When sends fail (queue full: controller gone quiet), closed loops retry later instead
    of re-sending from inside the failed send (which would recurse without end)."""
    from clockwork.client.api import SEND_FAILED
    client = Client(echo.address, timeout_s=60, connect_timeout_s=10, log=lambda m: None)
    try:
        stats = Stats(print_interval_s=10, log=lambda m: None)
        engine = Engine(client, stats, send_inputs=True, duration_s=0.3, log=lambda m: None, zoo=[])
        get("spam").fn(engine, model="resnet50", copies=1, concurrency=300)
        echo.stop()                                  # nobody reads any more
        client._sock.setsockopt(__import__("zmq").SNDHWM, 1)
        client.ls = lambda *a, **k: []              # the controller is gone; start anyway
        engine.run(drain_s=0.05)
    finally:
        client.close()
    assert stats.by_status.get(SEND_FAILED, 0) > 0
    assert stats.sent + stats.by_status[SEND_FAILED] >= 300


def test_no_two_arrival_streams_share_a_seed(monkeypatch):
    """The example workload drives every zoo model with several seeded streams: each gets a
    seed of its own (it used one seed for every model's Poisson stream, and the bursty stream's
    burst pattern took seed + 1, another stream's seed)."""
    import random

    from clockwork.client import arrivals

    seeds = []

    class Recording(random.Random):
        def __init__(self, seed=None):
            seeds.append(seed)
            super().__init__(seed)
    monkeypatch.setattr(arrivals.random, "Random", Recording)

    class Engine:
        seed = 7
        zoo = ["resnet50", "resnet18", "mlp"]

        def load(self, name, copies):
            return [name]

        def open_loop(self, model, times, user):
            next(iter(times))                  # a stream's generator makes its Random on first use

        def closed_loop(self, *a, **k):
            pass

        def bursty_closed_loop(self, model, n, windows, user):
            next(iter(windows))
    get("example").fn(Engine())
    assert len(seeds) == 3 * 4 and len(set(seeds)) == len(seeds), seeds
