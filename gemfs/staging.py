"""Local staging of written files on disk (never RAM), the write-time limits, and cleanup.

Each daemon owns one directory `<root>/<pid>-<random>/` and holds an flock on its `lock` file for
its whole life; a directory whose lock can be taken belongs to a dead daemon and is swept at the
next start. Staged names are random, so a display name (which may hold '../') never becomes a
path here.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import secrets
import shutil
import threading

from gemfs.errors import GemfsError

log = logging.getLogger(__name__)


class StagedFile:
    """One staged file: a descriptor on an unnamed-by-the-user file in the staging directory."""

    def __init__(self, area: "StagingArea", path: str, counted: bool = True) -> None:
        self._area = area
        self._counted = counted  # written bytes count against the quota (downloads do not)
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        self.size = 0  # guarded by the owner's lock (fs.Pending.lock)

    def write(self, data: bytes, offset: int) -> int:
        return self.write_from(len(data), offset, lambda fd, at: os.pwrite(fd, data, at))

    def write_from(self, length: int, offset: int, copy) -> int:
        """Write `length` bytes at `offset` by `copy(fd, offset) -> bytes written` (a pwrite, or
        a splice from libfuse's pipe: fuse_plus.WriteSource), counted against the quota."""
        end = offset + length
        if end > self._area.max_file_size:
            raise GemfsError(errno.EFBIG, "file larger than the Files API allows")
        growth = max(end - self.size, 0) if self._counted else 0
        self._area.reserve(growth)
        try:
            written = copy(self.fd, offset)
        except OSError:
            self._area.release(growth)  # ENOSPC and friends: the kernel hands the errno to the writer
            raise
        new_size = max(self.size, offset + written)
        if self._counted:
            self._area.release(growth - (new_size - self.size))  # a short write reserves less
        self.size = new_size
        return written

    def truncate(self, length: int) -> None:
        if length > self._area.max_file_size:
            raise GemfsError(errno.EFBIG, "file larger than the Files API allows")
        if self._counted:
            self._area.reserve(max(length - self.size, 0))
        try:
            os.ftruncate(self.fd, length)
        except OSError:
            if self._counted:
                self._area.release(max(length - self.size, 0))
            raise
        if self._counted:
            self._area.release(max(self.size - length, 0))
        self.size = length

    def copy_from(self, fd: int, size: int) -> None:
        """Fill an empty staged file with `size` bytes of `fd` (a cached File edited in place),
        in the kernel where it can (copy_file_range), counted against the quota like writes."""
        self.truncate(size)  # reserves the bytes, and fails before copying when they don't fit
        done = 0
        while done < size:
            n = os.copy_file_range(fd, self.fd, size - done, done, done)
            if n == 0:
                raise GemfsError(errno.EIO, "the cached bytes are shorter than their File")
            done += n

    def read(self, size: int, offset: int) -> bytes:
        return os.pread(self.fd, size, offset)

    def head(self, size: int) -> bytes:
        return os.pread(self.fd, min(size, self.size), 0)

    def disown(self) -> str:
        """Hand the staged file over (to the content cache or the held-files store, which move it
        away by rename): close the fd and stop counting its bytes, but leave the file on disk.
        Returns its path; a later discard() is a no-op."""
        path = self.path
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
            if self._counted:
                self._area.release(self.size)
        return path

    def discard(self) -> None:
        if self.fd < 0:
            return
        os.close(self.fd)
        self.fd = -1
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        if self._counted:
            self._area.release(self.size)


class StagingArea:
    """The daemon's staging directory and the byte budget shared by all its staged files."""

    def __init__(self, root: str, *, max_file_size: int, quota_left) -> None:
        """`quota_left()` gives the bytes the project may still take, not counting staging."""
        self.max_file_size = max_file_size
        self._quota_left = quota_left
        self._lock = threading.Lock()
        self._staged = 0  # guarded by _lock: bytes held by live staged files
        os.makedirs(root, mode=0o700, exist_ok=True)
        self.swept = sweep_stale(root)
        self.dir = os.path.join(root, f"{os.getpid()}-{secrets.token_hex(4)}")
        os.mkdir(self.dir, 0o700)
        self._lock_fd = os.open(os.path.join(self.dir, "lock"), os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    @property
    def staged_bytes(self) -> int:
        with self._lock:
            return self._staged

    def new_file(self, counted: bool = True) -> StagedFile:
        return StagedFile(self, os.path.join(self.dir, secrets.token_hex(8) + ".part"), counted)

    def reserve(self, nbytes: int) -> None:
        if nbytes <= 0:
            return
        with self._lock:
            if self._staged + nbytes > self._quota_left():
                raise GemfsError(errno.EDQUOT, "project quota would be exceeded")
            self._staged += nbytes

    def release(self, nbytes: int) -> None:
        with self._lock:
            self._staged = max(self._staged - nbytes, 0)

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        os.close(self._lock_fd)


def sweep_stale(root: str) -> int:
    """Remove staging directories of daemons that are gone; returns how many were removed."""
    removed = 0
    for entry in os.listdir(root):
        path = os.path.join(root, entry)
        lock = os.path.join(path, "lock")
        if not os.path.isdir(path):
            continue
        try:
            fd = os.open(lock, os.O_RDWR)
        except FileNotFoundError:
            fd = None
        try:
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                continue  # a live daemon holds it
            raise
        finally:
            if fd is not None:
                os.close(fd)
        log.info("removing stale staging directory %s", path)
        shutil.rmtree(path, ignore_errors=True)
        removed += 1
    return removed
