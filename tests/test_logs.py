"""A controller (or client) run never destroys a previous run's logs, and rows reach the file
while it runs (issue 9, item 8)."""
from __future__ import annotations

import os
import time

from clockwork.controller.logs import open_logs
from clockwork.runfiles import keep_previous, open_new
from clockwork.telemetry.plot import find_logs

NAMES = ("clockwork_request_log.tsv", "clockwork_action_log.tsv")


def _run(directory, first_row):
    req, act = open_logs(directory, *NAMES)
    req.add((first_row, 1, 0))
    act.add((first_row, 2, "Infer"))
    return req, act


def test_a_second_run_keeps_the_first_runs_rows(tmp_path):
    req, act = _run(tmp_path, 111)
    req.close()
    act.close()
    os.utime(tmp_path / NAMES[0], (time.time() - 3600, time.time() - 3600))
    req2, act2 = _run(tmp_path, 222)
    req2.close()
    act2.close()
    assert req2.kept is not None and req2.kept.parent == tmp_path
    kept = req2.kept.read_text().splitlines()
    assert kept[0].startswith("t\trequest_id") and kept[1] == "111\t1\t0"
    now = (tmp_path / NAMES[0]).read_text().splitlines()
    assert now[1:] == ["222\t1\t0"]
    assert act2.kept is not None and "111\t2\tInfer" in act2.kept.read_text()
    assert find_logs(tmp_path, None, None) == (tmp_path / NAMES[0], tmp_path / NAMES[1])   # cw plot: latest


def test_runs_in_the_same_second_never_overwrite_each_other(tmp_path):
    path = tmp_path / "r.tsv"
    kept = set()
    for i in range(4):
        f, k = open_new(path)
        f.write(f"run {i}\n")
        f.close()
        if k:
            kept.add(k)
    assert len(kept) == 3
    assert sorted(p.read_text() for p in kept) == ["run 0\n", "run 1\n", "run 2\n"]
    assert path.read_text() == "run 3\n"


def test_an_empty_file_is_not_kept(tmp_path):
    path = tmp_path / "r.tsv"
    path.write_text("")
    assert keep_previous(path) is None and path.exists()


def test_rows_are_on_disk_after_each_flush_while_open(tmp_path):
    req, act = _run(tmp_path, 5)
    req.flush()
    assert (tmp_path / NAMES[0]).read_text().splitlines()[1] == "5\t1\t0"   # tail -f sees it
    req.close()
    act.close()
