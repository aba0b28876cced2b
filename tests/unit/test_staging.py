"""Staging: write-time limits, the shared byte budget, and the sweep of dead daemons' files."""

import errno
import fcntl
import os

import pytest

from gemfs.errors import GemfsError
from gemfs.staging import StagingArea, sweep_stale


def area(tmp_path, *, max_file_size=1000, quota=2500):
    return StagingArea(str(tmp_path / "staging"), max_file_size=max_file_size, quota_left=lambda: quota)


def test_write_read_truncate_and_accounting(tmp_path):
    a = area(tmp_path)
    f = a.new_file()
    assert f.write(b"hello", 0) == 5
    assert f.write(b"XY", 100) == 2
    assert f.size == 102 and a.staged_bytes == 102
    assert f.read(5, 0) == b"hello" and f.read(2, 100) == b"XY"
    f.truncate(10)
    assert f.size == 10 and a.staged_bytes == 10
    f.discard()
    assert a.staged_bytes == 0 and not os.path.exists(f.path)


def test_file_size_limit_is_efbig_before_any_byte(tmp_path):
    f = area(tmp_path).new_file()
    with pytest.raises(GemfsError) as info:
        f.write(b"x" * 10, 995)
    assert info.value.errno == errno.EFBIG
    assert f.size == 0 and os.path.getsize(f.path) == 0
    with pytest.raises(GemfsError):
        f.truncate(1001)


def test_quota_counts_every_staged_file(tmp_path):
    a = area(tmp_path)
    first, second, third = a.new_file(), a.new_file(), a.new_file()
    first.write(b"a" * 1000, 0)
    second.write(b"b" * 1000, 0)
    with pytest.raises(GemfsError) as info:
        third.write(b"c" * 600, 0)
    assert info.value.errno == errno.EDQUOT
    assert a.staged_bytes == 2000
    first.discard()
    third.write(b"c" * 600, 0)
    assert a.staged_bytes == 1600


def test_downloads_are_not_counted(tmp_path):
    a = area(tmp_path, quota=10)
    d = a.new_file(counted=False)
    d.write(b"z" * 500, 0)
    assert a.staged_bytes == 0
    d.discard()
    assert a.staged_bytes == 0


def test_sweep_removes_only_dead_daemons_directories(tmp_path):
    root = tmp_path / "staging"
    live = area(tmp_path)  # holds its flock
    dead = root / "999999-dead"
    dead.mkdir()
    (dead / "lock").write_text("")
    (dead / "abc.part").write_bytes(b"left behind")
    no_lock = root / "888-nolock"
    no_lock.mkdir()
    assert sweep_stale(str(root)) == 2
    assert not dead.exists() and not no_lock.exists()
    assert os.path.isdir(live.dir)
    # A directory whose lock someone holds is left alone.
    held = root / "777-held"
    held.mkdir()
    fd = os.open(held / "lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        assert sweep_stale(str(root)) == 0
    finally:
        os.close(fd)
