"""A 256 MiB upload through the SDK keeps the server's peak RSS under 150 MB: bodies are
streamed to disk piece by piece, never held whole in memory (a server that held the body would
be past the limit; `make bench` measures the 1 GiB figure)."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

import pytest

from tests.conftest import KEY_A
from tests.helpers import ServerProcess

SIZE = 256 * 1024**2
RSS_LIMIT = 150 * 10**6


@pytest.fixture
def server(tmp_path: Path):
    """A real `python -m gemfs serve` (not a fork of the tests' warm interpreter, whose preloaded
    modules would count in its RSS)."""
    with ServerProcess(tmp_path / "server", fork=False) as srv:
        yield srv


def sha256_of_zeros(n: int) -> str:
    hasher, piece = hashlib.sha256(), bytes(8 * 1024 * 1024)
    for _ in range(n // len(piece)):
        hasher.update(piece)
    return hasher.hexdigest()


def test_a_large_upload_keeps_the_peak_rss_low(server: ServerProcess, tmp_path: Path) -> None:
    source = tmp_path / "big.bin"
    with open(source, "wb") as f:
        os.truncate(f.fileno(), SIZE)  # sparse: costs no disk on the client side
    client = server.client(KEY_A)
    uploaded = client.files.upload(file=source, config={"mime_type": "application/octet-stream"})
    peak = server.peak_rss_bytes()
    print(f"\nserver peak RSS after a 256 MiB upload: {peak / 2**20:.1f} MiB")
    client.files.delete(name=uploaded.name)  # frees the blob in the kept tmp dir
    assert uploaded.size_bytes == SIZE
    assert base64.b64decode(uploaded.sha256_hash).decode() == sha256_of_zeros(SIZE)
    assert peak < RSS_LIMIT, f"peak RSS {peak} bytes"
