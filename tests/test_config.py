"""The typed config schema and the value specs shared with flags and workload arguments
(issue 9, item 7): a value of the wrong type or range is one clear line naming the key."""
from __future__ import annotations

import math

import pytest

from clockwork import config
from clockwork.config import SCHEMA, ConfigError, load_config
from clockwork.values import PORT, POSITIVE, Spec


def _load(tmp_path, text: str) -> dict:
    p = tmp_path / "c.toml"
    p.write_text(text)
    return load_config(p)


@pytest.mark.parametrize("section,line,words", [
    ("worker", 'port = "abc"', "[worker] port must be an integer 1..65535, got 'abc'"),
    ("worker", "port = 70000", "[worker] port must be an integer 1..65535, got 70000"),
    ("worker", "port = -5", "[worker] port must be an integer 1..65535"),
    ("worker", "page_size = 0", "[worker] page_size must be an integer >= 1, got 0"),
    ("worker", 'page_size = "x"', "[worker] page_size must be an integer >= 1, got 'x'"),
    ("worker", 'heartbeat_interval_ms = "fast"', "[worker] heartbeat_interval_ms must be a number > 0"),
    ("controller", "metrics_port = 99999", "[controller] metrics_port must be an integer 0..65535"),
    ("controller", "default_slo_ms = nan", "[controller] default_slo_ms must be a number > 0 (finite)"),
    ("controller", "max_batch_size = true", "[controller] max_batch_size must be an integer >= 1, got True"),
    ("controller", "estimate_percentile = 101", "[controller] estimate_percentile must be a number > 0"),
    ("security", 'enabled = "yes"', "[security] enabled must be true or false"),
    ("client", "connect_timeout_s = -1", "[client] connect_timeout_s must be a number > 0"),
])
def test_bad_values_are_refused_naming_the_key(tmp_path, section, line, words):
    with pytest.raises(ConfigError) as e:
        _load(tmp_path, f"[{section}]\n{line}\n")
    assert words in str(e.value)
    assert str(tmp_path / "c.toml") in str(e.value)


def test_good_values_load_and_integers_stand_for_floats(tmp_path):
    cfg = _load(tmp_path, "[controller]\ndefault_slo_ms = 50\nmetrics_port = 0\n[worker]\nport = 9000\n")
    assert cfg["controller"]["default_slo_ms"] == 50.0 and type(cfg["controller"]["default_slo_ms"]) is float
    assert cfg["worker"]["port"] == 9000 and cfg["controller"]["metrics_port"] == 0


def test_every_default_key_has_a_spec_and_the_defaults_pass_it():
    defaults = config._read(config.DEFAULT_CONFIG)
    for section, table in defaults.items():
        for key, value in table.items():
            assert key in SCHEMA.get(section, {}), f"[{section}] {key} has no spec in config.SCHEMA"
            SCHEMA[section][key].check(value)


def test_a_directory_as_config_file_is_said_so(tmp_path, monkeypatch):
    monkeypatch.setenv("CLOCKWORK_CONFIG_FILE", str(tmp_path))
    with pytest.raises(ConfigError, match="is a directory, not a TOML file"):
        load_config()


def test_specs_refuse_non_finite_and_out_of_range_text():
    for bad in ("nan", "inf", "-inf", "0", "-1", "x", ""):
        with pytest.raises(ValueError):
            POSITIVE.parse(bad)
    assert POSITIVE.parse("0.5") == 0.5
    for bad in ("0", "65536", "-5", "1.5", "abc"):
        with pytest.raises(ValueError, match="must be an integer 1..65535"):
            PORT.parse(bad)
    assert PORT.parse("65535") == 65535
    half_open = Spec(float, 0, 1, hi_open=True)
    assert half_open.parse("0") == 0.0
    with pytest.raises(ValueError, match=">= 0 and < 1"):
        half_open.parse("1")
    assert not math.isnan(Spec(float).parse("1e300"))


def test_a_key_missing_from_the_schema_is_still_checked_for_its_defaults_type(tmp_path, monkeypatch):
    monkeypatch.delitem(SCHEMA["worker"], "print_interval_s")
    with pytest.raises(ConfigError, match=r"\[worker\] print_interval_s must be an integer, got 'soon'"):
        _load(tmp_path, '[worker]\nprint_interval_s = "soon"\n')
