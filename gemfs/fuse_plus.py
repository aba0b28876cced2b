"""mfusepy's `FUSE` with READDIRPLUS, renameat2's flags and WRITEs without a Python copy.

READDIRPLUS: a directory listing hands the kernel each entry's attributes along with its name,
so `ls -l` of N files needs no lookup round trip per entry.

mfusepy 3.1 fills directory entries without attributes (its readdir has a TODO for
FUSE_READDIR_PLUS), and libfuse 3.14 drops attributes given without offsets anyway; the kernel
then looks every name up on its own: ~0.28 s of `ls -l` for 5,000 Files (bench/run.py,
listing). contrib/mfusepy-readdirplus/ offers mfusepy the feature: an Operations method
`readdir_plus(path, offset, fh)` that yields `(name, attrs or None, offset)` with non-zero
offsets (libfuse's offset mode: each kernel request resumes after the last entry it took), whose
attributes reach the kernel with FUSE_FILL_DIR_PLUS when it asks for READDIRPLUS. GemFS
implements that method.

While mfusepy lacks it, `_ReaddirPlusBackport` below does the same through mfusepy's internals
(`init_fuse_3`, `readdir_fuse_3`, `use_ns`). Which one runs is decided at import by feature
detection, `has_readdir_plus(mfusepy)`: mfusepy's Operations has a `readdir_plus` with the
offered parameters. The day mfusepy ships it, its own code is used and the backport is dead
code to delete; if mfusepy ships it in another shape, the backport stays in use, and
tests/mount/test_readdirplus.py fails if READDIRPLUS silently stops working either way.

Always READDIRPLUS, not the kernel's "auto" mode, is GemFS's own choice (its init_with_config).

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
import inspect
import os
from types import ModuleType

import mfusepy

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
        """Write the bytes to `fd` at `offset`, never through a Python object; returns how many
        were written. A failure after some bytes landed is a short write (their count), as
        pwrite's own would be, so the caller counts what the file holds; the writer sends the
        rest again and meets the error then. A failure before any is an OSError."""
        buf, skip = self._buf, self._vec.off
        done = 0

        def put(view: memoryview) -> None:
            nonlocal done
            at = 0
            while at < len(view):
                n = os.pwrite(fd, view[at:], offset + done)
                if n <= 0:
                    raise OSError(errno.EIO, "short write to a staged file")
                at += n
                done += n

        try:
            if buf.flags & FUSE_BUF_IS_FD:
                if buf.flags & FUSE_BUF_FD_SEEK or skip:  # libfuse gives a fresh pipe, never these
                    raise OSError(errno.EIO, "unexpected fuse_buf in a WRITE request")
                while done < self.size:
                    try:
                        n = os.splice(buf.fd, fd, self.size - done, offset_dst=offset + done)
                    except OSError as e:
                        if e.errno != errno.EINVAL:
                            raise
                        # A staging directory on a file system that takes no splice: by memory.
                        chunk = os.read(buf.fd, min(self.size - done, 1 << 20))
                        if not chunk:
                            raise OSError(errno.EIO, "short WRITE request in libfuse's pipe") from e
                        put(memoryview(chunk))
                        continue
                    if n <= 0:
                        raise OSError(errno.EIO, "short WRITE request in libfuse's pipe")
                    done += n
            elif self.size:
                put(memoryview((ctypes.c_char * self.size).from_address(buf.mem + skip)))
        except OSError:
            if not done:
                raise
        if done == self.size:
            # Consumed. Left unmarked (an error, a short write), libfuse empties its pipe itself,
            # so no byte of this request is read as the next one's.
            self._vec.off = 0
            self._vec.idx = self._vec.count
        return done


# The parameters of Operations.readdir_plus as contrib/mfusepy-readdirplus offers it.
READDIR_PLUS_PARAMETERS = ["self", "path", "offset", "fh"]


def has_readdir_plus(module: ModuleType) -> bool:
    """Whether this mfusepy module hands `Operations.readdir_plus`'s attributes to the kernel
    itself: it declares the method with the parameters offered upstream. A method of that name
    with other parameters is not ours: GemFS's would be called wrongly, so the backport stays."""
    method = getattr(getattr(module, "Operations", None), "readdir_plus", None)
    if method is None:
        return False
    try:
        return list(inspect.signature(method).parameters) == READDIR_PLUS_PARAMETERS
    except (TypeError, ValueError):
        return False


def _readdir_plus(operations):
    method = getattr(operations, "readdir_plus", None)
    return None if method is None or getattr(method, "libfuse_ignore", False) else method


class _ReaddirPlusBackport:
    """contrib/mfusepy-readdirplus's `readdir_plus` on an mfusepy that lacks it (libfuse 3)."""

    def init_fuse_3(self, conn, config):  # noqa: D102 (mfusepy's)
        if conn and _readdir_plus(self.operations) and conn.contents.capable & FUSE_CAP_READDIRPLUS:
            conn.contents.want |= FUSE_CAP_READDIRPLUS
        return super().init_fuse_3(conn, config)

    def readdir_fuse_3(self, path, buf, filler, offset, fip, flags):  # noqa: D102 (mfusepy's)
        plus = _readdir_plus(self.operations)
        if plus is None:
            return super().readdir_fuse_3(path, buf, filler, offset, fip, flags)
        decoded = None if path is None else path.decode(self.encoding, self.errors)
        want_attrs = bool(flags & FUSE_READDIR_PLUS)
        st = mfusepy.c_stat()
        for name, attrs, entry_offset in plus(decoded, offset, fip.contents.fh):
            # The whole struct goes to the kernel: nothing may be left from the previous entry.
            ctypes.memset(ctypes.byref(st), 0, ctypes.sizeof(st))
            fill_flags = 0
            if isinstance(attrs, dict) and want_attrs:
                mfusepy.set_st_attrs(st, attrs, use_ns=self.use_ns)
                fill_flags = FUSE_FILL_DIR_PLUS
            elif isinstance(attrs, dict):  # only the type (and inode) reach a plain READDIR
                for key in ("st_mode", "st_ino"):
                    if key in attrs:
                        setattr(st, key, attrs[key])
            elif isinstance(attrs, int):
                st.st_mode = attrs
            encoded = name.encode(self.encoding, self.errors)
            if filler(buf, encoded, None if attrs is None else st, entry_offset, fill_flags) != 0:
                break  # the kernel's buffer is full: it asks again from this offset
        return 0


class _Flags:
    """What mfusepy 3.1's callbacks drop or misread: the renameat2 flags, direct I/O, and
    write_buf's bufvec."""

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


def fuse_class(module: ModuleType) -> type:
    """`module.FUSE` with `_Flags`, and with the READDIRPLUS backport unless `module` has it."""
    backport = () if has_readdir_plus(module) else (_ReaddirPlusBackport,)
    return type("PlusFUSE", (_Flags, *backport, module.FUSE), {"__module__": __name__})


PlusFUSE = fuse_class(mfusepy)
