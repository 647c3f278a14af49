"""`cw top [HOST:PORT]`: a live terminal view of a controller's telemetry, like htop/nvtop.

It subscribes to the controller's PUB socket (snapshots on a conflated socket, so it always
draws the newest one however slow the terminal is; events on a second socket) and redraws with
rich a few times a second. Keys:

    q          quit                       < > or arrows   change the model sort column
    r          reverse the sort           /               filter models by id or name (Enter ends, Esc clears)
    p          pause / resume the display

`--once` prints one snapshot as plain text and exits (for scripts and non-terminals).
"""
from __future__ import annotations

import os
import sys
import time
from collections import deque

import click
import zmq

from ..values import POSITIVE, Spec
from . import messages as tm

SPARK = "▁▂▃▄▅▆▇█"
HISTORY = 120                 # snapshots kept for the sparklines (~2 minutes)
STALE_S = 3.0                 # no snapshot for this long: say so
REDRAW_S = 0.25

# model table: (key, header, value of a ModelSnapshot used for sorting)
SORTS = (
    ("id", "ID", lambda m: m.model_id),
    ("name", "NAME", lambda m: m.name),
    ("rate", "REQ/s", lambda m: m.rate),
    ("goodput", "GOOD/s", lambda m: m.goodput),
    ("slo", "SLO%", lambda m: m.slo),
    ("p50", "P50ms", lambda m: m.p50_ms),
    ("p99", "P99ms", lambda m: m.p99_ms),
    ("max", "MAXms", lambda m: m.max_ms),
    ("queue", "QUEUE", lambda m: m.queue),
    ("batch", "BATCH", lambda m: m.batch_mean),
    ("cold", "COLD", lambda m: m.coldstarts),
    ("gpus", "GPUS", lambda m: m.gpus),
    ("total", "TOTAL", lambda m: m.total),
)
SORT_KEYS = tuple(k for k, _, _ in SORTS)


