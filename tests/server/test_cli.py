"""`gemfs serve` as a command: the listening line, clean exits on SIGTERM/SIGINT, key options
and open mode, startup failures, and keys never reaching disk or logs."""

from __future__ import annotations

import io
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from gemfs.cli import build_parser
from gemfs.server import main as server_main
from gemfs.server.config import default_data_dir
from tests.helpers import REPO_ROOT, ServerProcess, wait_for

LINE_RE = re.compile(r"gemfs serve: listening on http://127\.0\.0\.1:(\d+)\n")


REAL_PROCESS = True  # the CLI, ports, signals and logs belong to a process (tests/server/conftest.py)


def spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "gemfs", "serve", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
    )


def run_to_exit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gemfs", "serve", *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=30,
    )


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_listening_line_and_clean_exit(tmp_path: Path, sig: signal.Signals) -> None:
    proc = spawn("--port", "0", "--data", str(tmp_path / "d"), "--api-key", "k1")
    try:
        line = proc.stdout.readline()
        m = LINE_RE.fullmatch(line)
        assert m, line
        port = int(m.group(1))
        assert port > 0
        r = httpx.get(f"http://127.0.0.1:{port}/v1beta/files", headers={"x-goog-api-key": "k1"})
        assert (r.status_code, r.content) == (200, b"{}")
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert out == ""  # exactly one line on stdout
    assert err == ""  # nothing to say when keys are configured and all went well


def test_open_mode(server_factory) -> None:
    srv = server_factory(keys=())
    assert "open mode" in srv.stderr_text()
    alice, bob = srv.client("anything-1"), srv.client("anything-2")
    f = alice.files.upload(file=io.BytesIO(b"x"), config={"mime_type": "text/plain"})
    assert [g.name for g in alice.files.list()] == [f.name]
    assert list(bob.files.list()) == []
    assert httpx.get(srv.url + "/v1beta/files").status_code == 403  # a key is still required


def test_api_key_options(server_factory, tmp_path: Path) -> None:
    extra = tmp_path / "more.keys"
    extra.write_text("# comment\n\n  key-d  \n")
    srv = server_factory(args=["--api-key", "key-c", "--api-key-file", str(extra)])
    for key in ("key-a", "key-b", "key-c", "key-d"):
        assert httpx.get(srv.url + "/v1/files", params={"key": key}).status_code == 200, key
    r = httpx.get(srv.url + "/v1/files", params={"key": "key-e"})
    assert r.status_code == 400
    assert r.json()["error"]["details"][0]["reason"] == "API_KEY_INVALID"


def test_bad_key_file(tmp_path: Path) -> None:
    missing = run_to_exit(
        "--port", "0", "--data", str(tmp_path / "d"), "--api-key-file", str(tmp_path / "nope")
    )
    assert missing.returncode == 2 and "cannot read --api-key-file" in missing.stderr
    empty = tmp_path / "empty"
    empty.write_text("# only a comment\n")
    r = run_to_exit("--port", "0", "--data", str(tmp_path / "d"), "--api-key-file", str(empty))
    assert r.returncode == 2 and "contains no key" in r.stderr
    assert missing.stdout == r.stdout == ""


def test_data_dir_in_use(server: ServerProcess) -> None:
    r = run_to_exit("--port", "0", "--data", str(server.data_dir), "--api-key", "k")
    assert r.returncode == 1
    assert "in use by another gemfs server" in r.stderr


def test_port_in_use(server: ServerProcess, tmp_path: Path) -> None:
    r = run_to_exit("--port", str(server.port), "--data", str(tmp_path / "other"), "--api-key", "k")
    assert r.returncode == 1
    assert f"cannot listen on 127.0.0.1:{server.port}" in r.stderr


