"""Who closes a file decides what is uploaded: a writer killed half-way publishes nothing, fsync
is a durability point, and a held temp file outlives a daemon that is killed (issue 10)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

from gemfs.registry import pid_alive
from tests.mount.conftest import Mount, in_mount_table, wait_for
from tests.mount.test_copy import assert_uploaded, remote_files
from tests.reliability.conftest import daemon_pid

# Writes half a file, says so on stdout, then waits to be killed (or to be told to finish).
WRITER = textwrap.dedent("""
    import os, sys
    fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.write(fd, b"half " * 1000)
    print("written", flush=True)
    if sys.stdin.readline().strip() == "finish":
        os.write(fd, b"whole" * 1000)
        os.close(fd)
""")


def start_writer(path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "written"
    return proc


def test_a_writer_killed_half_way_publishes_nothing(mount, sdk, admin):
    for sig in (signal.SIGTERM, signal.SIGKILL):
        admin.reset_stats()
        writer = start_writer(mount.path / f"half-{sig.name}.txt")
        writer.send_signal(sig)
        assert writer.wait(timeout=30) == -sig
        assert admin.stats().get("upload_start", 0) == 0
        assert f"half-{sig.name}.txt" not in remote_files(sdk)
        wait_for(lambda: "was killed; not uploaded" in mount.read_log(), timeout=10)


def test_a_killed_overwrite_keeps_the_old_file(mount, sdk, tmp_path):
    (tmp_path / "a.txt").write_bytes(b"the old bytes")
    mount.sh(f"cp {tmp_path / 'a.txt'} ./")
    writer = start_writer(mount.path / "a.txt")
    writer.terminate()
    writer.wait(timeout=30)
    assert_uploaded(sdk, "a.txt", b"the old bytes")
    assert len(remote_files(sdk)["a.txt"]) == 1


def test_the_same_writer_finishing_uploads_once(mount, sdk, admin):
    admin.reset_stats()
    writer = start_writer(mount.path / "whole.txt")
    writer.communicate("finish\n", timeout=60)
    assert writer.returncode == 0
    assert_uploaded(sdk, "whole.txt", b"half " * 1000 + b"whole" * 1000)
    assert admin.stats()["upload_start"] == 1


def test_fsync_makes_a_file_while_it_stays_open(mount, sdk, admin):
    admin.reset_stats()
    fd = os.open(mount.path / "log.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, b"first\n")
        os.fsync(fd)
        assert_uploaded(sdk, "log.txt", b"first\n")
        os.write(fd, b"second\n")
    finally:
        os.close(fd)
    assert_uploaded(sdk, "log.txt", b"first\nsecond\n")
    assert len(remote_files(sdk)["log.txt"]) == 1
    stats = admin.stats()
    assert (stats["upload_start"], stats["delete"]) == (2, 1)


def test_a_held_temp_file_survives_a_killed_daemon(tmp_path, gemfs_server, sdk):
    m = Mount(tmp_path, gemfs_server).start()
    held = m.path / ".goutputstream-AB12CD"
    held.write_bytes(b"held through a crash")
    assert ".goutputstream-AB12CD" not in remote_files(sdk)  # held: it waits for its rename
    pid = daemon_pid(m)
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not pid_alive(pid), timeout=10)
    m.gemfs("unmount", str(m.path), timeout=60)
    assert not in_mount_table(m.path)
    again = Mount(tmp_path, gemfs_server).start()  # the same state directory
    try:
        assert_uploaded(sdk, ".goutputstream-AB12CD", b"held through a crash")
        assert "recovered held file .goutputstream-AB12CD" in again.read_log()
    finally:
        again.stop()


def _upload_sessions(server) -> list[tuple[str, int]]:
    """(state, bytes received) of every upload session the server still keeps."""
    import sqlite3
    db = sqlite3.connect(f"file:{server.data_dir / 'gemfs.sqlite3'}?mode=ro", uri=True)
    try:
        return db.execute("SELECT state, received FROM sessions").fetchall()
    finally:
        db.close()


def test_an_unmount_while_a_big_file_is_written_leaves_no_open_session(mount, gemfs_server):
    # The file's stream has sent a chunk when the daemon is told to stop, the writer still
    # holding it open: its session must be cancelled, not left to hold its bytes against the
    # project's quota for the server's session lifetime (a week on the local server).
    fd = os.open(mount.path / "open.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        os.write(fd, os.urandom(17 << 20))
        wait_for(lambda: any(state == "active" and received >= 8 << 20
                             for state, received in _upload_sessions(gemfs_server)),
                 timeout=30, what="the stream's first chunk")
        mount.stop()
    finally:
        try:
            os.close(fd)
        except OSError:
            pass  # the mount is gone
    assert not in_mount_table(str(mount.path))
    assert [s for s in _upload_sessions(gemfs_server) if s[0] == "active"] == []
