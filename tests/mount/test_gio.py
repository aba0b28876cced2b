"""GIO on a real mount: the `gio` tool runs the same GLib code as pcmanfm, Thunar and Nautilus
(copy, replace, save, trash, delete, info), so these are the file managers' cases without a
screen (issue 9). Request counts come from the server's admin stats.
"""

from __future__ import annotations

import os
import shutil
import time

import pytest

from tests.mount.test_copy import assert_uploaded, remote_files, shlex
from tests.mount.test_tools import put, tag

pytestmark = pytest.mark.skipif(shutil.which("gio") is None,
                                reason="gio is not installed (libglib2.0-bin; make system-deps)")


def test_gio_copy_of_a_new_file(mount, sdk, admin, tmp_path):
    (tmp_path / "new.txt").write_bytes(b"from gio")
    admin.reset_stats()
    mount.sh(f"gio copy {shlex(tmp_path / 'new.txt')} new.txt")
    assert_uploaded(sdk, "new.txt", b"from gio")
    assert list(remote_files(sdk)) == ["new.txt"]
    assert admin.stats()["upload_start"] == 1


def test_gio_copy_over_an_existing_file(mount, sdk, admin, tmp_path):
    put(mount, tmp_path, "doc.txt", b"old version")
    (tmp_path / "doc.txt").write_bytes(b"new version!")
    admin.reset_stats()
    proc = mount.sh(f"gio copy {shlex(tmp_path / 'doc.txt')} doc.txt", check=False)
    assert proc.returncode == 0, proc.stderr
    assert list(remote_files(sdk)) == ["doc.txt"]
    assert_uploaded(sdk, "doc.txt", b"new version!")
    stats = admin.stats()
    assert (stats["upload_start"], stats["delete"]) == (1, 1)


def test_gio_save_of_a_new_file(mount, sdk):
    mount.sh("printf 'saved by gio' | gio save saved.txt")
    assert_uploaded(sdk, "saved.txt", b"saved by gio")
    assert list(remote_files(sdk)) == ["saved.txt"]


def test_gio_save_over_an_existing_file(mount, sdk, admin, tmp_path):
    put(mount, tmp_path, "notes.txt", b"first")
    admin.reset_stats()
    proc = mount.sh("printf 'second' | gio save notes.txt", check=False)
    assert proc.returncode == 0, proc.stderr
    assert list(remote_files(sdk)) == ["notes.txt"]
    assert_uploaded(sdk, "notes.txt", b"second")
    stats = admin.stats()
    assert (stats["upload_start"], stats["delete"]) == (1, 1)


def test_gio_trash_fails_cleanly(mount, sdk, admin, tmp_path):
    """There is no trash: GIO cannot make `.Trash-UID`, says so, and uploads nothing (a file
    manager then offers to delete permanently)."""
    put(mount, tmp_path, "keep.txt", b"still here")
    admin.reset_stats()
    proc = mount.sh("gio trash keep.txt", check=False)
    assert proc.returncode != 0
    assert "keep.txt" in proc.stderr and "trash" in proc.stderr.lower()
    stats = admin.stats()
    assert (stats["upload_start"], stats["delete"]) == (0, 0)
    assert os.listdir(mount.path) == ["keep.txt"]
    assert list(remote_files(sdk)) == ["keep.txt"]


def test_gio_remove(mount, sdk, admin, tmp_path):
    put(mount, tmp_path, "gone.txt", b"bye")
    admin.reset_stats()
    mount.sh("gio remove gone.txt")
    assert remote_files(sdk) == {}
    assert os.listdir(mount.path) == []
    assert admin.stats()["delete"] == 1


def test_gio_info_shows_size_mtime_and_the_gemini_attributes(mount, sdk, tmp_path):
    written = int(time.time())
    put(mount, tmp_path, "info.txt", b"0123456789")
    f = assert_uploaded(sdk, "info.txt", b"0123456789")
    out = mount.sh("gio info info.txt").stdout
    attrs = dict(line.strip().split(": ", 1) for line in out.splitlines()
                 if line.startswith("  ") and ": " in line)
    assert attrs["standard::size"] == "10"
    # The time this mount wrote it (SEMANTICS.md, mtime): from the write to the File's making.
    assert written <= int(attrs["time::modified"]) <= int(f.update_time.timestamp())
    assert attrs["xattr::gemini.uri"] == f.uri
    assert attrs["xattr::gemini.name"] == f.name
    assert attrs["xattr::gemini.state"] == "ACTIVE"
    assert attrs["xattr::gemini.mime_type"] == "text/plain"


def test_gio_copy_preserve_of_a_file_with_xattrs(mount, sdk, tmp_path):
    src = tmp_path / "tagged.txt"
    src.write_bytes(b"tagged")
    tag(src)
    proc = mount.sh(f"gio copy --preserve {shlex(src)} tagged.txt", check=False)
    assert proc.returncode == 0, proc.stderr
    assert_uploaded(sdk, "tagged.txt", b"tagged")
