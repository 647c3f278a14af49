#!/usr/bin/env python3
"""Run `python -m MODULE ARGS...` (the controller or the worker) with timestamps recorded at each hop of an
Infer, for tools/bench/overhead_hops.py. Nothing in clockwork changes: this wraps a few of the
controller's methods from outside before the module runs, and writes what it recorded, as
msgpack, to $HOP_TRACE_OUT when the process exits. $HOP_TRACE_CPU, if set, pins the process
(its threads, ZeroMQ's I/O thread included) to those cores ("2" or "2+3").

Recorded (time.monotonic_ns, the clock every process on one host shares; workers' timestamps
are taken raw from their results, before the controller's clock conversion):
  wake     the loop's wait() returned with a socket ready (last one kept, stamped on the events)
  req      an InferRequest read (client request id)
  act      an Infer made by the scheduler (action id, earliest, latest, controller time)
  sent     the actions of a pass sent (send_actions returned)
  res      an InferResult read (action id, its raw worker-clock stamps)
  ans      an answer made (respond)
  flush    the answers of a pass sent (the loop's end-of-pass sends returned, answers among them)
"""
from __future__ import annotations

import atexit
import os
import runpy
import sys
import time

now = time.monotonic_ns
events: list[tuple] = []
last_wake = [0]


def install_worker() -> None:
    """The worker: when its wait returns (a message or a timer), and when results leave."""
    from clockwork.worker import server

    S = server.WorkerServer
    real_wait, real_flush = S._wait, S.flush_results

    def _wait(self, timeout_s, *a):
        r = real_wait(self, timeout_s, *a)
        events.append(("wwake", 0, now(), int(timeout_s * 1e9)))
        return r

    def flush_results(self):
        events.append(("wflush0", 0, now(), 0))
        return real_flush(self)
    S._wait, S.flush_results = _wait, flush_results


def install() -> None:
    from clockwork.controller import actions, admission, requests, server, worker_links
    from clockwork.transport import schema as s

    real_wait = server.wait

    def wait(*a, **kw):
        ready = real_wait(*a, **kw)
        if ready:
            last_wake[0] = now()
        return ready
    server.wait = wait

    real_client_recv = requests.recv     # (client messages are read in requests.py, compiled in the opt-in build)

    def client_recv(sock, decoder, routed, flags=0):
        got = real_client_recv(sock, decoder, routed, flags)
        t, msg = now(), got[1]
        for m in (msg.requests if type(msg) is s.InferRequestBatch else [msg]):
            if type(m) is s.InferRequest:
                events.append(("req", m.request_id, t, last_wake[0]))
        return got
    requests.recv = client_recv

    A = admission.Admission
    real_respond = A.respond

    def respond(self, req, status, *a, **kw):
        events.append(("ans", req.client_request_id, now(), status))
        return real_respond(self, req, status, *a, **kw)
    A.respond = respond

    C = server.Controller
    real_send_outgoing = C._send_outgoing       # (Replies is compiled in the opt-in build: not wrapped)

    def _send_outgoing(self):
        had = bool(self.replies.waiting)
        r = real_send_outgoing(self)
        if had:
            events.append(("flush", 0, now(), 0))
        return r
    C._send_outgoing = _send_outgoing

    for name in ("_tick", "_send_outgoing", "_handle_ready"):
        def wrap(real, tag):
            def f(self, *a):
                events.append((tag + "0", 0, now(), 0))
                r = real(self, *a)
                events.append((tag + "1", 0, now(), 0))
                return r
            return f
        setattr(C, name, wrap(getattr(C, name), name))

    W = worker_links.WorkerLinks
    real_send_action = W.send_action

    def send_action(self, worker_id, action, *a, **kw):
        if type(action) is s.Infer:
            events.append(("act", action.action_id, now(), last_wake[0], action.earliest, action.latest))
        return real_send_action(self, worker_id, action, *a, **kw)
    W.send_action = send_action

    real_send_actions = W.send_actions

    def send_actions(self):
        real_send_actions(self)
        events.append(("sent", 0, now(), 0))
    W.send_actions = send_actions

    real_recv = actions.recv     # (the results are read in actions.py, compiled in the opt-in build)

    def recv(sock, decoder, routed, flags=0):
        got = real_recv(sock, decoder, routed, flags)
        t, msg = now(), got[1]
        for m in ([m for m, _ in s.unbatch(msg, got[2])] if type(msg) is s.ResultBatch else [msg]):
            if type(m) is s.InferResult:
                events.append(("res", m.action_id, t, last_wake[0], m.received, m.copy_input_begin,
                               m.exec_begin, m.exec_end, m.copy_output_end, m.sent))
        return got
    actions.recv = recv


def dump() -> None:
    import msgspec
    with open(os.environ["HOP_TRACE_OUT"], "wb") as f:
        f.write(msgspec.msgpack.encode(events))


if __name__ == "__main__":
    module = sys.argv[1]
    sys.argv = [module] + sys.argv[2:]
    cpu = os.environ.get("HOP_TRACE_CPU")
    if cpu:     # pinned before ZeroMQ starts its I/O thread, which inherits it
        os.sched_setaffinity(0, {int(c) for c in cpu.split("+")})
    install_worker() if "worker" in module else install()
    atexit.register(dump)
    runpy.run_module(module, run_name="__main__", alter_sys=True)
