"""Fixtures shared by several test modules."""
import pytest

from clockwork.client.echo import EchoController


@pytest.fixture
def echo():
    """A stand-in controller on a free 127.0.0.1 port that answers per the schema and records
    what it received; stopped after the test whatever happens."""
    ec = EchoController(record=True).start()
    try:
        yield ec
    finally:
        ec.stop()
