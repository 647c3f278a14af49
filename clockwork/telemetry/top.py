"""`cw top [HOST:PORT]`: a live terminal view of a controller's telemetry, like htop/nvtop.

It subscribes to the controller's PUB socket (snapshots on a conflated socket, so it always
draws the newest one however slow the terminal is; events on a second socket) and redraws with
rich a few times a second. Keys:

    q          quit                       < > or arrows   change the model sort column
    r          reverse the sort           /               filter models by id or name (Enter ends, Esc clears)
    p          pause / resume the display

`--once` prints one snapshot as plain text and exits (for scripts and non-terminals).

A sharded controller (`cw controller --shards K`) publishes on K ports: `cw top A,B,...` or
`cw top --shards K [HOST[:PORT]]` subscribes to each (a conflated socket per shard: one would
keep only the newest of all shards) and shows them as one (telemetry/shards.py): GPUs of every
shard labelled with it, totals summed, latency percentiles per shard and the worst of them.
"""
from __future__ import annotations

import os
import sys
import time
from collections import deque

import click
import msgspec
import zmq

from ..values import POSITIVE, Spec
from . import messages as tm
from .shards import combine

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
    """What the viewer knows and shows; separate from I/O so rendering is testable.
    address: one HOST:PORT, or a list of them, one per shard of a sharded controller."""

    def __init__(self, address: str | list[str], sort: str = "rate", filter_text: str = "",
                 reverse: bool = False):
        self.addresses = [address] if isinstance(address, str) else list(address)
        self.address = ",".join(self.addresses)
        self.sharded = len(self.addresses) > 1
        self.snapshot: tm.Snapshot | None = None       # the shards' combined when sharded
        self.received_at = 0.0
        self.shards: list[tm.Snapshot | None] = [None] * len(self.addresses)   # each shard's latest
        self.shard_received = [0.0] * len(self.addresses)
        self.gpu_shards: list[int] = []                 # the shard of each GPU row of the snapshot
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

    def on_message(self, msg, now: float, shard: int = 0) -> None:
        """A message from the shard with this index (0 when not sharded)."""
        if type(msg) is tm.Snapshot:
            if self.paused:
                return
            self.shards[shard] = msg
            self.shard_received[shard] = now
            self.received_at = now
            if self.sharded:
                self.snapshot, self.gpu_shards = combine(self.shards)
                # one history point per round of snapshots: when the first publishing shard's comes
                if shard != next(k for k, s in enumerate(self.shards) if s is not None):
                    return
            else:
                self.snapshot, self.gpu_shards = msg, [0] * len(msg.gpus)
            snap = self.snapshot
            self.rates.append(snap.rate)
            self.goodputs.append(snap.goodput)
            self.slos.append(snap.slo)
        else:
            label = f"shard {shard}: " if self.sharded else ""
            self.events.extend(msgspec.structs.replace(e, text=label + e.text) if label else e
                               for e in msg.events)
            if msg.dropped:
                self.events.append(tm.Event(time.time_ns(), "dropped",
                                            f"{label}{msg.dropped} events not sent (rate limit)"))

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


