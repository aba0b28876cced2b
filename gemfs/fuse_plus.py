"""mfusepy's `FUSE` with READDIRPLUS, renameat2's flags and WRITEs without a Python copy.

READDIRPLUS: a directory listing hands the kernel each entry's attributes along with its name,
so `ls -l` of N files needs no lookup round trip per entry.

mfusepy 3.1 fills directory entries without attributes (its readdir has a TODO for
FUSE_READDIR_PLUS), and libfuse 3.14 drops attributes given without offsets anyway; the kernel
then looks every name up on its own: ~0.28 s of `ls -l` for 5,000 Files (bench/run.py,
listing). Here, when the operations object offers `readdir_plus(path, fh, offset)` -> [(name,
attrs or None)], directories are listed in libfuse's offset mode (entry i has offset i + 1, so each
kernel request resumes where the last one stopped) with full attributes. The operations object
must give the same list for the whole life of a directory handle (opendir to releasedir), or
offsets would skip or repeat names.

Writes without copies: mfusepy 3.1 hands each WRITE to Python as a `bytes` copied out of
libfuse's buffer, which `write` then copies again into the staged file; its `write_buf` reads
`struct fuse_bufvec` with a wrong layout (a pointer where libfuse has an inline array). Here an
operations object with `write_buf(path, source, offset, fh)` gets a `WriteSource`, which puts the
request's bytes into a file descriptor in the kernel: `splice` from libfuse's pipe, or one
`pwrite` from libfuse's own buffer. Having `write_buf` also keeps libfuse's FUSE_CAP_SPLICE_READ
on (libfuse clears it for a file system without one): the kernel then hands a WRITE's pages to
libfuse's pipe without a copy, when libfuse could make its pipe as large as its buffer (1 MiB +
4 KiB): past /proc/sys/fs/pipe-max-size (1 MiB by default) only with CAP_SYS_RESOURCE, so for
most users libfuse reads requests into memory as before and the pwrite path is the one taken.

Two more callbacks mfusepy 3.1 flattens: `rename` drops the renameat2 flags (here they reach
`rename(old, new, flags)`), and `open` cannot ask for direct I/O (here an operations object
with `direct_io(fh) -> bool` can, for files whose size may change between stat and read).
Everything else is mfusepy's own code.
"""

from __future__ import annotations

import ctypes
import errno
import os

import mfusepy
from mfusepy import FUSE, c_stat, set_st_attrs

FUSE_READDIR_PLUS = 1 << 0  # enum fuse_readdir_flags (libfuse 3)
FUSE_FILL_DIR_PLUS = 1 << 1  # enum fuse_fill_dir_flags (libfuse 3)
FUSE_CAP_READDIRPLUS = 1 << 13  # fuse_common.h (libfuse 3)
FUSE_CAP_READDIRPLUS_AUTO = 1 << 14
FUSE_BUF_IS_FD = 1 << 1  # enum fuse_buf_flags
FUSE_BUF_FD_SEEK = 1 << 2

# The libfuse loaded at run time (mfusepy asks its fuse_version()). FUSE passthrough (the
# kernel serves a file's reads and writes from a backing file, no request at all) needs >= 3.16
# (fuse_passthrough_open) and CAP_SYS_ADMIN; not used: it was built against 3.14 (Debian 12),
# where it cannot be tested, and would skip the quota and size checks each WRITE makes.
LIBFUSE_VERSION = (mfusepy.fuse_version_major, mfusepy.fuse_version_minor)


class fuse_buf(ctypes.Structure):  # fuse_common.h (libfuse 3); later versions only append
    _fields_ = [("size", ctypes.c_size_t), ("flags", ctypes.c_int), ("mem", ctypes.c_void_p),
                ("fd", ctypes.c_int), ("pos", ctypes.c_int64)]


class fuse_bufvec(ctypes.Structure):  # `struct fuse_buf buf[1]` is inline: only buf[0] here
    _fields_ = [("count", ctypes.c_size_t), ("idx", ctypes.c_size_t), ("off", ctypes.c_size_t),
                ("buf0", fuse_buf)]


