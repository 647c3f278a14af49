"""Imports every workload module so that each registers itself (see registry); the import
order is the order `cw client --help` lists them."""
from . import basic  # noqa: F401
from . import experiments  # noqa: F401
from . import azure_replay  # noqa: F401
