"""Security (issue 5, part 5): the API key is in no log, sidecar, error or process title;
projects cannot see or touch each other's Files or upload sessions; upload URLs cannot be
guessed; `gemfs serve` listens on loopback unless told otherwise; a mount is private to the
user who made it unless `--allow-other`."""

from __future__ import annotations

import io
import json
import os
import re
import secrets
import shutil
import socket
import string
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from gemfs.server import wire
from tests.mount.conftest import gemfs_cmd
from tests.reliability.conftest import (
    KEY,
    OTHER_KEY,
    TALLY,
    Mount,
    ServerProcess,
    daemon_pid,
    listing,
    mount_record,
    sha_field,
    wait_for,
)

START_HEADERS = {"X-Goog-Upload-Protocol": "resumable", "X-Goog-Upload-Command": "start",
                 "X-Goog-Upload-Header-Content-Type": "application/octet-stream"}


def start_upload(http: httpx.Client, key: str, size: int) -> str:
    r = http.post("/upload/v1beta/files", json={"file": {}},
                  headers={**START_HEADERS, "x-goog-api-key": key,
                           "X-Goog-Upload-Header-Content-Length": str(size)})
    assert r.status_code == 200, r.text
    return r.headers["x-goog-upload-url"]


def cmdlines() -> dict[int, bytes]:
    """Every process's command line, as `ps` and /proc show it (NUL-separated)."""
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                out[int(entry)] = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
    return out