def test_keys_never_reach_disk_or_logs(server_factory) -> None:
    secret = "SeCrEt-KeY-0123456789"
    srv = server_factory(keys=(secret,), args=["--access-log", "--log-level", "debug"])
    client = srv.client(secret)
    f = client.files.upload(file=io.BytesIO(b"x" * 100), config={"mime_type": "text/plain"})
    client.files.get(name=f.name)
    assert httpx.get(srv.url + "/v1beta/" + f.name, params={"key": secret}).status_code == 200
    httpx.get(srv.url + "/v1beta/files/missing", params={"key": secret + "-wrong"})
    with srv.http() as http:
        start = http.post(
            "/upload/v1beta/files",
            params={"key": secret},
            headers={
                "X-Goog-Upload-Protocol": "resumable",
                "X-Goog-Upload-Command": "start",
                "X-Goog-Upload-Header-Content-Length": "1",
                "X-Goog-Upload-Header-Content-Type": "a/b",
            },
        )
        token = re.search(r"upload_id=([^&]+)", start.headers["x-goog-upload-url"]).group(1)
        http.post(start.headers["x-goog-upload-url"], headers={"X-Goog-Upload-Command": "query"})
    srv.stop()
    log = srv.stderr_text()
    assert "key=REDACTED" in log and "upload_id=REDACTED" in log  # the access log was on
    for needle in (secret, token):
        assert needle not in log
        for path in srv.data_dir.rglob("*"):
            if path.is_file():
                assert needle.encode() not in path.read_bytes(), path
    cmdline = " ".join(srv.command(0))
    assert secret not in cmdline  # keys travel in a file, not in argv


def test_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    args = build_parser().parse_args(["serve"])
    assert (args.host, args.port, args.admin, args.public_url) == ("127.0.0.1", 8765, False, None)
    assert args.file_ttl == 172800
    assert args.max_file_size == 2 * 1024**3 and args.project_quota == 20 * 1024**3
    assert args.latency_ms == 0
    config = server_main.config_from_args(args)
    assert config.processing_seconds == {"video": 2.0, "audio": 0.0, "pdf": 0.0}
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_data_dir() == tmp_path / "gemfs" / "server"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_data_dir() == tmp_path / "home" / ".local" / "share" / "gemfs" / "server"


@pytest.mark.parametrize(
    "text, value",
    [
        ("0", 0),
        ("1048576", 1048576),
        ("2GiB", 2 * 1024**3),
        ("20GB", 20 * 10**9),
        ("5 MiB", 5 * 2**20),
        ("7k", 7000),
    ],
)
def test_byte_sizes(text: str, value: int) -> None:
    assert server_main.byte_size(text) == value


def test_processing_seconds_by_class() -> None:
    args = build_parser().parse_args(
        ["serve", "--processing-seconds", "video=10, audio=2", "--processing-seconds", "PDF=0.5"]
    )
    config = server_main.config_from_args(args)
    assert config.processing_seconds == {"video": 10.0, "audio": 2.0, "pdf": 0.5}
    args = build_parser().parse_args(["serve", "--video-processing-seconds", "7"])
    assert server_main.config_from_args(args).processing_seconds["video"] == 7.0


def test_bad_option_values(tmp_path: Path) -> None:
    for args in (
        ["--processing-seconds", "movie=3"],
        ["--processing-seconds", "video"],
        ["--processing-seconds", "video=-1"],
        ["--processing-seconds", "video=1", "--video-processing-seconds", "2"],
        ["--max-file-size", "lots"],
        ["--file-ttl", "-1"],
        ["--public-url", "ftp://x"],
        ["--port", "70000"],
    ):
        r = run_to_exit("--data", str(tmp_path / "d"), "--api-key", "k", *args)
        assert r.returncode == 2, args
        assert r.stdout == ""
        assert "Traceback" not in r.stderr and r.stderr.strip(), args


def test_help_lists_every_option() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "gemfs", "serve", "--help"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
    )
    assert r.returncode == 0
    for option in (
        "--host",
        "--port",
        "--data",
        "--api-key",
        "--api-key-file",
        "--file-ttl",
        "--max-file-size",
        "--project-quota",
        "--latency-ms",
        "--processing-seconds",
        "--video-processing-seconds",
        "--admin",
        "--public-url",
        "--sweep-interval",
        "--log-level",
        "--access-log",
    ):
        assert option in r.stdout


def test_periodic_sweep(server_factory) -> None:
    srv = server_factory(args=["--file-ttl", "0.2", "--sweep-interval", "0.1"])
    srv.admin.generated("key-a", b"soon gone")
    blobs = srv.data_dir / "blobs"
    wait_for(lambda: not any(blobs.iterdir()), timeout=10, what="the sweep to remove the blob")
