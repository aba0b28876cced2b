"""The mfusepy `Operations` of a gemfs mount: each operation resolves a path against the pending
writes and the catalog, and delegates to `staging`, `remote`, `sidecar` and `mime`.

Where bytes go (docs/SEMANTICS.md):
- create/open-for-write stage the file on local disk (`Pending`); `flush` (close) uploads it
  synchronously and returns the upload's errno, so `cp` fails when the upload failed;
- `release` never uploads (the kernel drops its result): it only frees the staged copy;
- temp names of rsync, GIO and editors are held at close and uploaded once, under the final
  name, by the `rename` that follows.
"""

from __future__ import annotations

import base64
import binascii
import errno
import itertools
import logging
import os
import re
import stat
import threading
import time
from dataclasses import dataclass, field

from mfusepy import Operations, fuse_get_context

from gemfs import mime, sidecar
from gemfs.catalog import Catalog, DirNode, FileNode, Path, split_path
from gemfs.errors import GemfsError, fuse_op
from gemfs.model import FileRecord
from gemfs.remote import Remote
from gemfs.staging import StagedFile, StagingArea

log = logging.getLogger(__name__)

# Temp files that are renamed right after close: rsync's `.name.XXXXXX`, GIO's
# `.goutputstream-XXXXXX` (file managers), vim/emacs swap and lock files, browser partials.
TEMP_NAME = re.compile(
    r"^\..+\.[A-Za-z0-9]{6}$|^\.goutputstream-|^\.#|\.sw[a-p]$|\.(part|crdownload)$"
)

BLOCK = 4096
# The st_blksize of files: cp (and most tools) write in pieces of max(st_blksize, 128 KiB), and
# each piece is one FUSE request through Python. 1 MiB, libfuse's largest write, cut staging a
# 1 GiB cp from ~2.5 s to ~0.7 s (bench/run.py, big_upload).
IO_BLOCK = 1 << 20


def new_name(path: str) -> Path:
    """The parts of a path about to be created, refused with EINVAL unless they are UTF-8.

    Linux names are bytes and display names Unicode: mfusepy hands undecodable bytes over as
    lone surrogates, which the API refuses (400). Saying so at create, before any byte is
    staged, beats failing at close.
    """
    parts = split_path(path)
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise GemfsError(errno.EINVAL, "file names must be UTF-8") from None
    return parts


def is_temp_name(name: str) -> bool:
    return bool(TEMP_NAME.search(name))


@dataclass(eq=False)
class Pending:
    """A file written through this mount that is not (or not only) remote yet."""

    path: Path  # guarded by GemFS._lock
    staged: StagedFile
    replaces: list[FileRecord]  # guarded by lock: remote Files this upload retires once it is in
    lock: threading.Lock = field(default_factory=threading.Lock)  # orders writes vs upload
    handles: int = 0  # guarded by GemFS._lock
    dirty: bool = True  # guarded by lock: bytes not uploaded yet
    error: int | None = None  # guarded by lock: a write failed; close reports it, nothing goes up
    unlinked: bool = False  # guarded by GemFS._lock
    mtime: float = field(default_factory=time.time)

    @property
    def held(self) -> bool:
        return is_temp_name(self.path[-1])


@dataclass(eq=False)
class DirHandle:
    """An open directory: the entries its listing pages through (fuse_plus.py)."""

    path: str
    entries: list | None = None  # guarded by lock
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass(eq=False)
class ReadHandle:
    data: bytes | None = None  # a sidecar
    staged: StagedFile | None = None  # a downloaded generated File