def _gpu_table(snap: tm.Snapshot, width: int, shards: list[int] | None = None):
    """One row per GPU; `shards`: each row's shard, to label it with (None: not sharded)."""
    from rich.table import Table
    from rich.text import Text

    keep = [width >= NARROW or essential for _, essential in GPU_COLUMNS]
    table = Table(box=None, header_style="bold reverse", pad_edge=False, expand=True)
    for (col, _), k in zip(GPU_COLUMNS, keep):
        if k:
            table.add_column(col, justify="left" if col in ("GPU", "NAME", "HEALTH") else "right",
                             no_wrap=True)
    for i, g in enumerate(snap.gpus):
        health = Text(g.health, style={"ok": "green", "lost": "bold red"}.get(g.health, "yellow"))
        shard = "" if shards is None else f"S{shards[i]} "
        if g.gpu_id < 0:
            cells = [f"{shard}W{g.worker_id}", g.address, health] + ["-"] * (len(GPU_COLUMNS) - 3)
        else:
            cells = [
                f"{shard}W{g.worker_id}-GPU{g.gpu_id}", g.name, health,
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
            start = (f"`cw controller --shards {len(state.addresses)} ...` (it prints its telemetry ports)"
                     if state.sharded else f"`cw controller --telemetry-port {port} ...`")
            lines.append(Text(f"Start one with {start} (config: [controller] telemetry_port), "
                              "or give its HOST:PORT."))
        else:
            lines.append(Text("waiting for the first snapshot..."))
        if state.error:
            lines.append(Text(state.error, style="red"))
        return Group(*lines, keys)

    up = sum(1 for g in snap.gpus if g.health == "ok")
    head = Text()
    head.append(f"clockwork top  {state.address}", style="bold")
    if state.sharded:
        head.append(f"  {len(state.addresses)} shards")
    head.append(f"   {snap.phase}  scheduler {snap.scheduler}  uptime {_duration(snap.uptime_s)}")
    if state.paused:
        head.append("   PAUSED", style="bold yellow")
    age = now - state.received_at
    if age >= STALE_S:
        head.append(f"   no snapshot for {age:.0f} s: controller stopped or unreachable",
                    style="bold red")
    elif state.sharded:
        quiet = [k for k, at in enumerate(state.shard_received) if now - (at or state.started) >= STALE_S]
        if quiet:
            head.append("   no snapshot from " + ", ".join(
                f"shard {k} for {now - (state.shard_received[k] or state.started):.0f} s" for k in quiet),
                style="bold red")
    slo_style = "green" if snap.slo < 0 or snap.slo >= 0.999 else "yellow" if snap.slo >= 0.99 else "red"
    totals = Text()
    totals.append(f"requests {snap.rate:.1f}/s  goodput {snap.goodput:.1f}/s  SLO ")
    totals.append(f"{_pct(snap.slo)}%", style=slo_style)
    worst = " (worst shard)" if state.sharded else ""
    totals.append(f"  p50 {_num(snap.p50_ms)} ms  p99 {_num(snap.p99_ms)} ms{worst}  max {_num(snap.max_ms)} ms"
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
    parts = [head, totals, *_shard_lines(state), sparks]
    if snap.failures:
        parts.append(Text("failures: " + "  ".join(f"{k} {v}" for k, v in snap.failures.items()),
                          style="red"))

    gpus = _gpu_table(snap, width, state.gpu_shards if state.sharded else None)

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


def _shard_lines(state: TopState) -> list:
    """Each shard's own totals, when sharded: its latency percentiles are only its own."""
    from rich.text import Text
    if not state.sharded:
        return []
    lines = []
    for k, (address, s) in enumerate(zip(state.addresses, state.shards)):
        line = Text(f"  shard {k} {address}  ", style="dim")
        if s is None:
            line.append("no snapshot yet", style="yellow")
        else:
            up = sum(1 for g in s.gpus if g.health == "ok")
            line.append(f"{s.phase}  requests {s.rate:.1f}/s  goodput {s.goodput:.1f}/s  SLO {_pct(s.slo)}%"
                        f"  p50 {_num(s.p50_ms)} ms  p99 {_num(s.p99_ms)} ms  max {_num(s.max_ms)} ms"
                        f"  queue {s.queue if s.queue >= 0 else '-'}  answered {s.total}  GPUs {up}/{len(s.gpus)} ok")
        lines.append(line)
    return lines


# ---------------------------------------------------------------------- I/O

def _sockets(ctx: zmq.Context, endpoints: list[str]) -> list[tuple[zmq.Socket, zmq.Socket]]:
    """(snapshots, events) SUB sockets for each endpoint (shard)."""
    from ..config import load_config
    from ..transport import security as security_mod
    try:
        security = security_mod.load(load_config())     # [security] on: CURVE with the client key
    except ValueError as e:                             # a bad config file or missing keys
        raise click.ClickException(str(e)) from None
    return [_subscribe(ctx, endpoint, security) for endpoint in endpoints]


def _subscribe(ctx: zmq.Context, endpoint: str, security) -> tuple[zmq.Socket, zmq.Socket]:
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


def _read(sock, state: TopState, shard: int = 0) -> None:
    while sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
        frame = sock.recv()
        try:
            state.on_message(tm.decode(frame), time.monotonic(), shard)
        except tm.TelemetryError as e:
            state.error = str(e)


def _resolve(address: str | None, shards: int | None = None) -> list[tuple[str, str]]:
    """[(display HOST:PORT, zmq endpoint)], one per shard, from HOST:PORT, HOST, :PORT or the
    config's port; "A,B,..." for a sharded controller's shards, or with `shards` = K the K
    ports from PORT on, or without a PORT those `cw controller --shards K` gives its shards
    under this config (clockwork.controller.shards.port_blocks)."""
    from ..config import ConfigError, load_config
    from ..controller.shards import port_blocks
    from ..transport.sockets import parse_address, tcp
    try:
        cc = load_config()["controller"]
        default_port = int(cc["telemetry_port"])
        if shards:
            default_port = port_blocks(shards, cc["client_port"], default_port, cc.get("metrics_port", 0))[1][0]
    except (ConfigError, KeyError, ValueError) as e:
        raise click.ClickException(f"cannot read the telemetry port from the config: {e}")
    given = [a for a in (address or "").split(",") if a] or [f"127.0.0.1:{default_port}"]
    if shards and len(given) > 1:
        raise click.BadParameter("give either --shards K with one HOST[:PORT] or the shards' addresses "
                                 "comma-separated, not both")
    out = []
    for a in given:
        try:
            host, port = parse_address(a, default_port)
        except ValueError as e:
            raise click.ClickException(str(e))
        if host == "0.0.0.0":
            host = "127.0.0.1"
        for k in range(shards or 1):
            if port + k > 65535:
                raise click.BadParameter(f"--shards {shards} from port {port}: past 65535")
            out.append((f"{host}:{port + k}", tcp(host, port + k)))
    return out


def _once(state: TopState, sockets, timeout: float, width: int) -> None:
    """Wait for a snapshot from every shard (at most timeout s), print them, exit."""
    from rich.console import Console
    deadline = time.monotonic() + timeout
    poller = zmq.Poller()
    for snaps, _ in sockets:
        poller.register(snaps, zmq.POLLIN)
    while any(s is None for s in state.shards) and time.monotonic() < deadline:
        ready = dict(poller.poll(int(max(0.0, deadline - time.monotonic()) * 1000) + 1))
        for k, (snaps, _) in enumerate(sockets):
            if snaps in ready:
                _read(snaps, state, k)
    missing = [a for a, s in zip(state.addresses, state.shards) if s is None]
    if missing:
        what = "no controller is publishing" if len(missing) == len(state.shards) else "no shard is publishing"
        raise click.ClickException(
            f"{what} telemetry on {','.join(missing)} (waited {timeout:g} s); "
            f"start one with --telemetry-port or give its HOST:PORT")
    for k, (_, events) in enumerate(sockets):
        _read(events, state, k)
    Console(width=width, force_terminal=False, soft_wrap=False).print(
        render(state, width=width, height=10_000, interactive=False))


def _live(state: TopState, sockets) -> None:
    import termios
    import tty

    from rich.console import Console
    from rich.live import Live

    console = Console()
    fd = sys.stdin.fileno() if sys.stdin.isatty() else None
    old = termios.tcgetattr(fd) if fd is not None else None
    poller = zmq.Poller()
    for snaps, events in sockets:
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
                new_snapshot = False
                for k, (snaps, events) in enumerate(sockets):
                    if snaps in ready:
                        _read(snaps, state, k)
                        new_snapshot = True
                    if events in ready:
                        _read(events, state, k)
                if fd is not None and fd in ready:
                    data = os.read(fd, 64).decode("utf-8", "replace")
                    if not state.on_keys(data):
                        return
                    next_draw = 0.0
                now = time.monotonic()
                if now >= next_draw or new_snapshot:
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
@click.option("--shards", type=click.IntRange(1, 1024), default=None, metavar="K",
              help="A sharded controller's K telemetry ports: from ADDRESS's PORT on (the first one "
                   "`cw controller --shards K` prints), or without a PORT those it assigns under this config.")
def top_command(address, sort, filter_text, once, timeout, width, shards):
    """Live view of the controller publishing telemetry at ADDRESS (HOST:PORT; default
    127.0.0.1 and the config's [controller] telemetry_port). For a sharded controller, its
    shards' telemetry addresses comma-separated, or --shards K: one view of all of them.

    \b
    Keys: q quit, < > (or arrows) sort column, r reverse, / filter (Enter ends, Esc clears),
    p pause."""
    resolved = _resolve(address, shards)
    state = TopState([display for display, _ in resolved], sort, filter_text)
    ctx = zmq.Context()
    try:
        sockets = _sockets(ctx, [endpoint for _, endpoint in resolved])
        if once:
            _once(state, sockets, timeout, width)
        else:
            _live(state, sockets)
    finally:
        ctx.destroy(linger=0)


if __name__ == "__main__":
    top_command()