class WriteSource:
    """The bytes of one WRITE request, still in libfuse's hands (its pipe or its buffer); valid
    only during the `write_buf` call that got it."""

    def __init__(self, bufvec) -> None:
        self._vec = bufvec.contents
        if self._vec.count != 1 or self._vec.idx != 0:
            # libfuse's do_write_buf always gives one buffer; anything else is a libfuse this
            # code does not know.
            raise OSError(errno.EIO, "unexpected fuse_bufvec in a WRITE request")
        self._buf = self._vec.buf0
        self.size = self._buf.size - self._vec.off

    def __repr__(self) -> str:  # the --debug log: its length, never its bytes
        return f"<{self.size} bytes>"

    def copy_to(self, fd: int, offset: int) -> int:
        """Write all the bytes to `fd` at `offset`, never through a Python object; returns how
        many were written (all of them, or an OSError)."""
        buf, skip, done = self._buf, self._vec.off, 0
        if buf.flags & FUSE_BUF_IS_FD:
            if buf.flags & FUSE_BUF_FD_SEEK or skip:  # libfuse gives a fresh pipe, never these
                raise OSError(errno.EIO, "unexpected fuse_buf in a WRITE request")
            while done < self.size:
                try:
                    n = os.splice(buf.fd, fd, self.size - done, offset_dst=offset + done)
                except OSError as e:
                    if e.errno != errno.EINVAL:
                        raise
                    # A staging directory on a file system that takes no splice: through memory.
                    chunk = os.read(buf.fd, min(self.size - done, 1 << 20))
                    n = _pwrite_all(fd, memoryview(chunk), offset + done) if chunk else 0
                if n <= 0:
                    raise OSError(errno.EIO, "short WRITE request in libfuse's pipe")
                done += n
        elif self.size:
            view = memoryview((ctypes.c_char * self.size).from_address(buf.mem + skip))
            done = _pwrite_all(fd, view, offset)
        # Consumed: libfuse empties (and reallocates) its pipe when `idx` says it was not.
        self._vec.off = 0
        self._vec.idx = self._vec.count
        return done


def _pwrite_all(fd: int, view: memoryview, offset: int) -> int:
    done = 0
    while done < len(view):
        n = os.pwrite(fd, view[done:], offset + done)
        if n <= 0:
            raise OSError(errno.EIO, "short write to a staged file")
        done += n
    return done


class PlusFUSE(FUSE):
    def _plus(self):
        plus = getattr(self.operations, "readdir_plus", None)
        return plus if mfusepy.fuse_version_major == 3 else None

    def init_fuse_3(self, conn, config):  # noqa: D102 (mfusepy's)
        # In "auto" mode the kernel asks for READDIRPLUS only for a directory's first chunk of
        # entries unless lookups come in between; `ls -l` reads the whole directory first, so
        # nearly every entry would still be looked up on its own. Always plus, then.
        if conn and self._plus() and conn.contents.capable & FUSE_CAP_READDIRPLUS:
            conn.contents.want |= FUSE_CAP_READDIRPLUS
            conn.contents.want &= ~FUSE_CAP_READDIRPLUS_AUTO
        return super().init_fuse_3(conn, config)

    def readdir_fuse_3(self, path, buf, filler, offset, fip, flags):  # noqa: D102 (mfusepy's)
        plus = self._plus()
        if plus is None:
            return super().readdir_fuse_3(path, buf, filler, offset, fip, flags)
        decoded = None if path is None else path.decode(self.encoding, self.errors)
        entries = plus(decoded, fip.contents.fh, offset)
        want_attrs = bool(flags & FUSE_READDIR_PLUS)
        st = c_stat()
        for index in range(max(offset, 0), len(entries)):
            name, attrs = entries[index]
            encoded = name.encode(self.encoding, self.errors)
            if attrs is None:  # '.', '..', and names the kernel should look up itself
                full = filler(buf, encoded, None, index + 1, 0)
            else:
                ctypes.memset(ctypes.byref(st), 0, ctypes.sizeof(st))
                if want_attrs:
                    set_st_attrs(st, attrs, use_ns=self.use_ns)
                    full = filler(buf, encoded, st, index + 1, FUSE_FILL_DIR_PLUS)
                else:
                    st.st_mode = attrs["st_mode"]
                    full = filler(buf, encoded, st, index + 1, 0)
            if full != 0:  # the kernel's buffer is full: it asks again from this offset
                break
        return 0

    def write_buf(self, path, bufvec, offset, fip):  # noqa: D102 (mfusepy's misreads the bufvec)
        fh = fip.contents if self.raw_fi else fip.contents.fh
        decoded = None if path is None else path.decode(self.encoding, self.errors)
        source = WriteSource(ctypes.cast(bufvec, ctypes.POINTER(fuse_bufvec)))
        return self.operations.write_buf(decoded, source, offset, fh)

    def rename_fuse_3(self, old, new, flags):  # noqa: D102 (mfusepy's drops the flags)
        # renameat2 flags reach the operations: RENAME_EXCHANGE must be refused, not done as a
        # plain rename that deletes one of the two Files.
        return self.operations.rename(old.decode(self.encoding, self.errors),
                                      new.decode(self.encoding, self.errors), flags)

    def open(self, path, fip):  # noqa: D102 (mfusepy's, plus direct_io)
        result = super().open(path, fip)
        wants = getattr(self.operations, "direct_io", None)
        if wants is not None and not self.raw_fi and wants(fip.contents.fh):
            fip.contents.direct_io = 1
        return result
