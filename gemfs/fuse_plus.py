"""mfusepy's `FUSE` with READDIRPLUS and renameat2's flags.

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

Two more callbacks mfusepy 3.1 flattens: `rename` drops the renameat2 flags (here they reach
`rename(old, new, flags)`), and `open` cannot ask for direct I/O (here an operations object
with `direct_io(fh) -> bool` can, for files whose size may change between stat and read).
Everything else is mfusepy's own code.
"""

from __future__ import annotations

import ctypes

import mfusepy
from mfusepy import FUSE, c_stat, set_st_attrs

FUSE_READDIR_PLUS = 1 << 0  # enum fuse_readdir_flags (libfuse 3)
FUSE_FILL_DIR_PLUS = 1 << 1  # enum fuse_fill_dir_flags (libfuse 3)
FUSE_CAP_READDIRPLUS = 1 << 13  # fuse_common.h (libfuse 3)
FUSE_CAP_READDIRPLUS_AUTO = 1 << 14


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
