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


def _wait_for_lines(path, n, timeout_s=30.0):
    """The file's lines once it has at least n (the writer child appends asynchronously)."""
    deadline = time.monotonic() + timeout_s
    while True:
        lines = path.read_text().splitlines()
        if len(lines) >= n or time.monotonic() > deadline:
            return lines
        time.sleep(0.01)


def test_a_writer_process_writes_the_same_text(tmp_path):
    rows = [(1, 2, "Infer", 0.5, -3, 10 ** 15), (4, 5, "LoadWeights", 0.0, 0, 7)]
    for name, writer in (("in.tsv", False), ("child.tsv", True)):
        from clockwork.controller.logs import TsvLog
        log = TsvLog(tmp_path / name, ("a", "b", "c", "d", "e", "f"), writer_process=writer)
        assert (log._writer is not None) == writer
        for r in rows:
            log.add(r)
        log.flush()
        if writer:          # on disk while open, once the child got to it
            assert _wait_for_lines(tmp_path / name, 3)[1:] == ["1\t2\tInfer\t0.5\t-3\t1000000000000000",
                                                              "4\t5\tLoadWeights\t0.0\t0\t7"]
        log.add((9, 9, "x", 1.25, 0, 0))
        log.close()
    assert (tmp_path / "in.tsv").read_text() == (tmp_path / "child.tsv").read_text()


def test_rows_survive_the_writer_process_dying(tmp_path):
    from clockwork.controller.logs import TsvLog
    log = TsvLog(tmp_path / "r.tsv", ("a", "b"), writer_process=True)
    log.add((1, 1))
    log.flush()
    assert len(_wait_for_lines(tmp_path / "r.tsv", 2)) == 2
    log._writer.kill()
    log._writer.wait()
    for i in range(2, 5):
        log.add((i, i))
        log.flush()                         # the first of these finds the child gone
    log.close()
    assert (tmp_path / "r.tsv").read_text().splitlines() == ["a\tb", "1\t1", "2\t2", "3\t3", "4\t4"]
