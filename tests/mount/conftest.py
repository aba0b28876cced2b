"""Real mounts for the tests: `gemfs mount` as a subprocess against a `gemfs serve` subprocess.

Each mount gets its own mount point, staging, state and log directories under tmp_path, and is
unmounted in a finally, whatever the test did. The server is one per module (per xdist worker),
handed to each test as a fresh one looks: no Files, no faults, zeroed request counts.
"""

from __future__ import annotations

import pytest

from tests.helpers import (  # noqa: F401 (re-exported for the tests)
    MountProcess,
    ServerProcess,
    as_new,
    delete_all,
    gemfs_cmd,
    in_mount_table,
    isolated_env,
    wait_for,
)

KEY = "key-a"
OTHER_KEY = "key-b"


# One implementation of a test mount for the tests and bench/run.py (tests/helpers.py).
Mount = MountProcess


@pytest.fixture(scope="module")
def module_server(tmp_path_factory):
    """One `gemfs serve --admin` (keys KEY and OTHER_KEY) for a module's tests: starting one per
    test cost more than most tests' own work. Tests take it through `gemfs_server`."""
    with ServerProcess(tmp_path_factory.mktemp("server") / "server-data",
                       keys=[KEY, OTHER_KEY]) as server:
        yield server


@pytest.fixture
def gemfs_server(module_server):
    """The module's server as a new one looks to a test: no Files in either project, no fault
    rules, zeroed request counts. The previous test's mounts are unmounted by then (fixture
    teardown), so nothing of theirs is still talking to it."""
    as_new(module_server, KEY, OTHER_KEY)
    return module_server


@pytest.fixture
def admin(gemfs_server):
    return gemfs_server.admin


@pytest.fixture
def mount(tmp_path, gemfs_server):
    m = Mount(tmp_path, gemfs_server).start()
    try:
        yield m
    finally:
        m.stop()


@pytest.fixture
def sdk(gemfs_server):
    return gemfs_server.client(KEY)
