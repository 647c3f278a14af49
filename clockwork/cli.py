"""The `cw` command. Subcommands live beside what they drive and are imported lazily, so
`cw client` never pays for importing TVM and `cw --help` is instant."""
from __future__ import annotations

import importlib
import importlib.util

import click

SUBCOMMANDS = {
    "run": ("clockwork.local", "run_command", "Run worker + controller + client locally (emulated GPUs)."),
    "worker": ("clockwork.worker.command", "worker_command", "Serve GPUs (or emulated GPUs) to a controller."),
    "controller": ("clockwork.controller.command", "controller_command", "Schedule requests onto workers."),
    "edge": ("clockwork.controller.edge", "edge_command",
             "Serve clients in front of a controller, forwarding their requests batched."),
    "client": ("clockwork.client.command", "client_command", "Run a workload against a controller."),
    "simulate": ("clockwork.sim.command", "simulate_command",
                 "Run a workload on the real scheduler and worker runtime in simulated time."),
    "frontend": ("clockwork.frontend.command", "frontend_command",
                 "Serve KServe v2 / Open Inference Protocol (HTTP, gRPC) in front of a controller."),
    "top": ("clockwork.telemetry.top", "top_command", "Live view of a controller's telemetry."),
    "plot": ("clockwork.telemetry.plot", "plot_command", "Figures from request and action logs."),
    "zoo": ("clockwork.model.zoo", "zoo_group", "Build model zoos (emulated profiles or TVM-compiled)."),
    "check-model": ("clockwork.model.commands", "check_model_command", "Load a model on a device and report it."),
    "profile": ("clockwork.model.commands", "profile_group", "Environment checks and model profiling."),
    "keys": ("clockwork.transport.security", "keys_command", "Generate CURVE key pairs."),
    "trace": ("clockwork.client.azure", "trace_command", "Azure Functions trace tools (synthetic traces)."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(n for n in SUBCOMMANDS if self._available(n))

    def _available(self, name: str) -> bool:
        return importlib.util.find_spec(SUBCOMMANDS[name][0]) is not None

    def get_command(self, ctx, name):
        if name not in SUBCOMMANDS or not self._available(name):
            return None
        module, attr, _ = SUBCOMMANDS[name]
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx, formatter):
        rows = [(n, SUBCOMMANDS[n][2]) for n in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="clockwork", prog_name="cw")
def main():
    """clockwork: predictable multi-tenant DNN inference serving.

    Quick start (no GPU): `cw run` starts an emulated worker with 2 GPUs, the INFER4
    controller and the `simple` workload, and prints their stats.
    """
    from .console import one_line_warnings
    one_line_warnings()


if __name__ == "__main__":
    main(prog_name="cw")
