"""fuse_plus.WriteSource: a WRITE request's bytes go from libfuse's buffer or pipe into a staged
file in the kernel, and libfuse is told they were consumed. The bufvecs here are built as
libfuse 3's do_write_buf builds them (one buffer: memory, or the read end of a pipe)."""

import ctypes
import errno
import os

import pytest

from gemfs.errors import GemfsError
from gemfs.fuse_plus import FUSE_BUF_IS_FD, WriteSource, fuse_bufvec
from gemfs.staging import StagingArea


def staged(tmp_path, quota=1 << 30, max_file_size=1 << 30):
    area = StagingArea(str(tmp_path / "staging"), max_file_size=max_file_size,
                       quota_left=lambda: quota)
    return area, area.new_file()


def memory_vec(data: bytes, off: int = 0):
    backing = ctypes.create_string_buffer(data, len(data))
    vec = fuse_bufvec(count=1, idx=0, off=off)
    vec.buf0.size, vec.buf0.flags, vec.buf0.mem = len(data), 0, ctypes.addressof(backing)
    return vec, backing  # the caller keeps `backing` alive


def test_bufvec_matches_libfuse3_layout():
    # size_t count, idx, off; struct fuse_buf {size_t size; int flags; void *mem; int fd;
    # off_t pos;} on x86-64/aarch64.
    assert ctypes.sizeof(fuse_bufvec) == 64
    assert fuse_bufvec.buf0.offset == 24


def test_from_memory_lands_at_the_offset_and_is_consumed(tmp_path):
    area, f = staged(tmp_path)
    data = os.urandom(300_000)
    vec, _backing = memory_vec(data)
    source = WriteSource(ctypes.pointer(vec))
    assert source.size == len(data) and repr(source) == "<300000 bytes>"
    assert f.write_from(source.size, 4096, source.copy_to) == len(data)
    assert f.size == 4096 + len(data) and area.staged_bytes == f.size
    assert f.read(len(data), 4096) == data and f.read(4096, 0) == b"\0" * 4096
    assert vec.idx == vec.count  # libfuse would otherwise reset its pipe


def test_from_memory_honours_the_bufvec_offset(tmp_path):
    _, f = staged(tmp_path)
    vec, _backing = memory_vec(b"HEADERpayload", off=6)
    source = WriteSource(ctypes.pointer(vec))
    assert f.write_from(source.size, 0, source.copy_to) == 7
    assert f.read(100, 0) == b"payload"


def test_from_a_pipe_is_spliced(tmp_path):
    _, f = staged(tmp_path)
    r, w = os.pipe()
    try:
        data = os.urandom(50_000)  # less than a pipe holds by default
        assert os.write(w, data) == len(data)
        vec = fuse_bufvec(count=1, idx=0, off=0)
        vec.buf0.size, vec.buf0.flags, vec.buf0.fd = len(data), FUSE_BUF_IS_FD, r
        source = WriteSource(ctypes.pointer(vec))
        assert f.write_from(source.size, 10, source.copy_to) == len(data)
        assert f.read(len(data), 10) == data and f.size == 10 + len(data)
        assert vec.idx == vec.count
        os.set_blocking(r, False)
        with pytest.raises(BlockingIOError):
            os.read(r, 1)  # every byte left the pipe
    finally:
        os.close(r)
        os.close(w)


def test_a_refused_write_leaves_the_request_unconsumed(tmp_path):
    # EFBIG before any byte moves: libfuse sees idx < count and empties its pipe itself.
    _, f = staged(tmp_path, max_file_size=100)
    vec, _backing = memory_vec(b"x" * 200)
    source = WriteSource(ctypes.pointer(vec))
    with pytest.raises(GemfsError) as info:
        f.write_from(source.size, 0, source.copy_to)
    assert info.value.errno == errno.EFBIG
    assert vec.idx == 0 and f.size == 0


def test_an_unknown_bufvec_is_eio_not_a_wild_read():
    vec = fuse_bufvec(count=2, idx=0, off=0)
    with pytest.raises(OSError) as info:
        WriteSource(ctypes.pointer(vec))
    assert info.value.errno == errno.EIO


def test_a_target_that_refuses_splice_gets_the_bytes_through_memory(tmp_path):
    # splice(2) into an O_APPEND file is EINVAL, as into a file system without splice support.
    target = os.open(tmp_path / "t", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    r, w = os.pipe()
    try:
        data = os.urandom(20_000)
        os.write(w, data)
        with pytest.raises(OSError) as info:
            os.splice(r, target, 1)
        assert info.value.errno == errno.EINVAL
        vec = fuse_bufvec(count=1, idx=0, off=0)
        vec.buf0.size, vec.buf0.flags, vec.buf0.fd = len(data), FUSE_BUF_IS_FD, r
        assert WriteSource(ctypes.pointer(vec)).copy_to(target, 0) == len(data)
        assert (tmp_path / "t").read_bytes() == data and vec.idx == vec.count
    finally:
        for fd in (r, w, target):
            os.close(fd)


def test_a_failure_after_some_bytes_is_a_short_write(tmp_path, monkeypatch):
    """pwrite lands 50,000 bytes, then the disk is full: the WRITE answers 50,000 (the writer
    sends the rest again and meets ENOSPC itself), the staged size counts just those, and the request is not marked consumed (libfuse then empties its pipe itself)."""
    area, f = staged(tmp_path)
    data = os.urandom(200_000)
    vec, _backing = memory_vec(data)
    real_pwrite, calls = os.pwrite, []

    def disk_fills(fd, view, at):
        calls.append(at)
        if len(calls) == 1:
            return real_pwrite(fd, view[:50_000], at)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", disk_fills)
    source = WriteSource(ctypes.pointer(vec))
    assert f.write_from(source.size, 0, source.copy_to) == 50_000
    monkeypatch.undo()
    assert calls == [0, 50_000]
    assert f.size == 50_000 and os.fstat(f.fd).st_size == 50_000
    assert vec.idx == 0
    with open(f.path, "rb") as staged_bytes:
        assert staged_bytes.read() == data[:50_000]
    calls.clear()
    monkeypatch.setattr(os, "pwrite", disk_fills)
    calls.append("first call already made")  # every pwrite now fails: nothing lands
    vec2, _backing2 = memory_vec(b"x" * 10)
    source = WriteSource(ctypes.pointer(vec2))
    with pytest.raises(OSError) as failed:
        f.write_from(source.size, 50_000, source.copy_to)
    assert failed.value.errno == errno.ENOSPC and f.size == 50_000