class GemFS(Operations):
    use_ns = True

    def __init__(
        self,
        remote: Remote,
        catalog: Catalog,
        staging: StagingArea,
        *,
        quota: int,
        show_meta: bool = False,
        read_only: bool = False,
        attr_timeout: float = 1.0,
        on_ready=None,
    ) -> None:
        self.remote = remote
        self.mountpoint = ""  # set by mount.py; to recognise our files in /proc/PID/fd
        self.catalog = catalog
        self.staging = staging
        self.quota = quota
        self.show_meta = show_meta
        self.read_only = read_only
        self.attr_timeout = attr_timeout
        self.on_ready = on_ready
        self.uid, self.gid = os.getuid(), os.getgid()
        self.started = time.time()
        self._lock = threading.Lock()
        self._pending: dict[Path, Pending] = {}  # guarded by _lock
        self._handles: dict[int, Pending | ReadHandle] = {}  # guarded by _lock
        self._next_fh = itertools.count(1)
        self._uploads: dict[int, dict] = {}  # guarded by _lock: id(Pending) -> progress
        self._draining = False  # guarded by _lock

    # -- lifecycle ------------------------------------------------------------------------------

    def init_with_config(self, conn, config) -> None:
        if config is not None:
            # Attributes come from our snapshot, so the kernel may keep them briefly; a longer
            # entry cache would hide other clients' uploads past the listing TTL.
            config.attr_timeout = self.attr_timeout
            config.entry_timeout = self.attr_timeout
            config.negative_timeout = self.attr_timeout
            # Without hard_remove, libfuse renames an open file that is unlinked to
            # .fuse_hidden*, and that name would be uploaded at close.
            config.hard_remove = 1
        if self.on_ready:
            self.on_ready()

    def status(self) -> dict:
        with self._lock:
            uploads = [dict(u) for u in self._uploads.values()]
            pending = len(self._pending)
        return {
            "uploads": uploads,
            "pending_files": pending,
            "staged_bytes": self.staging.staged_bytes,
            "quota_bytes": self.quota,
            "api_calls": self.remote.calls,
            **self.catalog.stats(),
        }

    def drain(self) -> None:
        """Refuse new writes from now on (unmount in progress)."""
        with self._lock:
            self._draining = True

    def held_files(self) -> list[Pending]:
        with self._lock:
            return [p for p in self._pending.values() if p.held and p.handles == 0 and p.dirty]

    def upload_held(self) -> None:
        """At unmount: temp-named files that were never renamed still go up, under their names."""
        for p in self.held_files():
            try:
                self._upload(p, force=True)
            except GemfsError as e:
                log.error("could not upload %s at unmount: %s", "/".join(p.path), e)
            self._forget(p)

    # -- resolution -----------------------------------------------------------------------------

    def _quota_left(self) -> int:
        return self.quota - self.catalog.used_bytes()

    def _dir_exists(self, path: Path) -> bool:
        return path == () or isinstance(self.catalog.lookup(path), DirNode)

    def _sidecar_record(self, path: Path) -> FileRecord | None:
        owner = sidecar.split(path[-1]) if path else None
        if owner is None:
            return None
        node = self.catalog.lookup(path[:-1] + (owner,))
        return node.record if isinstance(node, FileNode) else None

    def _new_handle(self, obj: Pending | ReadHandle) -> int:
        fh = next(self._next_fh)
        self._handles[fh] = obj
        return fh

    def _handle(self, fh: int) -> Pending | ReadHandle:
        with self._lock:
            obj = self._handles.get(fh)
        if obj is None:
            raise GemfsError(errno.EBADF)
        return obj

    def _file_attrs(self, mode: int, size: int, mtime: float, ctime: float | None = None) -> dict:
        ns = int(mtime * 1e9)
        return {
            "st_mode": stat.S_IFREG | mode,
            "st_nlink": 1,
            "st_size": size,
            "st_blocks": (size + 511) // 512,
            "st_blksize": IO_BLOCK,
            "st_uid": self.uid,
            "st_gid": self.gid,
            "st_mtime": ns,
            "st_atime": ns,
            "st_ctime": int((ctime or mtime) * 1e9),
        }

    def _dir_attrs(self) -> dict:
        ns = int(self.started * 1e9)
        return {
            "st_mode": stat.S_IFDIR | 0o755,
            "st_nlink": 2,
            "st_uid": self.uid,
            "st_gid": self.gid,
            "st_mtime": ns,
            "st_atime": ns,
            "st_ctime": ns,
        }

    # -- metadata -------------------------------------------------------------------------------

    @fuse_op
    def getattr(self, path: str, fh=None) -> dict:
        parts = split_path(path)
        if not parts:
            return self._dir_attrs()
        with self._lock:
            pending = self._pending.get(parts)
        if pending is not None:
            return self._pending_attrs(pending)
        node = self.catalog.lookup(parts)
        if node is not None:
            return self._node_attrs(node)
        record = self._sidecar_record(parts)
        if record is not None:
            return self._file_attrs(0o444, len(sidecar.render(record)), record.update_time)
        raise GemfsError(errno.ENOENT)

    @fuse_op
    def readdir(self, path: str, fh=None):
        return [name for name, _ in self._entries(path, with_attrs=False)]

    @fuse_op
    def opendir(self, path: str) -> int:
        parts = split_path(path)
        if parts and not self._dir_exists(parts):
            raise GemfsError(errno.ENOTDIR if self._exists(parts) else errno.ENOENT)
        with self._lock:
            return self._new_handle(DirHandle(path))

    @fuse_op
    def releasedir(self, path: str, fh: int) -> int:
        with self._lock:
            self._handles.pop(fh, None)
        return 0

    @fuse_op
    def readdir_plus(self, path: str, fh: int, offset: int = 0) -> list[tuple[str, dict | None]]:
        """The entries of an open directory with their attributes (READDIRPLUS, fuse_plus.py).
        A listing from the start (offset 0: after opendir, or a rewinddir) takes them from the
        catalog; the requests that continue it page through that same list."""
        with self._lock:
            handle = self._handles.get(fh)
        if not isinstance(handle, DirHandle):
            return self._entries(path, with_attrs=True)
        with handle.lock:
            if handle.entries is None or offset == 0:
                handle.entries = self._entries(path, with_attrs=True)
            return handle.entries

    def _entries(self, path: str, *, with_attrs: bool) -> list[tuple[str, dict | None]]:
        parts = split_path(path)
        entries = self.catalog.listdir(parts)
        if entries is None:
            raise GemfsError(errno.ENOENT)
        out: list[tuple[str, dict | None]] = [(".", None), ("..", None)]
        with self._lock:
            local = {p.path[-1]: p for p in self._pending.values() if p.path[:-1] == parts}
        for name, node in entries.items():
            attrs = None
            if with_attrs:
                pending = local.get(name)
                if pending is not None:  # being written here: its local size, as getattr says
                    attrs = self._pending_attrs(pending)
                else:
                    attrs = self._node_attrs(node)
            out.append((name, attrs))
        if self.show_meta:
            # A sidecar's size means rendering it; the kernel looks those up when asked.
            out.extend((n + sidecar.SUFFIX, None) for n, node in entries.items()
                       if isinstance(node, FileNode))
        out.extend((n, self._pending_attrs(p) if with_attrs else None)
                   for n, p in local.items() if n not in entries)
        return out

    def _pending_attrs(self, pending: Pending) -> dict:
        # A file being written: its local size, writable until its upload.
        return self._file_attrs(0o644, pending.staged.size, pending.mtime)

    def _node_attrs(self, node) -> dict:
        if isinstance(node, DirNode):
            return self._dir_attrs()
        r = node.record
        # Uploaded bytes can never be read back: 0200 tells tools so before they try.
        mode = 0o444 if r.generated else 0o200
        return self._file_attrs(mode, r.size, r.update_time, r.update_time)

    @fuse_op
    def statfs(self, path: str) -> dict:
        used = self.catalog.used_bytes() + self.staging.staged_bytes
        free = max(self.quota - used, 0) // BLOCK
        return {
            "f_bsize": BLOCK,
            "f_frsize": BLOCK,
            "f_blocks": self.quota // BLOCK,
            "f_bfree": free,
            "f_bavail": free,
            "f_files": self.catalog.stats()["files"],
            "f_ffree": 1 << 20,
            "f_favail": 1 << 20,
            "f_namemax": 255,
        }

    @fuse_op
    def chmod(self, path: str, mode: int) -> int:
        self.getattr(path)  # accepted and ignored, so cp -p and rsync -a work
        return 0

    @fuse_op
    def chown(self, path: str, uid: int, gid: int) -> int:
        self.getattr(path)
        return 0

    @fuse_op
    def utimens(self, path: str, times=None) -> int:
        parts = split_path(path)
        with self._lock:
            pending = self._pending.get(parts)
        if pending is not None and times:
            pending.mtime = times[1] / 1e9
            return 0
        self.getattr(path)
        return 0

    # -- directories ----------------------------------------------------------------------------

    @fuse_op
    def mkdir(self, path: str, mode: int) -> int:
        parts = new_name(path)
        self._refuse_trash(parts)
        self._check_writable()
        if not self._dir_exists(parts[:-1]):
            raise GemfsError(errno.ENOENT)
        if self._exists(parts):
            raise GemfsError(errno.EEXIST)
        self.catalog.add_dir(parts)
        return 0

    @fuse_op
    def rmdir(self, path: str) -> int:
        parts = split_path(path)
        entries = self.catalog.listdir(parts)
        if entries is None:
            raise GemfsError(errno.ENOENT if not self._exists(parts) else errno.ENOTDIR)
        with self._lock:
            busy = any(p.path[: len(parts)] == parts for p in self._pending.values())
        if entries or busy:
            raise GemfsError(errno.ENOTEMPTY)
        self.catalog.remove_dir(parts)
        return 0

    def _exists(self, parts: Path) -> bool:
        with self._lock:
            if parts in self._pending:
                return True
        return self.catalog.lookup(parts) is not None or self._sidecar_record(parts) is not None

    # -- files ----------------------------------------------------------------------------------

    def _check_writable(self) -> None:
        if self.read_only:
            raise GemfsError(errno.EROFS)
        with self._lock:
            if self._draining:
                raise GemfsError(errno.EROFS, "unmount in progress")

    def _start_pending(self, parts: Path, replaces: FileRecord | None) -> int:
        """A new staged file at `parts`, opened once; returns its handle."""
        self._check_writable()
        staged = self.staging.new_file()
        with self._lock:
            old = self._pending.get(parts)
            if old is not None and old.handles:
                staged.discard()
                raise GemfsError(errno.ETXTBSY, "file is being written")
            if old is not None:
                del self._pending[parts]
            p = Pending(parts, staged, [replaces] if replaces else [], handles=1)
            self._pending[parts] = p
            fh = self._new_handle(p)
        if old is not None:
            with old.lock:
                old.staged.discard()
        return fh

    @fuse_op
    def create(self, path: str, mode: int, flags: int = 0) -> int:
        parts = new_name(path)
        if not self._dir_exists(parts[:-1]):
            raise GemfsError(errno.ENOENT)
        if self._sidecar_record(parts) is not None:
            raise GemfsError(errno.EACCES, "sidecars are read-only")
        node = self.catalog.lookup(parts)
        if isinstance(node, DirNode):
            raise GemfsError(errno.EISDIR)
        return self._start_pending(parts, node.record if isinstance(node, FileNode) else None)

    @fuse_op
    def open(self, path: str, flags: int) -> int:
        parts = split_path(path)
        writing = (flags & os.O_ACCMODE) != os.O_RDONLY
        with self._lock:
            pending = self._pending.get(parts)
            if pending is not None:
                pending.handles += 1
                fh = self._new_handle(pending)
        if pending is not None:
            if writing and (flags & os.O_TRUNC):
                # Never under self._lock: an upload holds pending.lock for its whole length.
                with pending.lock:
                    pending.staged.truncate(0)
                    pending.dirty, pending.error = True, None
            return fh
        node = self.catalog.lookup(parts)
        if isinstance(node, DirNode):
            raise GemfsError(errno.EISDIR)
        if isinstance(node, FileNode):
            if writing:
                if not flags & os.O_TRUNC:
                    raise GemfsError(errno.EPERM, "an uploaded File has no bytes to append to")
                return self._start_pending(parts, node.record)
            if not node.record.generated:
                raise GemfsError(errno.EACCES, "uploaded Files cannot be downloaded")
            return self._open_download(node.record)
        record = self._sidecar_record(parts)
        if record is not None:
            if writing:
                raise GemfsError(errno.EACCES, "sidecars are read-only")
            with self._lock:
                return self._new_handle(ReadHandle(data=sidecar.render(record)))
        raise GemfsError(errno.ENOENT)

    def _open_download(self, record: FileRecord) -> int:
        staged = self.staging.new_file(counted=False)  # a download is not quota
        try:
            self.remote.download(record.id, staged.path)
            staged.size = os.path.getsize(staged.path)
        except BaseException:
            staged.discard()
            raise
        with self._lock:
            return self._new_handle(ReadHandle(staged=staged))

    @fuse_op
    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        obj = self._handle(fh)
        if isinstance(obj, ReadHandle):
            if obj.data is not None:
                return obj.data[offset : offset + size]
            return obj.staged.read(size, offset)
        with obj.lock:
            return obj.staged.read(size, offset)

    @fuse_op
    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        obj = self._handle(fh)
        if not isinstance(obj, Pending):
            raise GemfsError(errno.EBADF)
        with obj.lock:
            try:
                written = obj.staged.write(data, offset)
            except OSError as e:
                obj.error = e.errno
                raise
            except GemfsError as e:
                obj.error = e.errno
                raise
            obj.dirty = True
            obj.mtime = time.time()
        return written

    @fuse_op
    def truncate(self, path: str, length: int, fh=None) -> int:
        parts = split_path(path)
        with self._lock:
            pending = self._pending.get(parts)
        if pending is None:
            if self._sidecar_record(parts) is not None:
                raise GemfsError(errno.EACCES, "sidecars are read-only")
            if isinstance(self.catalog.lookup(parts), FileNode):
                raise GemfsError(errno.EPERM, "open an uploaded File with O_TRUNC to replace it")
            raise GemfsError(errno.ENOENT)
        with pending.lock:
            try:
                pending.staged.truncate(length)
            except (OSError, GemfsError) as e:
                pending.error = e.errno
                raise
            pending.dirty = True
            pending.mtime = time.time()
        return 0

    @fuse_op
    def flush(self, path: str, fh: int) -> int:
        obj = self._handle(fh)
        if isinstance(obj, Pending) and not self._caller_keeps_it_open(obj):
            self._upload(obj)
        return 0

    def _caller_keeps_it_open(self, p: Pending) -> bool:
        """Does the closing process hold another descriptor of this file?

        Shell redirects and dd open the file, dup2 it and close the first descriptor before
        writing: that FLUSH must not upload an empty file. The last close uploads instead.
        Reading /proc/PID/fd resolves names in the kernel without calling into this mount.
        """
        pid = fuse_get_context()[2]
        if pid <= 0 or not self.mountpoint:
            return False
        with self._lock:
            target = os.path.join(self.mountpoint, *p.path)
        folder = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(folder)
        except OSError:
            return False
        count = 0
        for fd in fds:
            try:
                if os.readlink(os.path.join(folder, fd)) == target:
                    count += 1
            except OSError:
                continue
        # The descriptor being closed is already gone from the table when FLUSH arrives.
        return count >= 1

    @fuse_op
    def fsync(self, path: str, datasync: int, fh: int) -> int:
        return self.flush(path, fh)

    @fuse_op
    def release(self, path: str, fh: int) -> int:
        with self._lock:
            obj = self._handles.pop(fh, None)
            if not isinstance(obj, Pending):
                pass
            else:
                obj.handles -= 1
                if obj.handles > 0 or (obj.held and obj.dirty and not obj.unlinked):
                    return 0
        if isinstance(obj, ReadHandle) and obj.staged is not None:
            obj.staged.discard()
        elif isinstance(obj, Pending):
            self._forget(obj)
        return 0

    def _forget(self, p: Pending) -> None:
        """Drop a pending file and its staged bytes (after its upload, or after it failed)."""
        with self._lock:
            if self._pending.get(p.path) is p:
                del self._pending[p.path]
        with p.lock:
            p.staged.discard()

    def _upload(self, p: Pending, *, force: bool = False) -> None:
        """Upload a dirty pending file under its current path, then retire what it replaces."""
        with p.lock:
            with self._lock:
                parts, skip = p.path, p.unlinked or (p.held and not force)
            if p.error is not None:
                raise GemfsError(p.error, "an earlier write failed; nothing was uploaded")
            if not p.dirty or skip:
                return
            display = "/".join(parts)
            mime_type = mime.guess(parts[-1], p.staged.head(mime.SNIFF_BYTES))
            size = p.staged.size
            progress = {"path": display, "size": size, "sent": 0, "started": time.time()}
            with self._lock:
                self._uploads[id(p)] = progress

            def advance(sent: int) -> None:
                progress["sent"] = sent

            try:
                record = self.remote.upload(p.staged.fd, size, display, mime_type, advance)
            finally:
                with self._lock:
                    self._uploads.pop(id(p), None)
            p.dirty = False
            retired, p.replaces = p.replaces, [record]
            self.catalog.add_uploaded(record)
            log.info("uploaded %s as %s (%d bytes, %s)", display, record.name, size, mime_type)
        for old in retired:
            if old.id != record.id:
                self._delete_remote(old)

    def _delete_remote(self, record: FileRecord) -> None:
        self.remote.delete(record.id)
        self.catalog.mark_deleted(record.id)

    @fuse_op
    def unlink(self, path: str) -> int:
        parts = split_path(path)
        self._check_writable()
        with self._lock:
            pending = self._pending.pop(parts, None)
            if pending is not None:
                pending.unlinked = True
        if pending is not None:
            # `rm` removes what is at the path: this file's own upload and any File it replaces.
            with pending.lock:
                remote = list(pending.replaces)
                pending.replaces = []
                if pending.handles == 0:
                    pending.staged.discard()
            for record in remote:
                self._delete_remote(record)
            return 0
        node = self.catalog.lookup(parts)
        if isinstance(node, FileNode):
            self._delete_remote(node.record)
            return 0
        if isinstance(node, DirNode):
            raise GemfsError(errno.EISDIR)
        if self._sidecar_record(parts) is not None:
            raise GemfsError(errno.EPERM, "sidecars are read-only")
        raise GemfsError(errno.ENOENT)

    @fuse_op
    def rename(self, old: str, new: str, flags: int = 0) -> int:
        self._check_rename_flags(new, flags)
        src, dst = split_path(old), new_name(new)
        self._check_writable()
        if not self._dir_exists(dst[:-1]):
            raise GemfsError(errno.ENOENT)
        if self._sidecar_record(dst) is not None or self._sidecar_record(src) is not None:
            raise GemfsError(errno.EPERM, "sidecars are read-only")
        with self._lock:
            pending = self._pending.get(src)
        if pending is None:
            node = self.catalog.lookup(src)
            if node is None:
                raise GemfsError(errno.ENOENT)
            if isinstance(node, DirNode) and self.catalog.is_local_dir(src) and not self.catalog.listdir(src):
                if self._exists(dst):
                    raise GemfsError(errno.EEXIST)
                self.catalog.remove_dir(src)
                self.catalog.add_dir(dst)
                return 0
            # The API has no rename; EXDEV would make mv copy (read) the File, which it can't.
            raise GemfsError(errno.EPERM, "the Files API cannot rename")
        target = self.catalog.lookup(dst)
        if isinstance(target, DirNode):
            raise GemfsError(errno.EISDIR)
        with self._lock:
            other = self._pending.get(dst)
            if other is not None and other is not pending:
                if other.handles:
                    raise GemfsError(errno.ETXTBSY, "target is being written")
                del self._pending[dst]
            if self._pending.get(src) is pending:
                del self._pending[src]
            pending.path = dst
            self._pending[dst] = pending
        if other is not None and other is not pending:
            with other.lock:
                other.staged.discard()
        with pending.lock:
            # The bytes go up (again) under the new name, retiring whatever was at it.
            pending.dirty = True
            if isinstance(target, FileNode):
                pending.replaces.append(target.record)
        if pending.handles == 0:
            # A closed temp file renamed to its final name: this is its one upload.
            try:
                self._upload(pending)
            finally:
                self._forget(pending)
        return 0

    @fuse_op
    def symlink(self, target: str, source: str) -> int:
        raise GemfsError(errno.EPERM, "the Files API has no links")

    @fuse_op
    def link(self, target: str, source: str) -> int:
        raise GemfsError(errno.EPERM, "the Files API has no links")

    @fuse_op
    def mknod(self, path: str, mode: int, dev: int) -> int:
        raise GemfsError(errno.EPERM, "only regular files can be uploaded")

    # -- additive pieces: rename flags, no trash, extended attributes ---------------------------

    def _check_rename_flags(self, new: str, flags: int) -> None:
        """renameat2 flags, before anything changes (fuse_plus.py hands them over).

        RENAME_EXCHANGE would need two atomic re-uploads and RENAME_WHITEOUT is for overlay
        file systems: both EINVAL, as a file system that does not support them answers.
        RENAME_NOREPLACE is honoured: EEXIST when anything is at the target.
        """
        if flags & ~RENAME_NOREPLACE:
            raise GemfsError(errno.EINVAL, "renameat2 flags other than RENAME_NOREPLACE")
        if flags & RENAME_NOREPLACE and self._exists(split_path(new)):
            raise GemfsError(errno.EEXIST)

    def _refuse_trash(self, parts: Path) -> None:
        """No trash folder at the root: GIO (every GTK file manager) would make `.Trash-UID`,
        upload `.trashinfo` files into it and then fail to move the File in (the API has no
        rename). Refused, GIO offers to delete permanently instead, and nothing is uploaded."""
        if len(parts) == 1 and TRASH_NAME.match(parts[0]):
            raise GemfsError(errno.EPERM, "no trash on a gemfs mount")

    def _fresh_record(self, record: FileRecord) -> FileRecord:
        """The record to show for a File's metadata (xattrs). The same record for now; the
        place where a File that is not ACTIVE yet gets refreshed."""
        return record

    def _xattrs(self, path: str) -> dict[str, bytes]:
        """The extended attributes of a path: a File's metadata under `user.gemini.*`; none
        for folders, sidecars and files still being written (they have no File yet)."""
        parts = split_path(path)
        if not parts:
            return {}
        with self._lock:
            if parts in self._pending:
                return {}
        node = self.catalog.lookup(parts)
        if isinstance(node, FileNode):
            return record_xattrs(self._fresh_record(node.record))
        if node is None and self._sidecar_record(parts) is None:
            raise GemfsError(errno.ENOENT)
        return {}

    @fuse_op
    def listxattr(self, path: str) -> list[str]:
        return list(self._xattrs(path))

    @fuse_op
    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        # Answered before any lookup: the kernel asks for security.capability before every
        # write, and ls -l for security.selinux and the POSIX ACLs. ENOTSUP, not ENODATA, for
        # those namespaces: ls remembers it per device (one request instead of one per file).
        if not name.startswith("user."):
            raise GemfsError(errno.ENOTSUP)
        if not name.startswith(XATTR_PREFIX):
            raise GemfsError(errno.ENODATA)
        value = self._xattrs(path).get(name)
        if value is None:
            raise GemfsError(errno.ENODATA)
        return value

    @fuse_op
    def setxattr(self, path: str, name: str, value: bytes, options: int, position: int = 0) -> int:
        self._xattrs(path)  # ENOENT first
        # ENOTSUP: cp -a and GIO's copy take it as "this file system keeps no xattrs" and go on.
        raise GemfsError(errno.ENOTSUP, "extended attributes are read-only")

    @fuse_op
    def removexattr(self, path: str, name: str) -> int:
        self._xattrs(path)
        raise GemfsError(errno.ENOTSUP, "extended attributes are read-only")