def listening_sockets(pid: int) -> set[tuple[str, int]]:
    """(address, port) of the LISTEN sockets process `pid` holds, from /proc/net/tcp{,6}
    matched to the socket inodes among its descriptors."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            addr, hexport = fields[1].split(":")
            if fields[3] != "0A" or fields[9] not in inodes:
                continue
            raw = bytes.fromhex(addr)
            if len(raw) == 4:
                address = socket.inet_ntop(socket.AF_INET, raw[::-1])
            else:  # four little-endian 32-bit words
                words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
                address = socket.inet_ntop(socket.AF_INET6, words)
            found.add((address, int(hexport, 16)))
    return found


class KeyScan:
    """Collects every text the key could leak into and counts the places scanned."""

    def __init__(self, *keys: str) -> None:
        self.keys = [k.encode() for k in keys]
        self.places = 0
        self.hits: list[str] = []

    def text(self, where: str, data: bytes | str) -> None:
        data = data.encode() if isinstance(data, str) else data
        self.places += 1
        self.hits += [where for k in self.keys if k in data]

    def tree(self, root: Path) -> None:
        for path in Path(root).rglob("*"):
            if path.is_file() and not path.is_symlink():
                self.text(str(path), path.read_bytes())


# --- the key --------------------------------------------------------------------------------------


def test_the_key_appears_in_no_log_sidecar_error_or_process_title(tmp_path):
    secret = "SeCrEt-" + secrets.token_urlsafe(24)
    bad = "BaD-" + secrets.token_urlsafe(24)
    scan = KeyScan(secret, bad)
    # Real execs (not forks of the tests' warm interpreter): their command lines are scanned.
    server = ServerProcess(tmp_path / "server-data", keys=[secret],
                           args=["--access-log", "--log-level", "debug"], fork=False)
    with server:
        m = Mount(tmp_path, server, key=secret, extra=("--debug", "--show-meta",
                                                       "--max-file-size", "5000"), fork=False)
        m.start()
        try:
            src = tmp_path / "a.txt"
            src.write_bytes(b"hello\n")
            m.sh(f"cp {src} ./a.txt && mkdir d && cp {src} d/b.txt && ls -laR")
            for name in ("a.txt", "d/b.txt"):
                scan.text(f"sidecar {name}", m.sh(f"cat {name}.meta.json").stdout)
            (tmp_path / "big").write_bytes(b"b" * 6000)
            # A File this mount did not upload cannot be read (no download, not in the content
            # cache, SEMANTICS.md): one more error to scan.
            other = server.client(secret)  # kept: the SDK closes its transport on __del__
            other.files.upload(
                file=src, config={"display_name": "elsewhere.txt", "mime_type": "text/plain"})
            wait_for(lambda: "elsewhere.txt" in m.sh("ls").stdout, timeout=15,
                     what="the other client's File listed")
            server.admin.set_faults({"op": "upload_start", "action": "error", "status": 403,
                                     "times": -1})
            failing = [f"cp {tmp_path / 'big'} ./big", "cat elsewhere.txt", "mv a.txt z.txt",
                       "rm nothing-here", f"cp {src} ./refused.txt", "echo x > a.txt.meta.json"]
            for command in failing:
                proc = m.sh(command, check=False)
                assert proc.returncode != 0, command
                scan.text(f"stderr of {command}", proc.stdout + proc.stderr)
            server.admin.clear_faults()
            scan.text("gemfs status", m.status())
            titles = cmdlines()
            for pid in (daemon_pid(m), server.pid):
                scan.text(f"/proc/{pid}/cmdline", titles[pid])
                scan.text(f"/proc/{pid}/comm", Path(f"/proc/{pid}/comm").read_bytes())
            ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, check=True).stdout
            scan.text("ps -eo args", ps)
            scan.tree(Path(m.env["XDG_STATE_HOME"]))  # the mount's status record
            scan.tree(m.staging)
        finally:
            m.stop()
        bad_mount = Mount(tmp_path, server, key=bad, name="bad", extra=("--debug",))
        proc = subprocess.run(gemfs_cmd("mount", str(bad_mount.path), *bad_mount.args),
                              env=bad_mount.env, capture_output=True, timeout=60)
        assert proc.returncode == 1
        scan.text("stderr of a bad-key mount", proc.stdout + proc.stderr)
        scan.text("log of a bad-key mount", bad_mount.read_log())
    scan.text("mount log", m.read_log())
    assert "op create('/a.txt'" in m.read_log() and "api upload" in m.read_log()  # --debug was on
    scan.text("server log", server.stderr_text())
    assert "POST /upload/v1/files" in server.stderr_text()  # the access log was on
    scan.tree(server.data_dir)
    assert scan.hits == [], scan.hits
    print(f"\nkey scan: {scan.places} places, {len(scan.hits)} hits")
    TALLY.add(failed_cleanly=len(failing) + 1)


def test_local_mode_keeps_its_key_off_every_command_line(tmp_path):
    m = Mount(tmp_path, None, local=True, extra=("--debug",), fork=False)  # a real command line
    m.start()
    data = tmp_path / "local-data"
    try:
        key = (data / "embedded-api-key").read_text().strip()
        assert len(key) >= 32
        assert (data / "embedded-api-key").stat().st_mode & 0o777 == 0o600
        assert data.stat().st_mode & 0o777 == 0o700
        src = tmp_path / "a.txt"
        src.write_bytes(b"local\n")
        m.sh(f"cp {src} ./ && ls -l && cat a.txt.meta.json >/dev/null")
        scan = KeyScan(key)
        daemon = daemon_pid(m)
        titles = cmdlines()
        embedded = [pid for pid, cmd in titles.items()
                    if b"serve" in cmd and str(data).encode() in cmd]
        assert len(embedded) == 1, embedded
        for pid in (daemon, embedded[0]):
            scan.text(f"/proc/{pid}/cmdline", titles[pid])
        scan.text("ps -eo args", subprocess.run(["ps", "-eo", "args"], capture_output=True).stdout)
        # The embedded server listens on loopback only.
        sockets = listening_sockets(embedded[0])
        assert sockets and {address for address, _ in sockets} == {"127.0.0.1"}, sockets
    finally:
        m.stop()
    scan.text("mount log", m.read_log())
    scan.tree(Path(m.env["XDG_STATE_HOME"]))
    scan.tree(data / "blobs")
    assert scan.hits == [], scan.hits
    print(f"\nkey scan (--local): {scan.places} places, {len(scan.hits)} hits")


# --- projects -----------------------------------------------------------------------------------


def test_another_project_cannot_touch_an_upload_session(tmp_path):
    """Chunk requests need no key; one carrying another project's key is refused as if the
    session did not exist, and the session carries on for its owner."""
    with ServerProcess(tmp_path / "data", keys=[KEY, OTHER_KEY]) as server, server.http() as http:
        url = start_upload(http, KEY, 10)
        r = http.post(url, headers={"X-Goog-Upload-Command": "upload", "X-Goog-Upload-Offset": "0"},
                      content=b"01234")
        assert r.status_code == 200
        attempts = [
            {"X-Goog-Upload-Command": "upload", "X-Goog-Upload-Offset": "5"},
            {"X-Goog-Upload-Command": "upload, finalize", "X-Goog-Upload-Offset": "5"},
            {"X-Goog-Upload-Command": "finalize"},
            {"X-Goog-Upload-Command": "query"},
            {"X-Goog-Upload-Command": "cancel"},
            {"X-Goog-Upload-Command": "upload", "X-Goog-Upload-Offset": "0"},
        ]
        for headers in attempts:
            for auth in ({"headers": {"x-goog-api-key": OTHER_KEY}}, {"params": {"key": OTHER_KEY}},
                         {"headers": {"x-goog-api-key": "not-a-key"}}):
                target = url if "params" not in auth else url + "&key=" + auth["params"]["key"]
                r = http.post(target, headers={**headers, **auth.get("headers", {})},
                              content=b"EVILS")
                assert r.status_code == 404 and r.headers["x-goog-upload-status"] == "final", r.text
                assert r.json()["error"]["status"] == "NOT_FOUND"
        r = http.post(url, headers={"X-Goog-Upload-Command": "query", "x-goog-api-key": KEY})
        assert r.status_code == 200 and r.headers["x-goog-upload-size-received"] == "5"
        r = http.post(url, headers={"X-Goog-Upload-Command": "upload, finalize",
                                    "X-Goog-Upload-Offset": "5"}, content=b"56789")
        assert r.status_code == 200 and r.json()["file"]["sha256Hash"] == sha_field(b"0123456789")
        assert http.get("/v1beta/files", headers={"x-goog-api-key": OTHER_KEY}).json() == {}
    TALLY.add(failed_cleanly=len(attempts) * 3)


def test_two_mounts_with_different_keys_do_not_see_each_other(tmp_path):
    with ServerProcess(tmp_path / "data", keys=[KEY, OTHER_KEY]) as server:
        a = Mount(tmp_path, server, key=KEY, name="a").start()
        b = Mount(tmp_path, server, key=OTHER_KEY, name="b").start()
        try:
            src = tmp_path / "src.txt"
            src.write_bytes(b"mine\n")
            a.sh(f"cp {src} ./same.txt && cp {src} ./only-a.txt")
            b.sh(f"cp {src} ./same.txt")
            copied = time.time()

            def listed_since_copies(m: Mount) -> bool:
                status = mount_record(m)["status"]
                return status.get("listing_age") is not None and \
                    mount_record(m)["written"] - status["listing_age"] > copied

            # Look until each mount has fetched a listing made after all the copies.
            wait_for(lambda: os.listdir(a.path) and os.listdir(b.path) and listed_since_copies(a)
                     and listed_since_copies(b), timeout=20, interval=0.3, what="fresh listings")
            assert sorted(os.listdir(a.path)) == ["only-a.txt", "same.txt"]
            assert os.listdir(b.path) == ["same.txt"]
            ids = {m.path.name: json.loads(m.sh("cat same.txt.meta.json").stdout)["name"]
                   for m in (a, b)}
            assert ids["a"] != ids["b"]
            assert b.sh("rm only-a.txt", check=False).returncode != 0
            b.sh("rm same.txt")
            a_sdk = server.client(KEY)
            assert set(listing(a_sdk)) == {"same.txt", "only-a.txt"}
        finally:
            a.stop()
            b.stop()


# --- upload URLs ----------------------------------------------------------------------------------


def test_upload_ids_are_unguessable(tmp_path):
    """`secrets.token_urlsafe(48)`: 64 characters of a 64-letter alphabet, 384 bits. 1000 ids
    are all different and use the whole alphabet; a mutated id is an unknown session
    (tests/server/test_sdk.py::test_altered_upload_id_is_refused, and the state machine of
    test_fuzz.py tries one on every session it opens)."""
    assert wire.UPLOAD_TOKEN_BYTES * 8 >= 128
    alphabet = set(string.ascii_letters + string.digits + "-_")
    with ServerProcess(tmp_path / "data", keys=[KEY], admin=False) as server, server.http() as http:
        tokens = []
        for _ in range(1000):
            url = start_upload(http, KEY, 0)
            tokens.append(re.search(r"[?&]upload_id=([^&]+)", url).group(1))
        for token in tokens:
            assert len(token) == 64 and set(token) <= alphabet, token
        assert len(set(tokens)) == len(tokens)
        used = set("".join(tokens))
        assert len(used) == 64  # all 64 letters: not hex, not a counter
        firsts = {t[:8] for t in tokens}
        assert len(firsts) == len(tokens)  # no shared prefix: nothing sequential


# --- the server's address -----------------------------------------------------------------------


def test_the_server_listens_on_loopback_by_default(tmp_path):
    server = ServerProcess(tmp_path / "data", keys=[KEY], admin=False)
    assert "--host" not in server.command(0)
    with server:
        assert server.url.startswith("http://127.0.0.1:")
        assert listening_sockets(server.pid) == {("127.0.0.1", server.port)}
        ss = subprocess.run(["ss", "-ltnH", f"sport = :{server.port}"], capture_output=True,
                            text=True, check=True).stdout.split()
        assert f"127.0.0.1:{server.port}" in ss
        others = [a for a in subprocess.run(["hostname", "-I"], capture_output=True, text=True)
                  .stdout.split() if ":" not in a and not a.startswith("127.")]
        for address in others:  # the same port on this host's other addresses is closed
            with pytest.raises(OSError):
                socket.create_connection((address, server.port), timeout=2).close()
        assert httpx.get(server.url + "/v1beta/files", headers={"x-goog-api-key": KEY}).json() == {}


# --- who may use the mount ------------------------------------------------------------------------


def as_nobody(command: str, cwd: str = "/") -> subprocess.CompletedProcess:
    return subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                           "sh", "-c", command],
                          cwd=cwd, capture_output=True, text=True, timeout=30)


@pytest.fixture
def open_root():
    """A directory every user may traverse (pytest's own tmp dirs are 0700), removed after."""
    root = Path(tempfile.mkdtemp(prefix="gemfs-privacy-"))
    root.chmod(0o711)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_the_mount_is_private_unless_allow_other(tmp_path, open_root):
    fuse_conf = Path("/etc/fuse.conf")
    conf = fuse_conf.read_text() if fuse_conf.exists() else ""
    assert not re.search(r"^\s*user_allow_other", conf, re.MULTILINE)  # root needs none
    with ServerProcess(tmp_path / "data", keys=[KEY]) as server:
        sdk = server.client(KEY)
        sdk.files.upload(file=io.BytesIO(b"hi"), config={"mime_type": "text/plain",
                                                         "display_name": "shared.txt"})
        results = {}
        for flag in ((), ("--allow-other",)):
            m = Mount(open_root, server, name="mnt-other" if flag else "mnt-private", extra=flag)
            m.path.chmod(0o755)
            m.start()
            try:
                mnt = str(m.path)
                results[flag] = {
                    "ls": as_nobody(f"ls {mnt}"),
                    "stat": as_nobody(f"stat {mnt}/shared.txt"),
                    "cat": as_nobody(f"cat {mnt}/shared.txt.meta.json"),
                    "write": as_nobody(f"echo x > {mnt}/mine.txt"),
                    "rm": as_nobody(f"rm -f {mnt}/shared.txt"),
                }
                assert m.sh("ls").stdout.split() == ["shared.txt"]  # the owner sees it all along
            finally:
                m.stop()
        private, shared = results[()], results[("--allow-other",)]
        for op, proc in private.items():
            assert proc.returncode != 0 and "Permission denied" in proc.stderr, (op, proc)
        assert shared["ls"].returncode == 0 and shared["ls"].stdout.split() == ["shared.txt"]
        assert shared["stat"].returncode == 0 and shared["cat"].returncode == 0
        for op in ("write", "rm"):  # the owner's modes still hold (default_permissions)
            assert shared[op].returncode != 0 and "Permission denied" in shared[op].stderr
        assert set(listing(sdk)) == {"shared.txt"}
