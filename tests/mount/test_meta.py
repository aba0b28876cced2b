"""Metadata in view (issues 9 and 11): the fresh state of a File that is not ACTIVE, --wait-active,
the virtual `.hidden` of --show-meta, and mtimes kept across remounts for rsync."""

from __future__ import annotations

import json
import os
import subprocess
import threading

import pytest

from tests.mount.conftest import Mount, wait_for
from tests.mount.test_copy import remote_files


def gets(admin) -> int:
    return admin.stats().get("get", 0)


def test_the_sidecar_of_a_processing_file_shows_its_fresh_state(tmp_path, server_factory):
    server = server_factory(keys=["key-a"], args=["--processing-seconds", "video=2"])
    # A listing an hour old: only a files.get can show the state change.
    m = Mount(tmp_path, server, list_ttl=3600).start()
    try:
        (m.path / "clip.mp4").write_bytes(b"\0" * 1000)
        server.admin.reset_stats()
        assert json.loads((m.path / "clip.mp4.meta.json").read_text())["state"] == "PROCESSING"
        assert os.getxattr(m.path / "clip.mp4", "user.gemini.state") in (b"PROCESSING", b"ACTIVE")
        meta = wait_for(lambda: (lambda d: d if d["state"] == "ACTIVE" else None)(
            json.loads((m.path / "clip.mp4.meta.json").read_text())), timeout=30)
        assert meta["name"].startswith("files/")
        polled = gets(server.admin)
        # However often it was read, at most about one get per second went out (1 s cache);
        # once ACTIVE, reads cost nothing.
        assert 1 <= polled <= 6
        for _ in range(20):
            (m.path / "clip.mp4.meta.json").read_bytes()
            os.getxattr(m.path / "clip.mp4", "user.gemini.state")
        assert gets(server.admin) == polled
    finally:
        m.stop()


def test_wait_active_makes_close_return_once_the_file_is_active(tmp_path, server_factory):
    server = server_factory(keys=["key-a"], args=["--processing-seconds", "video=2"])
    m = Mount(tmp_path, server, extra=("--wait-active",)).start()
    try:
        (tmp_path / "clip.mp4").write_bytes(b"\0" * 1000)
        m.sh(f"cp {tmp_path / 'clip.mp4'} ./")
        (f,) = remote_files(server.client("key-a"))["clip.mp4"]
        assert f.state.name == "ACTIVE"  # when cp returned, the File was ready for a prompt
    finally:
        m.stop()


def test_wait_active_reports_a_failed_file(tmp_path, server_factory):
    server = server_factory(keys=["key-a"], args=["--processing-seconds", "video=30"])
    sdk = server.client("key-a")
    m = Mount(tmp_path, server, extra=("--wait-active",)).start()
    try:
        (tmp_path / "bad.mp4").write_bytes(b"\0" * 1000)

        def fail_it() -> None:
            (f,) = wait_for(lambda: remote_files(sdk).get("bad.mp4"), timeout=30)
            server.admin.fail("key-a", f.name, code=3, message="video could not be decoded")

        failer = threading.Thread(target=fail_it)
        failer.start()
        proc = m.sh(f"cp {tmp_path / 'bad.mp4'} ./", check=False)
        failer.join()
        assert proc.returncode != 0 and "Input/output error" in proc.stderr
        assert "video could not be decoded" in m.read_log()
    finally:
        m.stop()


def test_show_meta_lists_a_hidden_file_naming_the_sidecars(tmp_path, gemfs_server):
    m = Mount(tmp_path, gemfs_server, extra=("--show-meta",)).start()
    try:
        (tmp_path / "a.txt").write_bytes(b"a")
        m.sh(f"mkdir d && cp {tmp_path / 'a.txt'} ./ && cp {tmp_path / 'a.txt'} d/b.txt")
        assert (m.path / ".hidden").read_text() == "a.txt.meta.json\n"
        assert (m.path / "d" / ".hidden").read_text() == "b.txt.meta.json\n"
        assert ".hidden" in os.listdir(m.path)
        assert m.sh("echo x > .hidden", check=False).returncode != 0
    finally:
        m.stop()


def test_no_hidden_file_without_show_meta(mount):
    assert not (mount.path / ".hidden").exists()


def test_rsync_after_a_remount_uploads_nothing(tmp_path, gemfs_server, admin):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        (src / f"f{i}.txt").write_bytes(os.urandom(1000))
        os.utime(src / f"f{i}.txt", (1_700_000_000 + i, 1_700_000_000 + i))
    m = Mount(tmp_path, gemfs_server).start()
    try:
        m.sh(f"rsync -a {src}/ d/")
    finally:
        m.stop()
    again = Mount(tmp_path, gemfs_server).start()  # same state directory
    try:
        admin.reset_stats()
        again.sh(f"rsync -a {src}/ d/")
        assert admin.stats().get("upload_start", 0) == 0
        assert os.stat(again.path / "d" / "f1.txt").st_mtime == 1_700_000_001
    finally:
        again.stop()


@pytest.mark.parametrize("flag", ["--cache-size=0"])
def test_without_a_cache_own_files_are_not_readable(tmp_path, gemfs_server, flag):
    m = Mount(tmp_path, gemfs_server, extra=(flag,)).start()
    try:
        (tmp_path / "a.txt").write_bytes(b"a")
        m.sh(f"cp {tmp_path / 'a.txt'} ./")
        assert oct(os.stat(m.path / "a.txt").st_mode & 0o777) == "0o200"
        assert subprocess.run(["cat", str(m.path / "a.txt")], capture_output=True).returncode != 0
    finally:
        m.stop()
