"""transport.sockets.wait: after a sleep it checks only the sockets whose ZMQ_FD woke it
(issue 13: each check is a system call and a pyzmq enum). What must still hold:
- a message already queued when the wait starts is found at once, even when its socket's
  descriptor was consumed by an earlier check (ZMQ_FD is edge-triggered);
- a message arriving on any socket during the sleep wakes it, and only sockets with a message
  are returned;
- a wait that times out returns what is ready then, and nothing when nothing is.
Waits that should return at once use timeout None, so a wait that slept instead would hang
and fail by the test's timeout, not by a timing threshold.
"""
import threading

import pytest
import zmq

from clockwork.transport import schema as s
from clockwork.transport.sockets import dealer, free_port, recv, router, send, wait

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def pairs():
    """Three (router, dealer) pairs on loopback."""
    ctx = zmq.Context()
    made = []
    for _ in range(3):
        port = free_port()
        made.append((router(ctx, "127.0.0.1", port), dealer(ctx, "127.0.0.1", port)))
    yield made
    for srv, cli in made:
        srv.close(0)
        cli.close(0)
    ctx.term()


def test_a_message_queued_before_the_wait_is_found_without_sleeping(pairs):
    (a, a_cli), (b, _), (c, _) = pairs
    send(a_cli, s.LsRequest(1))
    send(a_cli, s.LsRequest(2))
    assert wait([a], None) == [a]
    a.recv_multipart()                                   # the first
    while not a.get(zmq.EVENTS) & zmq.POLLIN:            # the second may still be on its way
        assert wait([a], None) == [a]
    # the first read consumed the descriptor's signal; the second message waits in the pipe
    assert wait([b, c, a], None) == [a]
    assert recv(a, s.REQUEST_DECODER, routed=True)[1] == s.LsRequest(2)
    assert wait([b, c, a], 0.0) == []


@pytest.mark.parametrize("target", [0, 1, 2])
def test_a_message_during_the_sleep_wakes_it_for_that_socket_only(pairs, target):
    for _ in range(3):             # the same sockets again: descriptors are remembered
        socks = [srv for srv, _ in pairs]
        sender = threading.Thread(target=send, args=(pairs[target][1], s.LsRequest(3)))
        sender.start()
        assert wait(socks, None) == [socks[target]]
        sender.join()
        assert recv(socks[target], s.REQUEST_DECODER, routed=True)[1] == s.LsRequest(3)
        assert wait(socks, 0.0) == []


def test_a_wait_that_times_out_returns_what_is_ready_then(pairs):
    (a, a_cli), (b, _), _ = pairs
    assert wait([a, b], 0.01) == []
    send(a_cli, s.LsRequest(4))
    assert wait([b], 0.01) == []
    assert wait([a, b], 10) == [a]
