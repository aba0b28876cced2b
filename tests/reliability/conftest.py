"""Fixtures of the reliability suite, and the checks that feed its tally (tests/tally.py):
every test that injects faults or writes bytes records them in `TALLY`."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from tests.helpers import ServerProcess, as_new, delete_all, wait_for  # noqa: F401 (re-exported)
from tests.mount.conftest import KEY, OTHER_KEY, Mount, in_mount_table  # noqa: F401

from tests.tally import TALLY  # noqa: F401 (re-exported)

MiB = 1024 * 1024


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
    """Every write whose close succeeded is listed with its sha256 and size (else its bytes count
    as lost), exactly once (each further File of the name is a duplicate); with `exact`, nothing
    else is listed (each such File is a duplicate too: nothing partial, nothing orphaned)."""
    files = listing(sdk)
    lost = duplicates = 0
    for name, data in written.items():
        got = files.get(name, [])
        if not any(f.sha256_hash == sha_field(data) and (f.size_bytes or 0) == len(data)
                   for f in got):
            lost += len(data)
        duplicates += max(0, len(got) - 1)
    if exact:
        duplicates += sum(len(fs) for name, fs in files.items() if name not in written)
    TALLY.add(bytes_written=sum(len(d) for d in written.values()),
              bytes_verified=sum(len(d) for d in written.values()) - lost, bytes_lost=lost,
              duplicates=duplicates)
    detail = {n: [(f.name, f.size_bytes, f.sha256_hash) for f in fs] for n, fs in files.items()}
    assert lost == 0, f"bytes lost: {detail}"
    assert duplicates == 0, f"duplicate or unexpected Files: {detail}"


def upload_bytes(server) -> int:
    """Body bytes the server received on upload URLs since its stats were last reset (faulted
    requests included): the server's own count, not gemfs's."""
    return server.admin._call("GET", "/stats")["uploadBytes"]


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


@pytest.fixture
def sdk(shared_server):
    """The project's SDK client; every test starts with no Files, no faults, zeroed stats."""
    as_new(shared_server, KEY)
    client = shared_server.client(KEY)
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


def random_bytes(n: int) -> bytes:
    return os.urandom(n)


# --- parts 1-3 (faults, crashes, load): mounts, staging and listings seen from outside ---------

# gemfs's upload chunk against `gemfs serve`: the largest multiple of the server's granularity
# (8 MiB) not above gemfs.upload.DEFAULT_CHUNK_SIZE (8 MiB).
CHUNK = 8 * MiB


def mount_record(mount: Mount) -> dict:
    """What a running mount's daemon records for `gemfs status` (pid, status, listing age)."""
    return mount.record()


def daemon_pid(mount: Mount) -> int:
    return int(mount_record(mount)["pid"])
