"""A 1 GiB upload through the SDK keeps the server's peak RSS under 150 MB: bodies are
streamed to disk piece by piece, never held whole in memory."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

import pytest

from tests.conftest import KEY_A
from tests.helpers import ServerProcess

GIB = 1024**3
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


def test_one_gib_upload_peak_rss(server: ServerProcess, tmp_path: Path) -> None:
    source = tmp_path / "big.bin"
    with open(source, "wb") as f:
        os.truncate(f.fileno(), GIB)  # sparse: costs no disk on the client side
    client = server.client(KEY_A)
    uploaded = client.files.upload(file=source, config={"mime_type": "application/octet-stream"})
    peak = server.peak_rss_bytes()
    print(f"\nserver peak RSS after a 1 GiB upload: {peak / 2**20:.1f} MiB")
    client.files.delete(name=uploaded.name)  # frees the 1 GiB blob in the kept tmp dir
    assert uploaded.size_bytes == GIB
    assert base64.b64decode(uploaded.sha256_hash).decode() == sha256_of_zeros(GIB)
    assert peak < RSS_LIMIT, f"peak RSS {peak} bytes"
