"""A sharded controller (`cw controller --shards K`) and its client (clockwork.client.shards).

Real processes on 127.0.0.1 free ports: two emulated workers, a `cw controller --shards 2`
(two shard processes under one supervisor), the client library.

- requests for models on both shards from one client, batched and single, mixed with requests
  for ids no shard has: every request exactly one answer, with its own id and status;
- the shards' model ids never collide, each lies in its shard's block, and Ls shows them all;
- a `cw client` workload runs through the shards unchanged;
- one shard's death makes the command exit 1 and stop the other shard;
- a restart of the command: each shard's connection loads its models again on its shard;
- a shard refuses a LoadModel whose ids would leave its block;
- bad --shards values are one-line errors; the port and worker split.
"""
from __future__ import annotations

import os
import re
import signal
import time

import pytest
from click.testing import CliRunner

from clockwork.client.shards import ShardedClient, make_client
from clockwork.controller.command import controller_command
from clockwork.controller.shards import port_blocks, split_workers
from clockwork.limits import SHARD_ID_BITS
from clockwork.local import LocalCluster, run_command
from clockwork.status import Status
from clockwork.transport.sockets import free_port
from proc_tree import children, still_running

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    conf = tmp_path_factory.mktemp("shards") / "pages.toml"
    conf.write_text("[controller]\nls_page_size = 2\n")        # Ls answers in pages on each shard
    with LocalCluster(gpus=1, workers=2, shards=2, config_file=conf) as c:
        yield c


def test_requests_reach_their_models_shard_batched_and_single(cluster):
    batched = ShardedClient(cluster.address.split(","), log=lambda *_: None)
    single = ShardedClient(cluster.address.split(","), log=lambda *_: None, coalesce=False)
    try:
        a, n_a, _ = batched.load_model("resnet50", 2)        # shard 0
        b, n_b, _ = batched.load_model("resnet50", 2)        # shard 1
        assert (a >> SHARD_ID_BITS, b >> SHARD_ID_BITS) == (0, 1)
        batched.ls()
        ids = [a, a + 1, b, b + 1]
        unknown = [b + 1000, a + 1000]                       # in the shards' blocks, never loaded
        answers: dict[tuple[int, int], list] = {}            # (client, request id) -> [(status, model)]
        expected: dict[tuple[int, int], tuple[int, int]] = {}

        def send(who, client, model_id):
            def done(resp, data, latency_s):
                answers.setdefault((who, resp.request_id), []).append((resp.status, model_id))
            rid = client.infer_async(model_id, done)
            assert (who, rid) not in expected, "request ids repeat across shards"
            expected[(who, rid)] = (Status.SUCCESS if model_id in ids else Status.INVALID_REQUEST, model_id)

        for round_ in range(20):
            for i, mid in enumerate(ids * 2 + unknown):      # several between two polls: batches
                send(0, batched, mid)
                if i % 3 == round_ % 3:
                    send(1, single, mid)
            batched.poll(0)
            single.poll(0)
        end = time.monotonic() + 60
        while (batched.outstanding or single.outstanding) and time.monotonic() < end:
            batched.poll(0.05)
            single.poll(0.05)
        assert set(answers) == set(expected)
        assert all(len(v) == 1 for v in answers.values()), "a request was answered more than once"
        got = {key: (v[0][0], v[0][1]) for key, v in answers.items()}
        assert got == expected
        # a blocking call on each shard too
        assert batched.infer(b + 1).response.model_id == b + 1
        assert batched.infer(a).response.model_id == a
    finally:
        batched.close()
        single.close()


def test_shard_ids_never_collide_and_ls_shows_all(cluster):
    client = make_client(cluster.address, log=lambda *_: None)
    try:
        loads = [client.load_model("resnet50", copies) for copies in (3, 1, 2, 2)]
        blocks = [range(first, first + n) for first, n, _ in loads]
        for k, block in enumerate(blocks):
            assert block[0] >> SHARD_ID_BITS == block[-1] >> SHARD_ID_BITS == k % 2
        mine = [i for block in blocks for i in block]
        assert len(set(mine)) == len(mine), "two shards issued the same model id"
        listed = [m.model_id for m in client.ls()]
        assert set(mine) <= set(listed)
        assert {i >> SHARD_ID_BITS for i in listed} == {0, 1}
        assert listed == sorted(listed) and len(set(listed)) == len(listed)
    finally:
        client.close()


def test_a_workload_runs_through_the_shards(cluster):
    # `example` loads each model named once: the loads alternate between the two shards
    result = cluster.run_client("example", ["--duration", "3", "--models", "mlp,resnet18"], timeout=180)
    assert result.returncode == 0, result.stdout
    summary = [line for line in result.stdout.splitlines() if "Summary" in line][-1]
    sent = int(re.search(r"\bsent=(\d+)", summary).group(1))
    succeeded = int(re.search(r"\bsucceeded=(\d+)", summary).group(1))
    assert sent > 0 and succeeded == sent, summary
    served = "".join(cluster.output["controller"])
    for k, name in enumerate(("mlp", "resnet18")):
        assert re.search(rf"\[shard {k}\] Client --> Req\d+:LoadModel path={name} ", served), served[-2000:]


