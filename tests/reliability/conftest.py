"""Fixtures and the tally of the reliability suite.

Every test that injects faults or writes bytes records them in `TALLY`; the session prints one
summary line (the figures docs/RELIABILITY.md quotes): faults injected, operations that survived
them, operations that failed cleanly (non-zero exit, nothing partial listed), bytes lost (must be 0).
"""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.helpers import ServerProcess, wait_for  # noqa: F401 (re-exported)
from tests.mount.conftest import KEY, OTHER_KEY, Mount, in_mount_table  # noqa: F401

MiB = 1024 * 1024


class Tally:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.faults_injected = 0
        self.survived = 0  # operations that succeeded despite faults
        self.failed_cleanly = 0  # operations that failed with an error and left nothing partial
        self.bytes_written = 0  # bytes of every write whose close succeeded
        self.bytes_verified = 0  # of those, found whole (sha256) through the SDK
        self.bytes_lost = 0
        self.fuzz_requests = 0

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, n in counts.items():
                setattr(self, name, getattr(self, name) + n)

    def line(self) -> str:
        return (f"reliability: {self.faults_injected} faults injected, {self.survived} operations "
                f"survived, {self.failed_cleanly} failed cleanly, {self.bytes_written} bytes "
                f"written, {self.bytes_verified} verified, {self.bytes_lost} bytes lost, "
                f"{self.fuzz_requests} fuzz requests")


TALLY = Tally()


def pytest_terminal_summary(terminalreporter) -> None:
    if TALLY.faults_injected or TALLY.bytes_written or TALLY.fuzz_requests:
        terminalreporter.write_line(TALLY.line())


def sha_field(data: bytes) -> str:
    """The API's sha256Hash: base64 of the hex digest."""
    return base64.b64encode(hashlib.sha256(data).hexdigest().encode()).decode()


def listing(sdk) -> dict[str, list]:
    """display name -> Files, through the SDK."""
    out: dict[str, list] = {}
    for f in sdk.files.list(config={"page_size": 100}):
        out.setdefault(f.display_name, []).append(f)
    return out


def verify_written(sdk, written: dict[str, bytes], *, exact: bool = True) -> None:
    """Every write whose close succeeded is listed exactly once with its sha256; with `exact`,
    nothing else is listed (nothing partial, no duplicate)."""
    files = listing(sdk)
    lost = 0
    for name, data in written.items():
        got = files.get(name, [])
        ok = len(got) == 1 and got[0].sha256_hash == sha_field(data) and (got[0].size_bytes or 0) == len(data)
        if not ok:
            lost += len(data)
    TALLY.add(bytes_written=sum(len(d) for d in written.values()),
              bytes_verified=sum(len(d) for d in written.values()) - lost, bytes_lost=lost)
    assert lost == 0, {n: [(f.name, f.size_bytes, f.sha256_hash) for f in files.get(n, [])]
                       for n in written}
    if exact:
        assert set(files) == set(written), f"unexpected Files: {set(files) - set(written)}"


def faults_hit(admin) -> int:
    """Hits of the current fault rules (counted into the tally), then clear them."""
    hits = sum(rule.get("hits", 0) for rule in admin.faults())
    admin.clear_faults()
    TALLY.add(faults_injected=hits)
    return hits


def shq(path) -> str:
    return "'" + str(path).replace("'", "'\\''") + "'"


@pytest.fixture(scope="module")
def rel_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("rel")


@pytest.fixture(scope="module")
def shared_server(rel_root):
    """One server for a module's tests (faults and stats are reset by each test)."""
    with ServerProcess(rel_root / "server-data", keys=[KEY, OTHER_KEY]) as server:
        yield server


def delete_all(sdk) -> None:
    for f in list(sdk.files.list(config={"page_size": 100})):
        sdk.files.delete(name=f.name)


def clean(server, sdk) -> None:
    """No faults, no Files, zeroed stats: the start of every test on a shared server."""
    server.admin.clear_faults()
    delete_all(sdk)
    server.admin.reset_stats()


@pytest.fixture
def sdk(shared_server):
    """The project's SDK client; every test starts with no Files, no faults, zeroed stats."""
    client = shared_server.client(KEY)
    clean(shared_server, client)
    yield client
    shared_server.admin.clear_faults()


@pytest.fixture
def tmpfs(tmp_path):
    """A 4 MiB tmpfs, unmounted in a finally."""
    path = tmp_path / "tmpfs"
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)])


def timed(fn):
    start = time.monotonic()
    result = fn()
    return result, time.monotonic() - start


def random_bytes(n: int) -> bytes:
    return os.urandom(n)


# --- parts 1-3 (faults, crashes, load): mounts, staging and listings seen from outside ---------

CHUNK = 8 * MiB  # the SDK's upload chunk (google.genai._api_client.CHUNK_SIZE)
# One upload attempt may outlive --retry-deadline: gemfs starts no new attempt after it, but the
# attempt under way still runs, and on a 503/429/garbage chunk the SDK itself re-sends the chunk
# three times, sleeping 1 + 2 + 4 s before it gives up.
SDK_CHUNK_RETRY_SECONDS = 7.0


def mount_record(mount: Mount) -> dict:
    """What a running mount's daemon records for `gemfs status` (pid, status, listing age)."""
    return mount.record()


def daemon_pid(mount: Mount) -> int:
    return int(mount_record(mount)["pid"])
