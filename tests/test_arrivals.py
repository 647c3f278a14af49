"""Arrival processes: rates, shapes and determinism (statistical checks with fixed seeds and
tolerances of several standard deviations, so they fail only if the process is wrong)."""
import itertools
import math

import numpy as np
import pytest

from clockwork.client import arrivals as A

pytestmark = pytest.mark.timeout(60)


def take_until(gen, horizon):
    return np.fromiter(itertools.takewhile(lambda t: t < horizon, gen), dtype=float)


def assert_poisson_count(n, expected, sigmas=5):
    assert abs(n - expected) <= sigmas * math.sqrt(expected), (n, expected)


def test_fixed_rate_is_exact_and_starts_one_gap_in():
    t = take_until(A.fixed_rate(4.0), 1000.0)
    assert t[0] == pytest.approx(0.25)
    assert len(t) == 3999
    assert np.allclose(np.diff(t), 0.25)


def test_zero_rate_yields_nothing_and_bad_rates_are_refused():
    assert list(A.fixed_rate(0)) == []
    assert list(A.poisson(0, seed=1)) == []
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            next(A.poisson(bad, seed=1))


@pytest.mark.parametrize("rate,seed", [(50.0, 1), (1000.0, 7), (0.5, 3)])
def test_poisson_rate_and_exponential_gaps(rate, seed):
    horizon = 40_000 / rate
    t = take_until(A.poisson(rate, seed), horizon)
    assert_poisson_count(len(t), rate * horizon)
    gaps = np.diff(t)
    assert np.all(gaps > 0)
    # exponential: coefficient of variation 1, P(gap > mean) = 1/e
    assert np.std(gaps) / np.mean(gaps) == pytest.approx(1.0, abs=0.03)
    assert np.mean(gaps > 1 / rate) == pytest.approx(math.exp(-1), abs=0.015)


def test_seeds_repeat_and_differ():
    a = take_until(A.poisson(100, seed=5), 10)
    b = take_until(A.poisson(100, seed=5), 10)
    c = take_until(A.poisson(100, seed=6), 10)
    assert np.array_equal(a, b)
    assert not np.array_equal(a[:50], c[:50])


def test_piecewise_poisson_rates_per_segment():
    pattern = [(10.0, 100.0), (10.0, 0.0), (10.0, 300.0)]
    t = take_until(A.piecewise_poisson(itertools.cycle(pattern), seed=11), 30.0 * 40)
    phase = np.floor((t % 30.0) / 10.0).astype(int)
    counts = np.bincount(phase, minlength=3)
    assert counts[1] == 0                          # nothing ever arrives in a zero-rate segment
    assert_poisson_count(counts[0], 100 * 10 * 40)
    assert_poisson_count(counts[2], 300 * 10 * 40)


def test_piecewise_poisson_ends_with_its_segments_and_checks_them():
    t = list(A.piecewise_poisson([(1.0, 1000.0)], seed=2))
    assert t and max(t) < 1.0
    with pytest.raises(ValueError):
        list(A.piecewise_poisson([(-1.0, 5.0)], seed=2))


def test_bursty_poisson_long_run_rate_and_silences():
    rate, burst, idle = 100.0, 1.0, 2.0
    horizon = 4000.0
    t = take_until(A.bursty_poisson(rate, burst, idle, seed=3), horizon)
    expected = rate * horizon * burst / (burst + idle)
    # The burst lengths are random too: about horizon/3 cycles, so a relative spread of a
    # few percent; 15% is far outside it.
    assert abs(len(t) - expected) < 0.15 * expected
    gaps = np.diff(t)
    # idle periods (mean 2 s) show as gaps no Poisson-100 stream would have (P ~ e^-50)
    long_gaps = gaps[gaps > 0.5]
    assert len(long_gaps) > 0.5 * horizon / (burst + idle)
    with pytest.raises(ValueError):
        next(A.bursty_poisson(10, 0, 1, seed=1))


def test_trace_replay_counts_are_per_minute_whatever_the_interval():
    counts = [600, 0, 6000, 60]                    # requests per minute
    interval = 5.0
    cycles = 60
    t = take_until(A.trace_replay(counts, seed=9, scale=0.5, interval_s=interval),
                   interval * len(counts) * cycles)
    idx = (t // interval).astype(int) % len(counts)
    got = np.bincount(idx, minlength=4)
    assert got[1] == 0
    for i in (0, 2, 3):
        assert_poisson_count(got[i], counts[i] * 0.5 / 60 * interval * cycles)


def test_trace_replay_without_cycle_ends_and_random_start_is_seeded():
    t = list(A.trace_replay([60, 60], seed=1, interval_s=10.0, cycle=False))
    assert t and max(t) < 20.0
    a = take_until(A.trace_replay([6000, 0, 0, 0], seed=4, interval_s=1.0, start_interval=None), 50)
    b = take_until(A.trace_replay([6000, 0, 0, 0], seed=4, interval_s=1.0, start_interval=None), 50)
    assert np.array_equal(a, b)
    with pytest.raises(ValueError):
        next(A.trace_replay([], seed=1))


def test_random_start_segments_begin_mid_interval():
    import random
    segs = list(itertools.islice(A.random_start_segments([1, 2, 3, 4], 60.0, 10.0, random.Random(0)), 5))
    first_d, first_r = segs[0]
    assert 0 <= first_d <= 10.0
    rates = [r for _, r in segs]
    start = rates[0]
    assert start in (1, 2, 3, 4)                   # scale 60 / 60 s = counts as rates
    # then the trace continues in order, wrapping around
    i = [1, 2, 3, 4].index(start)
    assert rates[1:] == [[1, 2, 3, 4][(i + k) % 4] for k in range(1, 5)]


def test_multiply_and_stepped_rates():
    a = [(10.0, 2.0), (10.0, 3.0)]
    b = A.stepped_rates([1.0, 10.0, 100.0], 7.0)
    assert list(A.multiply(a, b)) == [(7.0, 2.0), (3.0, 20.0), (4.0, 30.0), (6.0, 300.0)]


def test_geometric_steps():
    assert A.geometric_steps(2, 32, 2, "mul") == [2, 4, 8, 16, 32]
    assert A.geometric_steps(10, 100, 10, "add") == [10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
    with pytest.raises(ValueError):
        A.geometric_steps(1, 10, 1, "mul")         # would never end
    with pytest.raises(ValueError):
        A.geometric_steps(1, 10, 1, "pow")


def test_closed_loop_spec_and_burst_windows():
    with pytest.raises(ValueError):
        A.ClosedLoop(0)
    assert A.ClosedLoop(3).initial_times(seed=1) == [0.0, 0.0, 0.0]
    jittered = A.ClosedLoop(50, jitter_s=10).initial_times(seed=1)
    assert jittered == sorted(jittered) and 0 <= jittered[0] and jittered[-1] <= 10
    assert len(set(jittered)) == 50
    w = list(itertools.islice(A.burst_windows(2.0, 3.0, seed=5), 4000))
    begins = np.array([b for b, _ in w])
    ends = np.array([e for _, e in w])
    assert np.all(ends > begins) and np.all(begins[1:] >= ends[:-1])
    # mean burst length 2 s; sd of the mean of ~4000 exponentials is ~0.03 s
    assert np.mean(ends[1:] - begins[1:]) == pytest.approx(2.0, abs=0.15)
    assert np.mean(begins[1:] - ends[:-1]) == pytest.approx(3.0, abs=0.2)
