"""Azure Functions 2019 trace: parsing good and malformed files, the synthetic generator
round trip, and the original's mapping of rows onto model instances."""
import numpy as np
import pytest
from click.testing import CliRunner

from clockwork.client import azure as az

pytestmark = pytest.mark.timeout(60)

HEADER = ",".join(list(az.KEY_COLUMNS) + [str(i) for i in range(1, 1441)])


def row(key: str, counts) -> str:
    return f"o{key},a{key},f{key},http," + ",".join(str(c) for c in counts)


def write(tmp_path, lines, name="invocations_per_function_md.anon.d01.csv"):
    p = tmp_path / name
    p.write_text("\n".join(lines) + "\n")
    return p


def test_reads_a_good_file(tmp_path):
    a = [0] * 1440
    a[0], a[1439] = 5, 7
    b = list(range(1440))
    p = write(tmp_path, [HEADER, row("1", a), row("2", b)])
    t = az.read_trace(p)
    assert len(t) == 2 and t.counts.shape == (2, 1440)
    assert t.keys[0] == ("o1", "a1", "f1", "http")
    assert t.counts[0, 0] == 5 and t.counts[0, 1439] == 7 and t.counts[1].sum() == sum(b)
    s = t.sorted_by_total()
    assert s.keys[0][2] == "f2"                     # busiest first, as the original


def test_windows_line_endings_are_fine(tmp_path):
    p = tmp_path / "t.csv"
    p.write_bytes((HEADER + "\r\n" + row("1", [1] * 1440) + "\r\n").encode())
    assert az.read_trace(p).counts.sum() == 1440


@pytest.mark.parametrize("bad,needle", [
    (row("x", [1] * 1439), "expected 1444 comma-separated fields (4 keys + 1440 minutes), got 1443"),
    (row("x", [1] * 1441), "got 1445"),
    (row("x", ["1"] * 100 + ["abc"] + ["1"] * 1339), "minute 101: 'abc' is not a whole number"),
    (row("x", [1] * 10 + [-3] + [1] * 1429), "minute 11: negative count -3"),
    (row("x", [1.5] * 1440), "minute 1: '1.5' is not a whole number"),
    ("justone", "got 1"),
    (row("x", [1] * 5 + [2 ** 32] + [1] * 1434), "a count exceeds 4294967295"),
], ids=["short", "long", "text", "negative", "float", "one-field", "too-big"])
def test_malformed_line_names_file_and_line(tmp_path, bad, needle):
    p = write(tmp_path, [HEADER, row("1", [0] * 1440), bad, row("3", [0] * 1440)])
    with pytest.raises(az.TraceError) as e:
        az.read_trace(p)
    assert f"{p}:3:" in str(e.value)
    assert needle in str(e.value)


def test_bad_header_empty_and_missing_files(tmp_path):
    p = write(tmp_path, ["a,b,c,d," + ",".join(map(str, range(1, 1441))), row("1", [0] * 1440)])
    with pytest.raises(az.TraceError, match=":1: header must start with HashOwner"):
        az.read_trace(p)
    p = write(tmp_path, [",".join(list(az.KEY_COLUMNS) + ["1", "2"])])
    with pytest.raises(az.TraceError, match="2 minute columns found"):
        az.read_trace(p)
    p = write(tmp_path, [HEADER])
    with pytest.raises(az.TraceError, match="no functions"):
        az.read_trace(p)
    with pytest.raises(az.TraceError, match="cannot read"):
        az.read_trace(tmp_path / "nope.csv")


def test_trace_path_from_env_dir_or_file(tmp_path, monkeypatch):
    monkeypatch.delenv("AZURE_TRACE_DIR", raising=False)
    with pytest.raises(az.TraceError, match="AZURE_TRACE_DIR"):
        az.trace_path(1)
    p = write(tmp_path, [HEADER], name="invocations_per_function_md.anon.d03.csv")
    monkeypatch.setenv("AZURE_TRACE_DIR", str(tmp_path))
    assert az.trace_path(3) == p
    assert az.trace_path(1, p) == p                 # an explicit file wins
    with pytest.raises(az.TraceError, match="no trace for day 2"):
        az.trace_path(2)
    with pytest.raises(az.TraceError, match="1..14"):
        az.trace_path(15)
    q = write(tmp_path, [HEADER], name="invocations_per_function_md.svls.anon.d04.csv")
    assert az.trace_path(4) == q                    # the original's local file name too


