#!/usr/bin/env python3
"""Write a synthetic Azure Functions 2019 trace (same as `cw trace synth OUT`).

    python tools/gen_azure_trace.py /tmp/azure --functions 8000 --days 1 --seed 0
"""
from clockwork.client.azure import synth_command

if __name__ == "__main__":
    synth_command(prog_name="gen_azure_trace.py")
