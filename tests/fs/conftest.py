"""Fixtures of the in-process file-system tier: a GemFS over a FakeRemote and a FakeClock.

Run it with `.venv/bin/python -m pytest tests/fs -q` (no FUSE, no server, no sleeps); the long
state-machine run with `-m long tests/fs`. test_next.py holds the contract of issues 9 and 10; what
is not built yet is a strict xfail: when one starts to pass, remove its marker.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fs.driver import Driver


@pytest.fixture
def drv(tmp_path: Path) -> Iterator[Driver]:
    """A fresh in-process mount of an empty project."""
    with Driver(tmp_path) as driver:
        yield driver


@pytest.fixture
def make_driver(tmp_path: Path) -> Iterator:
    """Builds drivers with options (`make_driver(quota=..., show_meta=True)`); each gets its
    own staging directory and all are shut down at teardown."""
    made: list[Driver] = []

    def make(**options) -> Driver:
        driver = Driver(tmp_path / f"mount{len(made)}", **options)
        made.append(driver)
        return driver

    yield make
    for driver in reversed(made):  # each undoes its patches of gemfs modules: last made, first
        driver.shutdown()