def test_synthetic_trace_round_trip(tmp_path):
    p = az.write_synthetic_trace(tmp_path / "a", functions=300, seed=4, mean_rate_per_min=30)
    assert p.name == "invocations_per_function_md.anon.d01.csv"
    assert p.read_text().splitlines()[0] == HEADER  # exactly the Azure header
    t = az.read_trace(p)
    assert t.counts.shape == (300, 1440)
    assert len({k[2] for k in t.keys}) == 300       # distinct function hashes
    assert all(len(k[0]) == 64 and len(k[1]) == 64 for k in t.keys)
    assert {k[3] for k in t.keys} <= set(az.TRIGGERS) and "timer" in {k[3] for k in t.keys}
    # same seed, same file; another seed, another trace
    p2 = az.write_synthetic_trace(tmp_path / "b", functions=300, seed=4, mean_rate_per_min=30)
    assert p.read_bytes() == p2.read_bytes()
    p3 = az.write_synthetic_trace(tmp_path / "c", functions=300, seed=5, mean_rate_per_min=30)
    assert p.read_bytes() != p3.read_bytes()


def test_synthetic_trace_is_heavy_tailed_and_diurnal(tmp_path):
    t = az.read_trace(az.write_synthetic_trace(tmp_path, functions=2000, seed=1, mean_rate_per_min=20,
                                               diurnal_amplitude=0.5))
    totals = np.sort(t.counts.sum(axis=1))[::-1]
    # heavy tail: the busiest 1% of functions carry far more than 1% of the invocations
    assert totals[:20].sum() > 0.15 * totals.sum()
    non_timer = [i for i, k in enumerate(t.keys) if k[3] != "timer"]
    per_min = t.counts[non_timer].sum(axis=0).astype(float)
    afternoon = per_min[12 * 60:16 * 60].mean()     # peak at 14:00
    night = per_min[0:4 * 60].mean()                 # trough at 02:00
    assert afternoon > 1.5 * night


def test_synthetic_trace_refuses_nonsense(tmp_path):
    for kw in ({"functions": 0}, {"diurnal_amplitude": 1.0}, {"tail": 1.0}):
        with pytest.raises(ValueError):
            az.write_synthetic_trace(tmp_path, **kw)


def test_mapping_as_the_original():
    assert az.total_instances(4, True) == 4026 and az.total_instances(1, False) == 200
    with pytest.raises(ValueError):
        az.total_instances(5, True)
    split = az.copies_per_model(4026, ["mlp", "resnet18", "resnet50"])
    assert [n for _, n in split] == [1342, 1342, 1342]
    split = az.copies_per_model(10, ["a", "b", "c"])
    assert sum(n for _, n in split) == 10 and max(n for _, n in split) - min(n for _, n in split) <= 1
    assert az.scale_factor(1.0, 6) == pytest.approx(0.75)
    idx = az.row_to_model(10, 4)
    assert list(idx) == sorted(idx) and set(idx) == {0, 1, 2, 3}


def test_per_model_counts_keep_every_invocation(tmp_path):
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 50, size=(37, 1440))
    p = write(tmp_path, [HEADER] + [row(str(i), c) for i, c in enumerate(counts)])
    t = az.read_trace(p)
    per = az.per_model_counts(t, 5)
    assert per.shape == (5, 1440)
    assert np.array_equal(per.sum(axis=0), counts.sum(axis=0))
    # busiest rows land on model 0
    busiest = np.argmax(counts.sum(axis=1))
    assert per[0].sum() >= counts[busiest].sum()


def test_cw_trace_synth_and_info(tmp_path):
    r = CliRunner().invoke(az.trace_command, ["synth", str(tmp_path), "--functions", "40", "--days", "2"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "invocations_per_function_md.anon.d02.csv").exists()
    r = CliRunner().invoke(az.trace_command, ["info", str(tmp_path), "--day", "2"])
    assert r.exit_code == 0 and "40 functions" in r.output
    bad = write(tmp_path, [HEADER, "x,y"], name="bad.csv")
    r = CliRunner().invoke(az.trace_command, ["info", str(bad)])
    assert r.exit_code != 0 and f"{bad}:2:" in r.output and "Traceback" not in r.output
