"""Small helpers shared by the benchmark scripts (run as scripts: tools/bench is sys.path[0])."""


def pct(xs, q):
    """Nearest-rank q-th percentile of xs (nan if empty)."""
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))] if xs else float("nan")
