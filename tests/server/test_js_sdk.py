"""The JavaScript SDK (`@google/genai`, pinned in tests/server/js/package.json) against
`gemfs serve` on node: upload, get, list, download, delete. Skipped, with the reason, when node
or npm is missing or the package cannot be installed."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import KEY_A
from tests.helpers import ServerProcess

JS_DIR = Path(__file__).parent / "js"
PACKAGE = "@google/genai"
MIB = 1024 * 1024


@pytest.fixture
def server(server_process: ServerProcess) -> ServerProcess:
    """A `gemfs serve` subprocess: node connects to a real socket."""
    return server_process


def _pinned_version() -> str:
    return json.loads((JS_DIR / "package.json").read_text())["dependencies"][PACKAGE]


def _installed_version() -> str | None:
    manifest = JS_DIR / "node_modules" / "@google" / "genai" / "package.json"
    try:
        return json.loads(manifest.read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None


@pytest.fixture(scope="module")
def node_sdk() -> str:
    """The path of node, with the pinned SDK installed in tests/server/js/node_modules (from
    its package-lock.json, once; kept between runs)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are needed for the JavaScript SDK test")
    if _installed_version() != _pinned_version():
        r = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts"],
            cwd=JS_DIR,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if r.returncode != 0:
            tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["no output"]
            pytest.skip(f"cannot install {PACKAGE}@{_pinned_version()}: {tail[0]}")
    assert _installed_version() == _pinned_version()
    return node


def test_js_sdk_files_roundtrip(server: ServerProcess, node_sdk: str, tmp_path: Path) -> None:
    data = os.urandom(9 * MIB)  # two chunks of the SDK's 8 MiB
    upload_path = tmp_path / "notes.txt"
    upload_path.write_bytes(data)
    generated = server.admin.generated(KEY_A, b"generated for node", mime_type="text/plain")
    server.admin.reset_stats()
    r = subprocess.run(
        [
            node_sdk,
            str(JS_DIR / "files_roundtrip.mjs"),
            server.url,
            KEY_A,
            str(upload_path),
            generated["name"],
            str(tmp_path / "downloaded.txt"),
        ],
        cwd=JS_DIR,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    seen = json.loads(r.stdout.strip().splitlines()[-1])
    up = seen["fromPath"]
    assert (up["displayName"], up["mimeType"], up["sizeBytes"]) == (
        "from-node",
        "text/plain",
        str(len(data)),
    )
    assert base64.b64decode(up["sha256Hash"]).decode() == hashlib.sha256(data).hexdigest()
    assert (seen["fromBlob"]["displayName"], seen["fromBlob"]["sizeBytes"]) == ("from-blob", "10")
    assert seen["got"]["name"] == up["name"] and seen["got"]["state"] == "ACTIVE"
    assert seen["listed"] == [seen["fromBlob"]["name"], up["name"], generated["name"]]
    assert seen["downloaded"] == "generated for node"
    assert seen["afterDelete"] == 403
    stats = server.admin.stats()
    assert (stats["upload_start"], stats["upload_chunk"], stats["upload_finalize"]) == (2, 1, 2)
    assert (stats["get"], stats["list"], stats["delete"], stats["download"]) == (2, 2, 1, 1)
