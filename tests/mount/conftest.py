"""Real mounts for the tests: `gemfs mount` as a subprocess against a `gemfs serve` subprocess.

Each mount gets its own mount point, staging, state and log directories under tmp_path, and is
unmounted in a finally, whatever the test did.
"""

from __future__ import annotations

import pytest

from tests.helpers import (  # noqa: F401 (re-exported for the tests)
    MountProcess,
    ServerProcess,
    gemfs_cmd,
    in_mount_table,
    isolated_env,
    wait_for,
)

KEY = "key-a"
OTHER_KEY = "key-b"


# One implementation of a test mount for the tests and bench/run.py (tests/helpers.py).
Mount = MountProcess


@pytest.fixture
def gemfs_server(tmp_path):
    with ServerProcess(tmp_path / "server-data", keys=[KEY, OTHER_KEY]) as server:
        yield server


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