def sparkline(values, lo: float | None = None, hi: float | None = None) -> str:
    vals = [v for v in values if v >= 0]
    if not vals:
        return ""
    lo = min(vals) if lo is None else lo
    hi = max(vals) if hi is None else hi
    span = hi - lo
    out = []
    for v in values:
        if v < 0:
            out.append(" ")
        else:
            level = 0 if span <= 0 else int((min(max(v, lo), hi) - lo) / span * (len(SPARK) - 1) + 0.5)
            out.append(SPARK[level if span > 0 else len(SPARK) // 2])
    return "".join(out)


def _num(x: float, digits: int = 1) -> str:
    return "-" if x < 0 else f"{x:.{digits}f}"


def _pct(x: float) -> str:
    if x < 0:
        return "-"
    return f"{100 * x:.2f}" if x < 0.9999 or x == 1.0 else f"{100 * x:.4f}"


def _duration(s: float) -> str:
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class TopState:
    """What the viewer knows and shows; separate from I/O so rendering is testable."""

    def __init__(self, address: str, sort: str = "rate", filter_text: str = "", reverse: bool = False):
        self.address = address
        self.snapshot: tm.Snapshot | None = None
        self.received_at = 0.0
        self.started = time.monotonic()
        self.rates: deque = deque(maxlen=HISTORY)
        self.goodputs: deque = deque(maxlen=HISTORY)
        self.slos: deque = deque(maxlen=HISTORY)
        self.events: deque = deque(maxlen=200)
        self.sort = SORT_KEYS.index(sort)
        self.reverse = reverse
        self.filter = filter_text
        self.editing = False
        self.paused = False
        self.error = ""

    def on_message(self, msg, now: float) -> None:
        if type(msg) is tm.Snapshot:
            if self.paused:
                return
            self.snapshot = msg
            self.received_at = now
            self.rates.append(msg.rate)
            self.goodputs.append(msg.goodput)
            self.slos.append(msg.slo)
        else:
            self.events.extend(msg.events)
            if msg.dropped:
                self.events.append(tm.Event(time.time_ns(), "dropped", f"{msg.dropped} events not sent (rate limit)"))

    def on_keys(self, data: str) -> bool:
        """Apply typed keys; False means quit."""
        i = 0
        while i < len(data):
            ch = data[i]
            if data.startswith("\x1b[", i) and i + 2 < len(data):     # arrow keys
                code = data[i + 2]
                if not self.editing and code in "CD":
                    self._move_sort(1 if code == "C" else -1)
                i += 3
                continue
            i += 1
            if self.editing:
                if ch in "\r\n":
                    self.editing = False
                elif ch == "\x1b":
                    self.editing = False
                    self.filter = ""
                elif ch in "\x7f\x08":
                    self.filter = self.filter[:-1]
                elif ch.isprintable():
                    self.filter += ch
            elif ch in "qQ\x03":
                return False
            elif ch in "<,":
                self._move_sort(-1)
            elif ch in ">.":
                self._move_sort(1)
            elif ch in "rRiI":
                self.reverse = not self.reverse
            elif ch == "/":
                self.editing = True
            elif ch == "\x1b":
                self.filter = ""
            elif ch in "pP":
                self.paused = not self.paused
        return True

    def _move_sort(self, step: int) -> None:
        self.sort = (self.sort + step) % len(SORTS)

    def models(self) -> list[tm.ModelSnapshot]:
        rows = self.snapshot.models if self.snapshot else []
        f = self.filter.strip().lower()
        if f:
            rows = [m for m in rows if f in str(m.model_id) or f in m.name.lower()]
        key = SORTS[self.sort][2]
        # numbers sort largest first (what an operator looks for); id and name ascending
        descending = SORTS[self.sort][0] not in ("id", "name")
        return sorted(rows, key=key, reverse=descending != self.reverse)


# ---------------------------------------------------------------------- rendering

# GPU table columns; on narrow terminals the ones marked False are left out
GPU_COLUMNS = (("GPU", True), ("NAME", False), ("HEALTH", True), ("UTIL%", True), ("BUSY%", True),
               ("INFER/s", True), ("REQ/s", True), ("LOAD/s", True), ("EVICT/s", False), ("MODELS", True),
               ("PAGES", True), ("CLOCK", False), ("TEMP", False), ("MEM GiB", False), ("OUTST", True),
               ("RTTus", False))
NARROW = 140


def _gpu_table(snap: tm.Snapshot, width: int):
    from rich.table import Table
    from rich.text import Text

    keep = [width >= NARROW or essential for _, essential in GPU_COLUMNS]
    table = Table(box=None, header_style="bold reverse", pad_edge=False, expand=True)
    for (col, _), k in zip(GPU_COLUMNS, keep):
        if k:
            table.add_column(col, justify="left" if col in ("GPU", "NAME", "HEALTH") else "right",
                             no_wrap=True)
    for g in snap.gpus:
        health = Text(g.health, style={"ok": "green", "lost": "bold red"}.get(g.health, "yellow"))
        if g.gpu_id < 0:
            cells = [f"W{g.worker_id}", g.address, health] + ["-"] * (len(GPU_COLUMNS) - 3)
        else:
            cells = [
                f"W{g.worker_id}-GPU{g.gpu_id}", g.name, health,
                _num(100 * g.utilization if g.utilization >= 0 else -1), f"{100 * g.busy:.1f}",
                f"{g.infer_rate:.1f}", f"{g.request_rate:.1f}", f"{g.load_rate:.1f}", f"{g.evict_rate:.1f}",
                str(g.loaded_models), f"{g.total_pages - g.free_pages}/{g.total_pages}",
                "-" if g.sm_clock_mhz < 0 else str(g.sm_clock_mhz),
                "-" if g.temperature_c < 0 else f"{g.temperature_c}C",
                "-" if g.memory_used < 0 else f"{g.memory_used / 2**30:.1f}/{g.memory_total / 2**30:.0f}",
                str(g.outstanding), f"{g.rtt_ns / 1e3:.0f}"]
        table.add_row(*(c for c, k in zip(cells, keep) if k))
    return table


def render(state: TopState, width: int = 120, height: int = 40, now: float | None = None,
           interactive: bool = True):
    """The whole screen as one rich renderable (without the key help when not interactive)."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    now = time.monotonic() if now is None else now
    snap = state.snapshot
    keys = Text("q quit  </> sort  r reverse  / filter  Esc clear  p pause" if interactive else "",
                style="dim")
    if snap is None:
        waited = now - state.started
        port = state.address.rsplit(":", 1)[-1]
        lines = [Text(f"clockwork top: {state.address}", style="bold")]
        if waited >= STALE_S:
            lines.append(Text(f"No controller is publishing telemetry on {state.address} "
                              f"(nothing received for {waited:.0f} s).", style="bold red"))
            lines.append(Text(f"Start one with `cw controller --telemetry-port {port} ...` "
                              f"(config: [controller] telemetry_port), or give its HOST:PORT."))
        else:
            lines.append(Text("waiting for the first snapshot..."))
        if state.error:
            lines.append(Text(state.error, style="red"))
        return Group(*lines, keys)

    up = sum(1 for g in snap.gpus if g.health == "ok")
    head = Text()
    head.append(f"clockwork top  {state.address}", style="bold")
    head.append(f"   {snap.phase}  scheduler {snap.scheduler}  uptime {_duration(snap.uptime_s)}")
    if state.paused:
        head.append("   PAUSED", style="bold yellow")
    age = now - state.received_at
    if age >= STALE_S:
        head.append(f"   no snapshot for {age:.0f} s: controller stopped or unreachable",
                    style="bold red")
    slo_style = "green" if snap.slo < 0 or snap.slo >= 0.999 else "yellow" if snap.slo >= 0.99 else "red"
    totals = Text()
    totals.append(f"requests {snap.rate:.1f}/s  goodput {snap.goodput:.1f}/s  SLO ")
    totals.append(f"{_pct(snap.slo)}%", style=slo_style)
    totals.append(f"  p50 {_num(snap.p50_ms)} ms  p99 {_num(snap.p99_ms)} ms  max {_num(snap.max_ms)} ms"
                  f"  queue {snap.queue if snap.queue >= 0 else '-'}  answered {snap.total}"
                  f"  models {len(snap.models)}/{snap.models_registered}  GPUs {up}/{len(snap.gpus)} ok")
    spark_w = max(10, min(HISTORY, width - 30))
    rates = list(state.rates)[-spark_w:]
    slos = list(state.slos)[-spark_w:]
    known = [v for v in slos if v >= 0]
    sparks = Text()
    sparks.append("throughput ", style="dim")
    sparks.append(sparkline(rates, lo=0.0), style="cyan")
    sparks.append(f" {max(rates) if rates else 0:.0f}/s max\n", style="dim")
    sparks.append("SLO        ", style="dim")
    sparks.append(sparkline(slos, lo=min(min(known, default=1.0), 0.99), hi=1.0), style=slo_style)
    sparks.append(f" {100 * min(known, default=1.0):.2f}% min", style="dim")
    parts = [head, totals, sparks]
    if snap.failures:
        parts.append(Text("failures: " + "  ".join(f"{k} {v}" for k, v in snap.failures.items()),
                          style="red"))

    gpus = _gpu_table(snap, width)

    rows = state.models()
    sort_key = SORTS[state.sort][0]
    title = Text()
    title.append(f"models sorted by {sort_key}{' (reversed)' if state.reverse else ''}")
    if state.filter or state.editing:
        title.append(f"  filter: {state.filter}{'_' if state.editing else ''}", style="bold yellow")
    events = list(state.events)[-3:]
    used = len(parts) + 2 + len(snap.gpus) + 1 + 3 + len(events) + 1 + 1
    room = max(1, height - used - 1)
    models = Table(box=None, header_style="bold reverse", pad_edge=False, expand=True)
    for i, (key, header, _) in enumerate(SORTS):
        models.add_column(header + ("▼" if i == state.sort else ""), no_wrap=True,
                          justify="left" if key == "name" else "right",
                          style="bold" if i == state.sort else None)
    for m in rows[:room]:
        models.add_row(
            str(m.model_id), m.name, f"{m.rate:.1f}", f"{m.goodput:.1f}", _pct(m.slo), _num(m.p50_ms, 2),
            _num(m.p99_ms, 2), _num(m.max_ms, 2), "-" if m.queue < 0 else str(m.queue),
            f"{m.batch_mean:.1f}" if m.batch_mean else "-", str(m.coldstarts), str(m.gpus), str(m.total))
    more = Text(f"... {len(rows) - room} more models" if len(rows) > room else "", style="dim")
    ev = Text()
    for e in events:
        ev.append(time.strftime("%H:%M:%S ", time.localtime(e.wall_ns / 1e9)), style="dim")
        ev.append(e.text + "\n", style="red" if e.kind == "worker_lost" else None)
    return Group(*parts, Text(""), gpus, Text(""), title, models, more,
                 Panel(ev, title="events", title_align="left", height=len(events) + 2) if events else Text(""),
                 keys)


# ---------------------------------------------------------------------- I/O

def _sockets(ctx: zmq.Context, endpoint: str):
    from ..config import load_config
    from ..transport import security as security_mod
    try:
        security = security_mod.load(load_config())     # [security] on: CURVE with the client key
    except ValueError as e:                             # a bad config file or missing keys
        raise click.ClickException(str(e)) from None
    snaps = ctx.socket(zmq.SUB)
    snaps.setsockopt(zmq.LINGER, 0)
    snaps.setsockopt(zmq.CONFLATE, 1)          # only the newest snapshot matters
    snaps.setsockopt(zmq.SUBSCRIBE, tm.TOPIC_SNAPSHOT)
    events = ctx.socket(zmq.SUB)
    events.setsockopt(zmq.LINGER, 0)
    events.setsockopt(zmq.RCVHWM, 1000)
    events.setsockopt(zmq.SUBSCRIBE, tm.TOPIC_EVENTS)
    for sock in (snaps, events):
        if security is not None:
            security.client(sock, security.client_key, "controller")
        sock.connect(endpoint)
    return snaps, events


def _read(sock, state: TopState) -> None:
    while sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
        frame = sock.recv()
        try:
            state.on_message(tm.decode(frame), time.monotonic())
        except tm.TelemetryError as e:
            state.error = str(e)


def _resolve(address: str | None) -> tuple[str, str]:
    """(display HOST:PORT, zmq endpoint) from HOST:PORT, HOST, :PORT or the config's port."""
    from ..config import ConfigError, load_config
    from ..transport.sockets import parse_address, tcp
    try:
        default_port = int(load_config()["controller"]["telemetry_port"])
    except (ConfigError, KeyError, ValueError) as e:
        raise click.ClickException(f"cannot read the telemetry port from the config: {e}")
    try:
        host, port = parse_address(address or f"127.0.0.1:{default_port}", default_port)
    except ValueError as e:
        raise click.ClickException(str(e))
    if host == "0.0.0.0":
        host = "127.0.0.1"
    return f"{host}:{port}", tcp(host, port)


def _once(state: TopState, snaps, events, timeout: float, width: int) -> None:
    from rich.console import Console
    deadline = time.monotonic() + timeout
    while state.snapshot is None and time.monotonic() < deadline:
        if snaps.poll(int(max(0.0, deadline - time.monotonic()) * 1000) + 1):
            _read(snaps, state)
    if state.snapshot is None:
        raise click.ClickException(
            f"no controller is publishing telemetry on {state.address} (waited {timeout:g} s); "
            f"start one with --telemetry-port or give its HOST:PORT")
    _read(events, state)
    Console(width=width, force_terminal=False, soft_wrap=False).print(
        render(state, width=width, height=10_000, interactive=False))


def _live(state: TopState, snaps, events) -> None:
    import termios
    import tty

    from rich.console import Console
    from rich.live import Live

    console = Console()
    fd = sys.stdin.fileno() if sys.stdin.isatty() else None
    old = termios.tcgetattr(fd) if fd is not None else None
    poller = zmq.Poller()
    poller.register(snaps, zmq.POLLIN)
    poller.register(events, zmq.POLLIN)
    if fd is not None:
        poller.register(fd, zmq.POLLIN)
        tty.setcbreak(fd)
    try:
        with Live(console=console, screen=True, auto_refresh=False, transient=True) as live:
            next_draw = 0.0
            while True:
                ready = dict(poller.poll(int(REDRAW_S * 1000)))
                if snaps in ready:
                    _read(snaps, state)
                if events in ready:
                    _read(events, state)
                if fd is not None and fd in ready:
                    data = os.read(fd, 64).decode("utf-8", "replace")
                    if not state.on_keys(data):
                        return
                    next_draw = 0.0
                now = time.monotonic()
                if now >= next_draw or snaps in ready:
                    size = console.size
                    live.update(render(state, size.width, size.height, now), refresh=True)
                    next_draw = now + REDRAW_S
    except KeyboardInterrupt:
        return
    finally:
        if old is not None:
            termios.tcsetattr(fd, termios.TCSADRAIN, old)


@click.command("top")
@click.argument("address", required=False)
@click.option("--sort", "-s", type=click.Choice(SORT_KEYS), default="rate", show_default=True,
              help="Model table sort column.")
@click.option("--filter", "-f", "filter_text", default="", help="Show only models whose id or name contains this.")
@click.option("--once", is_flag=True, help="Print one snapshot as text and exit.")
@click.option("--timeout", type=POSITIVE.click("S"), default=5.0, show_default=True,
              help="With --once: seconds to wait for a snapshot before giving up.")
@click.option("--width", type=Spec(int, 20).click(), default=160, show_default=True, help="With --once: text width.")
def top_command(address, sort, filter_text, once, timeout, width):
    """Live view of the controller publishing telemetry at ADDRESS (HOST:PORT; default
    127.0.0.1 and the config's [controller] telemetry_port).

    \b
    Keys: q quit, < > (or arrows) sort column, r reverse, / filter (Enter ends, Esc clears),
    p pause."""
    display, endpoint = _resolve(address)
    state = TopState(display, sort, filter_text)
    ctx = zmq.Context()
    try:
        snaps, events = _sockets(ctx, endpoint)
        if once:
            _once(state, snaps, events, timeout, width)
        else:
            _live(state, snaps, events)
    finally:
        ctx.destroy(linger=0)


if __name__ == "__main__":
    top_command()