def shard_pids(cluster: LocalCluster) -> list[int]:
    """The pids of the two shard processes under the cluster's `cw controller --shards 2`,
    once both serve (an Ls answered by each)."""
    client = make_client(cluster.address, log=lambda *_: None)
    client.ls()
    client.close()
    shards = children(cluster.controller.pid)
    assert len(shards) == 2, shards
    return shards


def test_one_shards_death_stops_the_command():
    with LocalCluster(gpus=1, workers=2, shards=2) as c:
        shards = shard_pids(c)
        os.kill(shards[1], signal.SIGKILL)
        assert c.controller.wait(60) == 1
        assert not still_running(shards[:1], 30), "the other shard still runs"
        assert any("exited with status -9: stopping the other shards" in line
                   for line in c.output["controller"]), c.output["controller"][-5:]


def test_shards_end_when_the_command_is_killed():
    with LocalCluster(gpus=1, workers=2, shards=2) as c:
        shards = shard_pids(c)
        c.controller.kill()
        c.controller.wait()
        assert not still_running(shards, 30), "a shard outlived the command"


@pytest.mark.parametrize("args,words", [
    (["--shards", "0"], "'--shards': must be an integer 1..1048576, got 0"),
    (["--shards", "3"], "--shards 3 needs at least 3 workers (got 2)"),
    (["--shards", "2", "--http", "0", "--frontend-in-process"], "no controller loop of its own"),
])
def test_bad_shards_values_are_one_line_errors(args, words):
    r = CliRunner().invoke(controller_command, [*args, f"127.0.0.1:{free_port()},127.0.0.1:{free_port()}"])
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert r.exit_code == 2 and words in r.output
    errors = [line for line in r.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and "Traceback" not in r.output


@pytest.mark.parametrize("args,words", [
    (["--shards", "2", "--gpus", "3"], "--gpus 3 must be a multiple of --shards 2"),
    (["--shards", "2", "--http", "0", "--frontend-in-process"], "no controller loop of its own"),
])
def test_cw_run_bad_shards_values(args, words):
    r = CliRunner().invoke(run_command, args)
    assert r.exit_code == 2 and words in r.output, r.output


def test_ports_and_workers_split():
    # the default ports: telemetry 12347 would be shard 1's client port, so it moves past them
    assert port_blocks(3, 12346, 12347, 0) == [[12346, 12347, 12348], [12349, 12350, 12351], [0, 0, 0]]
    assert port_blocks(2, 5000, 6000, 5001) == [[5000, 5001], [6000, 6001], [5002, 5003]]
    with pytest.raises(ValueError, match="past 65535"):
        port_blocks(4, 65534, 0, 0)
    assert split_workers(list("abcde"), 2) == [["a", "b"], ["c", "d", "e"]]
    assert split_workers(list("abc"), 3) == [["a"], ["b"], ["c"]]


def test_a_restarted_sharded_controller_gets_each_shards_models_again():
    """A restart of the whole command (new epochs on every shard): each shard's connection
    loads its own models again on its own shard, and the caller's ids keep working."""
    with LocalCluster(gpus=1, workers=2, shards=2) as c:
        client = make_client(c.address, log=lambda *_: None, timeout_s=30)
        try:
            a, _, _ = client.load_model("resnet50", 1)
            b, _, _ = client.load_model("resnet18", 2)
            assert client.infer(a).response.status == client.infer(b + 1).response.status == Status.SUCCESS
            c.controller.terminate()
            assert c.controller.wait(30) == 0          # stopped, not failed: status 0
            c.start_controller()
            for mid, source in ((a, "resnet50"), (b + 1, "resnet18")):
                deadline = time.monotonic() + 60
                while True:                            # CONNECTION_LOST / STALE_EPOCH until re-registered
                    fut = client.infer_future(mid)
                    while not fut.done():
                        client.poll(0.05)
                    if fut.status == Status.SUCCESS or time.monotonic() > deadline:
                        break
                    client.poll(0.2)
                assert fut.status == Status.SUCCESS, fut.response
            shards = {m.model_id >> SHARD_ID_BITS: m.source for m in client.ls()}
            assert shards[0].endswith("resnet50") and shards[1].endswith("resnet18"), shards
        finally:
            client.close()


def test_a_shard_never_issues_ids_past_its_block():
    from clockwork.config import load_config
    from clockwork.controller.server import Controller
    from clockwork.transport import schema as s
    config = load_config()
    config["controller"].update(telemetry_port=0, metrics_port=0)
    c = Controller(config, [f"127.0.0.1:{free_port()}"], client_port=free_port(), out=lambda *a: None, shard=3)
    try:
        assert c.next_model_id == 3 << SHARD_ID_BITS and c.model_id_end == 4 << SHARD_ID_BITS
        answers = []
        c._reply = lambda msg, data=(), *, ident: answers.append(msg)
        c.phase = "running"
        c.next_model_id = c.model_id_end - 1                # one id of the block left
        c._on_load_model(b"client", s.LoadModelRequest(1, "resnet50", copies=2))
        assert [(a.status, "every model id of its block" in a.message) for a in answers] == [
            (Status.INVALID_REQUEST, True)]
        assert c.next_model_id == c.model_id_end - 1 and not c.load_jobs
    finally:
        c.close()
