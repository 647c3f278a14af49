"""Model directory format and the emulated zoo."""
import json

import pytest

from clockwork.config import ConfigError, load_config
from clockwork.model.format import (ModelFormatError, layout_pages, load_spec, resolve_model_path,
                                    write_measurements, write_metadata)
from clockwork.model.zoo import load_profile, write_emulated_zoo


def test_emulated_zoo_matches_profile(tmp_path):
    prof = load_profile("h200")
    dirs = write_emulated_zoo(tmp_path, log=lambda *_: None)
    assert sorted(d.name for d in dirs) == sorted(prof["models"])
    spec = load_spec(tmp_path / "resnet50")
    entry = prof["models"]["resnet50"]
    assert spec.input_size == 3 * 224 * 224 * 4
    assert spec.output_size == 1000 * 4
    assert spec.exec_ns == {int(b): v for b, v in entry["exec_ns"].items()}
    assert spec.num_pages(16 << 20) == -(-entry["weights_size"] // (16 << 20))
    assert spec.has_measurements
    assert spec.padded_batch(3) == 4 and spec.padded_batch(17) is None


def test_layout_never_straddles_a_page():
    sizes = [7, 10, 3, 10, 1, 16]
    placements, used = layout_pages(sizes, page_size=16, align=4)
    for (page, off), n in zip(placements, sizes):
        assert off % 4 == 0 and off + n <= 16
    assert len(used) == len({p for p, _ in placements})
    with pytest.raises(ModelFormatError):
        layout_pages([17], page_size=16)


def test_bad_model_dirs_get_clear_errors(tmp_path):
    with pytest.raises(ModelFormatError, match="not a model directory"):
        load_spec(tmp_path / "missing")
    (tmp_path / "m").mkdir()
    with pytest.raises(ModelFormatError, match="model.json not found"):
        load_spec(tmp_path / "m")
    (tmp_path / "m" / "model.json").write_text("{nope")
    with pytest.raises(ModelFormatError, match="not valid JSON"):
        load_spec(tmp_path / "m")
    write_metadata(tmp_path / "m", {"input": {"shape": [1], "dtype": "float32"}})
    with pytest.raises(ModelFormatError, match="missing field 'output'"):
        load_spec(tmp_path / "m")


@pytest.mark.parametrize("change, message", [
    (lambda m: m["weights"].update(size=1e18), r"weights.size must be an integer in 0\.\.\d+, got 1e\+18"),
    (lambda m: m["weights"].update(size=-1), r"weights.size must be an integer"),
    (lambda m: m["input"].update(shape=[10 ** 5] * 3), r"input.shape \[100000, 100000, 100000\] has more than"),
    (lambda m: m["input"].update(shape=["x", 3]), r"input.shape\[0\] must be an integer in 1\.\.\d+, got 'x'"),
    (lambda m: m["input"].update(shape=[0]), r"input.shape\[0\] must be an integer"),
    (lambda m: m["input"].update(shape=[True]), r"input.shape\[0\] must be an integer"),
    (lambda m: m["output"].update(dtype="float33"), r"output.dtype 'float33' is not a numpy dtype"),
    (lambda m: m.update(batch_sizes=[1, "2"]), r"batch_sizes\[1\] must be an integer"),
    (lambda m: m.update(batch_sizes=[]), r"batch_sizes must be a non-empty list"),
    (lambda m: m.update(batch_sizes=[1, 1]), r"distinct"),
    (lambda m: m.update(input=[3]), r"input must be an object"),
    (lambda m: m["weights"].update(page_size=0), r"weights.page_size must be an integer"),
    (lambda m: m.update(dtype="half-ish"), r"dtype 'half-ish' is not a numpy dtype"),
])
def test_impossible_values_are_one_line_errors(tmp_path, change, message):
    """Issue 9: model.json values a model cannot have (a 1e18-byte model, 10^15-element input,
    a shape of strings) used to be accepted or fail deep inside numpy."""
    write_emulated_zoo(tmp_path, models=["mlp"], log=lambda *_: None)
    path = tmp_path / "mlp" / "model.json"
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))
    with pytest.raises(ModelFormatError, match=message) as e:
        load_spec(tmp_path / "mlp")
    assert "\n" not in str(e.value) and str(path) in str(e.value)


@pytest.mark.parametrize("change, message", [
    (lambda m: m["exec_ns"].update({"1": "fast"}), r"exec_ns\[1\] must be an integer"),
    (lambda m: m["exec_ns"].update({"one": 5}), r"exec_ns keys must be batch sizes"),
    (lambda m: m.update(weights_load_ns=-3), r"weights_load_ns must be an integer"),
])
def test_impossible_measurements_are_one_line_errors(tmp_path, change, message):
    write_emulated_zoo(tmp_path, models=["mlp"], log=lambda *_: None)
    path = tmp_path / "mlp" / "measurements.json"
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))
    with pytest.raises(ModelFormatError, match=message):
        load_spec(tmp_path / "mlp")


def test_measurements_round_trip(tmp_path):
    write_emulated_zoo(tmp_path, models=["mlp"], log=lambda *_: None)
    write_measurements(tmp_path / "mlp", "dev", 5, {1: 10, 2: 20, 4: 30, 8: 40, 16: 50}, {1: 11})
    spec = load_spec(tmp_path / "mlp")
    assert (spec.device, spec.weights_load_ns, spec.exec_ns[16], spec.exec_p99_ns) == ("dev", 5, 50, {1: 11})
    assert json.loads((tmp_path / "mlp" / "measurements.json").read_text())["exec_ns"]["2"] == 20


@pytest.mark.parametrize("bad", ["../etc", "/etc/passwd", "a/../../b"])
def test_model_paths_are_confined(tmp_path, bad):
    with pytest.raises(ModelFormatError, match="outside"):
        resolve_model_path(tmp_path, bad)
    assert resolve_model_path(tmp_path, "resnet50") == (tmp_path / "resnet50").resolve()


def test_symlink_escape_is_refused(tmp_path):
    (tmp_path / "zoo").mkdir()
    (tmp_path / "zoo" / "evil").symlink_to(tmp_path)
    with pytest.raises(ModelFormatError):
        resolve_model_path(tmp_path / "zoo", "evil")


def test_config_override_and_unknown_keys(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("[controller]\ndefault_slo_ms = 25.0\n")
    cfg = load_config(f)
    assert cfg["controller"]["default_slo_ms"] == 25.0
    assert cfg["worker"]["page_size"] == load_config()["worker"]["page_size"]
    f.write_text("[controller]\nslo = 1\n")
    with pytest.raises(ConfigError, match="unknown key 'slo'"):
        load_config(f)


def test_pad_table_is_the_smallest_compiled_size_at_least_n():
    from clockwork.model.format import pad_table
    for sizes in ([1], [1, 2, 4, 8, 16], [16, 1, 4], [3, 5]):
        pad = pad_table(sizes)
        assert len(pad) == max(sizes) + 1
        for n in range(1, max(sizes) + 1):
            assert pad[n] == min(b for b in sizes if b >= n)