RENAME_NOREPLACE = 1  # linux/fs.h, renameat2(2)

# The trash folders of the XDG trash spec at a mount's top: `.Trash` (shared) and `.Trash-UID`.
TRASH_NAME = re.compile(r"^\.Trash(-[0-9]+)?$")

XATTR_PREFIX = "user.gemini."


def sha256_hex(field: str | None) -> str | None:
    """The hex SHA-256 of a File from its `sha256Hash`: the API sends base64 of the lower-case
    hex digest (files-api-wire.md §3.1); base64 of the raw 32-byte digest is taken too."""
    if not field:
        return None
    try:
        raw = base64.b64decode(field, validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(raw) == 32:
        return raw.hex()
    text = raw.decode("ascii", "replace").lower()
    return text if re.fullmatch(r"[0-9a-f]{64}", text) else None


def record_xattrs(record: FileRecord) -> dict[str, bytes]:
    """A File's `user.gemini.*` attributes, each as its sidecar shows it; absent fields are
    absent attributes."""
    values = {
        "uri": record.api.get("uri"),
        "name": record.name,
        "mime_type": record.mime_type,
        "state": record.state,
        "sha256": sha256_hex(record.api.get("sha256Hash")),
        "expiration_time": record.api.get("expirationTime"),
    }
    return {XATTR_PREFIX + k: str(v).encode("utf-8") for k, v in values.items() if v}
