"""The mfusepy `Operations` of a gemfs mount: each operation resolves a path against the files
being written here and the catalog, and delegates to `staging`, `remote`, `cache`, `sidecar`
and `mime`.

Where bytes go (docs/SEMANTICS.md):
- create/open-for-write stage the file on local disk (`Pending`); the close of its last writer
  (`flush`) uploads it synchronously and returns the upload's errno, so `cp` fails when the
  upload failed; `fsync` uploads too, at once;
- a file written under its own name that reaches `stream_from` bytes starts its upload while
  it is written (`streaming.Streamer`); its close finalizes that upload, a rewrite of what it
  sent, a rename or an unlink cancels it;
- `release` never uploads (the kernel drops its result): it hands the uploaded bytes to the
  local content cache, so this machine can read its own Files back, or frees them;
- temp names of rsync, GIO and mktemp are held at close and uploaded once, under the final
  name, by the `rename` that follows; lock and swap files of editors are never uploaded.

Locks, in the order they are taken (a lock never waits for one above it):

1. `Pending.lock`, one per file being written. Guards that file's staged bytes and the fields
   marked "file lock" below. It is held across that file's upload, so a write to the same file
   waits for its upload in flight; nothing else waits for it: `getattr`, `readdir` and `read`
   of any file, and every operation on other files, never take it.
2. `GemFS._lock`, the mount's tables: `_pending`, `_handles`, `_uploads`, `_hidden`,
   `_draining`, and the fields marked "mount lock". Held for dictionary work only: no I/O, no
   network, never while waiting for a `Pending.lock`.
3. Leaf locks, each guarding its own object and taken last: a `Streamer`'s stream lock (taken
   under the file lock by writes, alone by its thread, which never takes 1 or 2; the close
   joins that thread under the file lock), `StagingArea._lock` (it calls the
   quota callback, which takes `Catalog._lock`, so staging before catalog), `Catalog._lock`,
   the content cache's and the state store's locks, `_fresh_lock`.

No network call is made under 2 or 3. The only network calls under a `Pending.lock` are that
file's own upload (the end of its stream, or all of it) and, when it failed with its answers
lost, the one listing of the newest Files that looks for the File it may have made (`_doubt`,
at most LOOKUP_DEADLINE: its outcome decides what the file is); the deletes of the Files it
retires come after the lock is released.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import re
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import cachetools
from mfusepy import Operations, fuse_get_context

from gemfs import mime, procinfo, sidecar, tempnames
from gemfs.cache import hex_from_api, sha256_of_fd
from gemfs.catalog import Catalog, DirNode, FileNode, Path, display_name, display_name_for, split_path
from gemfs.errors import GemfsError, fuse_op
from gemfs.fuse_plus import FUSE_CAP_READDIRPLUS_AUTO
from gemfs.model import FileRecord
from gemfs.remote import Remote
from gemfs.staging import StagedFile, StagingArea
from gemfs.streaming import Streamer
from gemfs.upload import UploadResult

log = logging.getLogger(__name__)

BLOCK = 4096
# The st_blksize of files: cp (and most tools) write in pieces of max(st_blksize, 128 KiB), and
# each piece is one FUSE request through Python. 1 MiB, libfuse's largest write, cut staging a
# 1 GiB cp from ~2.5 s to ~0.7 s (bench/run.py, big_upload).
IO_BLOCK = 1 << 20

# libfuse hides a file that is unlinked while open by renaming it to `.fuse_hidden<16 hex>` and
# unlinks that name at the last release (without `hard_remove`; with it, fstat of such a file
# gets ESTALE, since the kernel's getattr carries no file handle).
HIDDEN_NAME = re.compile(r"^\.fuse_hidden[0-9a-f]{16}$")

RENAME_NOREPLACE = 1  # linux/fs.h, renameat2(2)


# How long a fresh `files.get` of a File that is not ACTIVE answers for it: the sidecar and
# `user.gemini.state` of a PROCESSING video ask the API at most once a second, however many
# readers poll them.
FRESH_SECONDS = 1.0

# How long the close of an upload that gave up with its answers lost keeps trying to list the
# newest Files, to find the File the server may have made (_doubt). It comes on top of the
# upload's own --retry-deadline, under the file's lock; a few seconds ride out a blip without
# doubling how long a cp takes to fail when the network is down. One page (the newest 100 Files)
# holds a File made moments ago.
LOOKUP_DEADLINE = 5.0

# The name of the virtual file that lists the sidecars for GTK file managers (--show-meta).
HIDDEN_LIST = ".hidden"


def new_name(path: str, *, directory: bool = False) -> Path:
    """The parts of a path about to be created, refused unless a display name can stand for
    it: EINVAL unless it is UTF-8, ENAMETOOLONG for a component over 255 bytes or a display
    name over 512 characters (catalog.display_name_for).

    Linux names are bytes and display names Unicode: mfusepy hands undecodable bytes over as
    lone surrogates, which the API refuses (400). Saying so at create, before any byte is
    staged, beats failing at close.
    """
    parts = split_path(path)
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise GemfsError(errno.EINVAL, "file names must be UTF-8") from None
    display_name_for(parts, directory=directory)
    return parts


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


def _caller() -> int:
    return fuse_get_context()[2]


@dataclass(eq=False)
class Pending:
    """A file written through this mount whose bytes are here: being written, held for a rename,
    kept local, or unlinked while open. Its remote Files are in `replaces`."""

    path: Path  # mount lock
    staged: StagedFile  # file lock (the bytes; reads use pread without it)
    # file lock: remote Files at this path that this file's next upload retires: the File it
    # overwrites, and its own earlier upload (after an fsync or an earlier close).
    replaces: list[FileRecord]
    kind: str = "upload"  # mount lock: "upload", "held" (a temp name) or "local" (lock/swap)
    lock: threading.Lock = field(default_factory=threading.Lock)
    handles: int = 0  # mount lock: open file handles
    dirty: bool = True  # file lock: bytes not uploaded yet
    error: int | None = None  # file lock: a write failed; close reports it, nothing goes up
    # file lock: opened for writing without O_TRUNC over a File (`uploaded`) whose bytes are not
    # in the staged file yet: they are copied in from the cache at the first write or truncate
    # that needs them (an open only to check, as GIO's, copies nothing); without them in the
    # cache, such a write is refused until the file is truncated to 0.
    base_missing: bool = False
    uploaded: FileRecord | None = None  # file lock: the File that holds its bytes now
    digest: str | None = None  # file lock: SHA-256 (hex) of the uploaded bytes
    unlinked: bool = False  # mount lock: removed from the tree; never uploaded again
    hold: int | None = None  # file lock: its row in the state store's held journal (durable)
    settling: bool = False  # mount lock: its last handle is gone and its bytes are being settled
    failed: bool = False  # file lock: its last upload failed, and a close or fsync said so
    closed_by: int = 0  # mount lock: the process whose close (FLUSH) came last
    # file lock: its upload, going out while it is written (gemfs/streaming.py); None when
    # there is none, and then `no_stream` says whether one may still start before the upload
    # (not after a stream broke: a writer that rewrites what it wrote would start one per write).
    stream: Streamer | None = None
    no_stream: bool = False
    # One int, read without a lock. Nanoseconds, as utimens hands them: a float of seconds
    # keeps only ~256 ns at today's epoch, and rsync compares what it set with what it reads.
    mtime_ns: int = field(default_factory=time.time_ns)

    @property
    def size(self) -> int:
        if self.base_missing and self.uploaded is not None:
            return self.uploaded.size
        return self.staged.size


@dataclass(eq=False)
class DirHandle:
    """An open directory: the entries its listing pages through (fuse_plus.py)."""

    path: str
    entries: list | None = None  # guarded by lock
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass(eq=False)
class ReadHandle:
    """A file open for reading only: a sidecar's bytes, or a descriptor on local bytes (a cached
    File, or a downloaded generated File that is discarded at release)."""

    attrs: dict
    data: bytes | None = None
    fd: int = -1
    staged: StagedFile | None = None  # a download, discarded at release
    direct: bool = False  # reads bypass the page cache (a sidecar, whose size may change)

    def read(self, size: int, offset: int) -> bytes:
        if self.data is not None:
            return self.data[offset : offset + size]
        return os.pread(self.fd, size, offset)

    def close(self) -> None:
        if self.staged is not None:
            self.staged.discard()
        elif self.fd >= 0:
            os.close(self.fd)
        self.fd = -1


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
        cache=None,
        state=None,
        wait_active: bool = False,
        clock=time.monotonic,
        on_ready=None,
        stream_from: int | None = None,
    ) -> None:
        self.remote = remote
        # A file written under its own name starts uploading once it holds this many bytes
        # (gemfs/streaming.py); None: every file goes up whole at its close.
        self.stream_from = stream_from
        self.mountpoint = ""  # set by mount.py; to recognise our files in /proc/PID/fd
        self.catalog = catalog
        self.staging = staging
        self.cache = cache  # gemfs.cache.ContentCache, or None: Files are read back from here
        self.state = state  # gemfs.state.StateStore, or None: mtimes kept per File id
        self.quota = quota
        self.show_meta = show_meta
        self.read_only = read_only
        self.attr_timeout = attr_timeout
        self.wait_active = wait_active
        self.on_ready = on_ready
        self.uid, self.gid = os.getuid(), os.getgid()
        self.started = time.time()
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: dict[Path, Pending] = {}  # mount lock
        self._handles: dict[int, Pending | ReadHandle | DirHandle] = {}  # mount lock
        self._next_fh = itertools.count(1)
        self._uploads: dict[int, dict] = {}  # mount lock: id(Pending) -> progress
        # mount lock: Files unlinked while open for reading, by their hidden name: their
        # attributes, so fstat through an open descriptor still answers.
        self._hidden: dict[Path, dict] = {}
        self._draining = False  # mount lock
        self._recent: dict[str, float] = {}  # mount lock: File id -> when this mount uploaded it
        # mount lock: display name -> (size, sha256 hex, when on self._clock) of uploads whose
        # failure left open whether the server made the File (_doubt)
        self._doubtful: dict[str, list[tuple[int, str, float]]] = {}
        self._fresh_lock = threading.Lock()  # guards _fresh and _fetching
        self._fresh: cachetools.TTLCache = cachetools.TTLCache(4096, FRESH_SECONDS, timer=clock)
        self._fetching: dict[str, threading.Event] = {}

    # -- lifecycle ------------------------------------------------------------------------------

    def init_with_config(self, conn, config) -> None:
        if conn is not None:
            # READDIRPLUS for every listing request. In the kernel's "auto" mode, only a
            # directory's first request gets attributes unless lookups come in between; `ls -l`
            # reads the whole directory first, so nearly every entry would still be looked up
            # on its own (tests/mount/test_readdirplus.py).
            conn.want &= ~FUSE_CAP_READDIRPLUS_AUTO
        if config is not None:
            # Attributes come from our snapshot, so the kernel may keep them briefly; a longer
            # entry cache would hide other clients' uploads past the listing TTL.
            config.attr_timeout = self.attr_timeout
            config.entry_timeout = self.attr_timeout
            config.negative_timeout = self.attr_timeout
            # An open file that is unlinked is renamed to .fuse_hidden* by libfuse, so fstat,
            # read and ftruncate through its descriptor keep working (HIDDEN_NAME).
            config.hard_remove = 0
        if self.on_ready:
            self.on_ready()

    def status(self) -> dict:
        with self._lock:
            uploads = [dict(u) for u in self._uploads.values()]
            # (p.stream is the file lock's; a stale read here only shows one more or less)
            streams = [p.stream for p in self._pending.values() if p.stream is not None]
            pending = len(self._pending)
        uploads += [s.progress() for s in streams]
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

    def cancel_streams(self) -> None:
        """At unmount, after the last request: the files still open were never closed, so their
        streams will make no File; cancel their sessions now, while the client is still there
        (left open, each would hold its bytes against the project's quota until it expires)."""
        with self._lock:  # (p.stream is the file lock's: read again under it below)
            pending = [p for p in self._pending.values() if p.stream is not None]
        dropped = []
        for p in pending:
            with p.lock:
                if p.stream is not None:
                    dropped.append(p.stream)
                    self._drop_stream(p)
        for stream in dropped:  # all abandoned first, so their cancels go out together
            stream.wait()

    def held_files(self) -> list[Pending]:
        with self._lock:
            return [p for p in self._pending.values()
                    if p.kind == "held" and p.handles == 0 and not p.unlinked]

    def upload_held(self) -> None:
        """At unmount: temp-named files that were never renamed still go up, under their names;
        lock and swap files are dropped."""
        for p in self.held_files():
            try:
                self._upload(p)
            except GemfsError as e:
                log.error("could not upload %s at unmount: %s", "/".join(p.path), e)
            self._forget(p)

    def reconcile(self, records: list[FileRecord], started: float) -> None:
        """A full listing whose fetch began at `started` came in: the cache and the state store
        keep only Files that are still there (and whose sha256Hash still matches), plus what
        this mount uploaded since the fetch began, which the listing may not show yet."""
        with self._lock:
            self._recent = {i: t for i, t in self._recent.items() if t >= started - 3600}
            recent = {i for i, t in self._recent.items() if t >= started}
        live = {r.id: hex_from_api(r.api.get("sha256Hash")) for r in records}
        if self.cache is not None:
            self.cache.expire()
            self.cache.retain({**live, **{i: None for i in recent if i not in live}})
        if self.state is not None:
            self.state.retain(set(live) | recent)

    # -- resolution -----------------------------------------------------------------------------

    def _dir_exists(self, path: Path) -> bool:
        return path == () or isinstance(self.catalog.lookup(path), DirNode)

    def _sidecar_record(self, path: Path) -> FileRecord | None:
        owner = sidecar.split(path[-1]) if path else None
        if owner is None:
            return None
        node = self.catalog.lookup(path[:-1] + (owner,))
        if not isinstance(node, FileNode) or self._copying_in(path[-1]):
            return None
        return node.record

    def _copying_in(self, name: str) -> bool:
        """Is the calling process reading a file called `name` from outside this mount?

        `cp -r` of a folder holding `X` and `X.meta.json` opens each source, then creates its
        copy with O_EXCL; the kernel refuses that (EEXIST) when the lookup finds X's sidecar.
        For the process that is copying such a file in, the sidecar name is free, so the copy
        becomes a File of that display name (shown as `X.meta~<id>.json`, SEMANTICS.md, Names).
        """
        return procinfo.reads_named(_caller(), name, outside=self.mountpoint)

    def _hidden_list(self, path: Path) -> bytes | None:
        """The virtual `.hidden` of a folder (--show-meta): its sidecar names, one a line, so
        GTK file managers show them only on Ctrl+H. None where there is none."""
        if not self.show_meta or not path or path[-1] != HIDDEN_LIST:
            return None
        entries = self.catalog.listdir(path[:-1])
        if entries is None or HIDDEN_LIST in entries:
            return None
        names = [n + sidecar.SUFFIX for n, node in entries.items() if isinstance(node, FileNode)]
        return "".join(n + "\n" for n in sorted(names)).encode("utf-8")

    def _new_handle(self, obj) -> int:
        fh = next(self._next_fh)
        self._handles[fh] = obj
        return fh

    def _handle(self, fh: int):
        with self._lock:
            obj = self._handles.get(fh)
        if obj is None:
            raise GemfsError(errno.EBADF)
        return obj

    def _file_attrs(self, mode: int, size: int, mtime_ns: int, ctime: float | None = None) -> dict:
        ns = mtime_ns
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
            "st_ctime": int(ctime * 1e9) if ctime else ns,
        }

    def _dir_attrs(self, path: Path = ()) -> dict:
        # The newest updateTime inside (SEMANTICS.md, Names); the mount time when it is empty.
        ns = int((self.catalog.dir_mtime(path) or self.started) * 1e9)
        return {
            "st_mode": stat.S_IFDIR | 0o755,
            "st_nlink": 2,
            "st_uid": self.uid,
            "st_gid": self.gid,
            "st_mtime": ns,
            "st_atime": ns,
            "st_ctime": ns,
        }

    def _cached(self, file_id: str) -> bool:
        return self.cache is not None and self.cache.contains(file_id)

    # -- fresh state of Files that are not ACTIVE yet ----------------------------------------

    def _fresh_record(self, record: FileRecord) -> FileRecord:
        """The File as the API says now when it is not ACTIVE (at most one `files.get` per File
        per FRESH_SECONDS, however many readers); ACTIVE Files cost nothing."""
        if record.state == "ACTIVE":
            return record
        while True:
            with self._fresh_lock:
                fresh = self._fresh.get(record.id)
                if fresh is not None:
                    return fresh
                waiting = self._fetching.get(record.id)
                if waiting is None:
                    done = self._fetching[record.id] = threading.Event()
                    break
            waiting.wait()
        try:
            fresh = self.remote.get(record.id)
        except GemfsError as e:
            log.info("could not refresh %s: %s", record.name, e)
            fresh = record
        else:
            self.catalog.add_uploaded(fresh)  # the tree shows the new state too
        finally:
            with self._fresh_lock:
                self._fresh[record.id] = fresh
                del self._fetching[record.id]
            done.set()
        return fresh

    # -- metadata -------------------------------------------------------------------------------

    @fuse_op
    def getattr(self, path: str | None, fh=None) -> dict:
        if fh is not None:
            with self._lock:
                obj = self._handles.get(fh)
            if isinstance(obj, Pending):
                return self._pending_attrs(obj)
            if isinstance(obj, ReadHandle):
                return obj.attrs
        if path is None:
            raise GemfsError(errno.ESTALE)
        parts = split_path(path)
        if not parts:
            return self._dir_attrs()
        with self._lock:
            pending = self._pending.get(parts)
            hidden = self._hidden.get(parts)
        if pending is not None:
            return self._pending_attrs(pending)
        if hidden is not None:
            return hidden
        node = self.catalog.lookup(parts)
        if node is not None:
            return self._node_attrs(node)
        record = self._sidecar_record(parts)
        if record is not None:
            return self._sidecar_attrs(self._fresh_record(record))
        listing = self._hidden_list(parts)
        if listing is not None:
            return self._file_attrs(0o444, len(listing), _ns(self.started))
        raise GemfsError(errno.ENOENT)

    def _sidecar_attrs(self, record: FileRecord) -> dict:
        return self._file_attrs(0o444, len(sidecar.render(record)), _ns(record.update_time))

    @fuse_op
    def readdir(self, path: str, fh=None):
        # Unused on libfuse 3, where readdir_plus answers; but mfusepy 3.1 installs the readdir
        # callback, which fuse_plus.py's backport hooks into, only for an object that has this.
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
    def readdir_plus(self, path: str, offset: int, fh: int) -> Iterator[tuple[str, dict | None, int]]:
        """The entries of an open directory after `offset`, each with its attributes and its own
        offset (READDIRPLUS, fuse_plus.py): entry i has offset i + 1, so the kernel's next request
        continues after the last entry it took. A listing from the start (offset 0: after
        opendir, or a rewinddir) takes them from the catalog; the requests that continue it page
        through that same list, so no name is skipped or repeated if the catalog changes."""
        with self._lock:
            handle = self._handles.get(fh)
        if not isinstance(handle, DirHandle):
            entries = self._entries(path, with_attrs=True)
        else:
            with handle.lock:
                if handle.entries is None or offset == 0:
                    handle.entries = self._entries(path, with_attrs=True)
                entries = handle.entries
        # Lazily: mfusepy stops taking entries when the kernel's buffer is full, and a large
        # directory takes many requests.
        return ((*entries[i], i + 1) for i in range(max(offset, 0), len(entries)))

    def _entries(self, path: str, *, with_attrs: bool) -> list[tuple[str, dict | None]]:
        parts = split_path(path)
        entries = self.catalog.listdir(parts)
        if entries is None:
            raise GemfsError(errno.ENOENT)
        out: list[tuple[str, dict | None]] = [(".", None), ("..", None)]
        with self._lock:
            local = {p.path[-1]: p for p in self._pending.values()
                     if p.path[:-1] == parts and not p.unlinked}
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
            if HIDDEN_LIST not in entries and HIDDEN_LIST not in local:
                out.append((HIDDEN_LIST, None))
        out.extend((n, self._pending_attrs(p) if with_attrs else None)
                   for n, p in local.items() if n not in entries)
        return out

    def _pending_attrs(self, pending: Pending) -> dict:
        # A file being written: its local size, readable and writable.
        return self._file_attrs(0o644, pending.size, pending.mtime_ns)

    def _node_attrs(self, node) -> dict:
        if isinstance(node, DirNode):
            return self._dir_attrs(node.path)
        r = node.record
        if r.generated:
            mode = 0o444
        elif self._cached(r.id):
            mode = 0o644  # this machine has its bytes: readable, and writable in place
        else:
            mode = 0o200  # uploaded bytes can never be read back: 0200 tells tools before they try
        mtime_ns = _ns(r.update_time)
        if self.state is not None:
            kept = self.state.get_mtime(r.id)
            if kept is not None:
                mtime_ns = kept
        return self._file_attrs(mode, r.size, mtime_ns, r.update_time)

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
            # df -i shows f_files - f_ffree as used: f_files must count the Files too.
            "f_files": self.catalog.stats()["files"] + (1 << 20),
            "f_ffree": 1 << 20,
            "f_favail": 1 << 20,
            "f_namemax": 255,
        }

    @fuse_op
    def chmod(self, path: str, mode: int) -> int:
        if path is not None:
            self.getattr(path)  # accepted and ignored, so cp -p and rsync -a work
        return 0

    @fuse_op
    def chown(self, path: str, uid: int, gid: int) -> int:
        if path is not None:
            self.getattr(path)
        return 0

    @fuse_op
    def utimens(self, path: str, times=None, fh=None) -> int:
        mtime_ns = times[1] if times else time.time_ns()
        pending = self._handles_pending(fh)
        if pending is None and path is not None:
            with self._lock:
                pending = self._pending.get(split_path(path))
        if pending is not None:
            pending.mtime_ns = mtime_ns
            with pending.lock:
                uploaded = None if pending.dirty else pending.uploaded
            if uploaded is not None and self.state is not None:
                self.state.set_mtime(uploaded.id, mtime_ns)
            return 0
        if path is None:
            raise GemfsError(errno.ESTALE)
        node = self.catalog.lookup(split_path(path))
        if isinstance(node, FileNode):
            # Kept per File id, so a second `rsync -a` sees the mtime it set and skips the File.
            if self.state is not None:
                self.state.set_mtime(node.record.id, mtime_ns)
            return 0
        self.getattr(path)
        return 0

    def _handles_pending(self, fh) -> Pending | None:
        if fh is None:
            return None
        with self._lock:
            obj = self._handles.get(fh)
        return obj if isinstance(obj, Pending) else None

    # -- directories ----------------------------------------------------------------------------

    @fuse_op
    def mkdir(self, path: str, mode: int) -> int:
        parts = new_name(path, directory=True)
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
            if parts in self._pending or parts in self._hidden:
                return True
        return self.catalog.lookup(parts) is not None or self._sidecar_record(parts) is not None

    # -- files ----------------------------------------------------------------------------------

    def _check_writable(self) -> None:
        if self.read_only:
            raise GemfsError(errno.EROFS)
        with self._lock:
            if self._draining:
                raise GemfsError(errno.EROFS, "unmount in progress")

    def _kind_of(self, name: str, pid: int) -> str:
        if tempnames.is_local(name):
            return "local"
        if tempnames.is_held(name, procinfo.command(pid) if pid > 0 else ""):
            return "held"
        return "upload"

    def _start_pending(self, parts: Path, replaces: FileRecord | None, *,
                       base: FileRecord | None = None) -> int:
        """A new staged file at `parts`, opened once; returns its handle. `base` is the File an
        open without O_TRUNC works on: its bytes come in when a write needs them."""
        self._check_writable()
        kind = self._kind_of(parts[-1], _caller())
        staged = self.staging.new_file()
        p = Pending(parts, staged, [replaces] if replaces else [], kind=kind, handles=1)
        if base is not None:
            # Nothing changed yet: closing it without a write uploads nothing.
            p.dirty = False
            p.uploaded = base
            p.base_missing = True
            p.mtime_ns = self._node_attrs(FileNode(base))["st_mtime"]
        with self._lock:
            old = self._pending.get(parts)
            if old is not None and old.handles:
                busy = True
            else:
                busy = False
                if old is not None:
                    del self._pending[parts]
                self._pending[parts] = p
                fh = self._new_handle(p)
        if busy:
            staged.discard()
            raise GemfsError(errno.ETXTBSY, "file is being written")
        if old is not None:
            with old.lock:
                old.staged.discard()
        return fh

    @fuse_op
    def create(self, path: str, mode: int, flags: int = 0) -> int:
        parts = new_name(path)
        if not self._dir_exists(parts[:-1]):
            raise GemfsError(errno.ENOENT)
        if self._sidecar_record(parts) is not None or self._hidden_list(parts) is not None:
            raise GemfsError(errno.EACCES, "sidecars are read-only")
        node = self.catalog.lookup(parts)
        if isinstance(node, DirNode):
            raise GemfsError(errno.EISDIR)
        if isinstance(node, FileNode):
            return self._start_pending(parts, node.record)
        # A copy onto a sidecar's name replaces the File of that display name, shown suffixed.
        claimed = self.catalog.claimant(parts) if sidecar.split(parts[-1]) else None
        return self._start_pending(parts, claimed)

    @fuse_op
    def open(self, path: str, flags: int) -> int:
        parts = split_path(path)
        writing = (flags & os.O_ACCMODE) != os.O_RDONLY
        while True:
            with self._lock:
                pending = self._pending.get(parts)
                if pending is not None and not pending.settling:
                    pending.handles += 1
                    fh = self._new_handle(pending)
            if pending is None or not pending.settling:
                break
            with pending.lock:  # _settle holds it until the File is in the cache or gone
                pass
        if pending is not None:
            if writing and (flags & os.O_TRUNC):
                # Never under self._lock: an upload holds pending.lock for its whole length.
                with pending.lock:
                    pending.staged.truncate(0)
                    pending.dirty, pending.error, pending.base_missing = True, None, False
                    self._drop_stream(pending, again=True)
            return fh
        node = self.catalog.lookup(parts)
        if isinstance(node, DirNode):
            raise GemfsError(errno.EISDIR)
        if isinstance(node, FileNode):
            return self._open_file(node.record, parts, flags, writing)
        record = self._sidecar_record(parts)
        if record is not None:
            if writing:
                raise GemfsError(errno.EACCES, "sidecars are read-only")
            data = sidecar.render(self._fresh_record(record))
            return self._read_handle(ReadHandle(self._file_attrs(0o444, len(data), _ns(record.update_time)),
                                                data=data, direct=True))
        listing = self._hidden_list(parts)
        if listing is not None:
            if writing:
                raise GemfsError(errno.EACCES, "the .hidden list is read-only")
            return self._read_handle(ReadHandle(self._file_attrs(0o444, len(listing), _ns(self.started)),
                                                data=listing, direct=True))
        raise GemfsError(errno.ENOENT)

    def _read_handle(self, handle: ReadHandle) -> int:
        with self._lock:
            return self._new_handle(handle)

    def _open_file(self, record: FileRecord, parts: Path, flags: int, writing: bool) -> int:
        if writing:
            # Without O_TRUNC: GIO opens an existing file so only to check it may, then writes a
            # temp file and renames it over; `>>` and editors saving in place edit the bytes,
            # which come from the cache at the first write (_materialize).
            return self._start_pending(parts, record,
                                       base=None if flags & os.O_TRUNC else record)
        fd = self._cached_fd(record)
        attrs = self._node_attrs(FileNode(record))
        if fd is not None:
            return self._read_handle(ReadHandle(attrs, fd=fd))
        if record.generated:
            return self._open_download(record, attrs)
        raise GemfsError(errno.EACCES, "uploaded Files cannot be downloaded")

    def _open_download(self, record: FileRecord, attrs: dict) -> int:
        staged = self.staging.new_file(counted=False)  # a download is not quota
        try:
            self.remote.download(record.id, staged.path)
            staged.size = os.path.getsize(staged.path)
        except BaseException:
            staged.discard()
            raise
        return self._read_handle(ReadHandle(attrs, fd=staged.fd, staged=staged))

    def direct_io(self, fh: int) -> bool:
        """Whether reads of this handle bypass the kernel's page cache (fuse_plus.py): a sidecar
        can grow between the stat that sized it and the read (PROCESSING -> ACTIVE)."""
        with self._lock:
            obj = self._handles.get(fh)
        return isinstance(obj, ReadHandle) and obj.direct

    def _cached_fd(self, record: FileRecord) -> int | None:
        if self.cache is None or record.generated:
            return None
        return self.cache.open(record.id)

    def _materialize(self, p: Pending) -> None:
        """Copy the bytes of the File an open without O_TRUNC works on into its staged file
        (caller holds p.lock), in the kernel (copy_file_range); EPERM when they are not here."""
        if not p.base_missing:
            return
        fd = self._cached_fd(p.uploaded) if p.uploaded is not None else None
        if fd is None:
            raise GemfsError(errno.EPERM, "this File's bytes are not on this machine: truncate "
                             "it to 0 (or open it with O_TRUNC) to replace it")
        try:
            p.staged.copy_from(fd, p.uploaded.size)
        finally:
            os.close(fd)
        p.base_missing = False

    @fuse_op
    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        obj = self._handle(fh)
        if isinstance(obj, ReadHandle):
            return obj.read(size, offset)
        if obj.base_missing:  # nothing written yet: the File's own bytes, if they are here
            fd = self._cached_fd(obj.uploaded) if obj.uploaded is not None else None
            if fd is None:
                raise GemfsError(errno.EACCES, "uploaded Files cannot be downloaded")
            try:
                return os.pread(fd, size, offset)
            finally:
                os.close(fd)
        return obj.staged.read(size, offset)

    @fuse_op
    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        return self._write(fh, offset, lambda staged: staged.write(data, offset))

    @fuse_op
    def write_buf(self, path: str, source, offset: int, fh: int) -> int:
        """WRITE with the bytes still in libfuse (fuse_plus.WriteSource): they go into the staged
        file in the kernel, never through a Python object."""
        return self._write(fh, offset,
                           lambda staged: staged.write_from(source.size, offset, source.copy_to))

    def _write(self, fh: int, offset: int, write) -> int:
        """`write(staged file) -> bytes written` at `offset`, on a pending file's own terms: its
        old bytes copied in first if needed, a failure kept for its close to report, its
        stream told."""
        obj = self._handle(fh)
        if not isinstance(obj, Pending):
            raise GemfsError(errno.EBADF)
        with obj.lock:
            self._materialize(obj)
            try:
                written = write(obj.staged)
            except (OSError, GemfsError) as e:
                obj.error = e.errno
                self._drop_stream(obj)
                raise
            obj.dirty = True
            obj.mtime_ns = time.time_ns()
            self._stream_moved(obj, offset, appended=offset + written >= obj.staged.size)
        return written

    def _stream_moved(self, p: Pending, lowest: int, *, appended: bool) -> None:
        """The staged bytes changed from `lowest` on (caller holds p.lock): tell the stream, or
        start one once a file written under its own name is big enough. Only a write that
        reaches the end starts one: a writer that sized its file first (ftruncate, then blocks
        in order) has not written what lies past its last write, so a stream would take zeros."""
        if p.stream is not None:
            if not p.stream.wrote(lowest, p.staged.size):
                self._drop_stream(p)
            return
        if (p.no_stream or self.stream_from is None or p.staged.size < self.stream_from
                or not appended):
            return
        with self._lock:
            parts, kind, unlinked = p.path, p.kind, p.unlinked
        if kind != "upload" or unlinked or p.error is not None:
            p.no_stream = True  # until a rename or O_TRUNC starts the bytes over (_drop_stream)
            return
        display = display_name(parts)
        mime_type = mime.guess(parts[-1], p.staged.head(mime.SNIFF_BYTES))
        try:
            streamer = Streamer(lambda fd: self.remote.stream(fd, display, mime_type),
                                p.staged.fd, p.staged.size, display, mime_type)
        except (OSError, RuntimeError) as e:
            # No descriptor for its dup or no thread: the write itself went through, and a
            # stream is only a head start, so the file goes up whole at its close.
            log.warning("%s: its upload cannot start before its close (%s)", display, e)
            p.no_stream = True
            return
        if streamer.live:
            p.stream = streamer
        else:
            p.no_stream = True  # the server wants sizes at start

    def _drop_stream(self, p: Pending, *, again: bool = False) -> None:
        """The stream of `p` will not make its File (caller holds p.lock): its session is
        cancelled. `again`: the file's bytes start over, and a new stream may start."""
        if p.stream is not None:
            p.stream.abandon()
            p.stream = None
        p.no_stream = not again

    @fuse_op
    def truncate(self, path: str | None, length: int, fh=None) -> int:
        pending = self._handles_pending(fh)
        if pending is None:
            if path is None:
                raise GemfsError(errno.ESTALE)
            parts = split_path(path)
            with self._lock:
                pending = self._pending.get(parts)
            if pending is None:
                return self._truncate_file(parts, length)
        with pending.lock:
            if length == 0:
                pending.base_missing = False  # no old byte is needed
            self._materialize(pending)
            try:
                pending.staged.truncate(length)
            except (OSError, GemfsError) as e:
                pending.error = e.errno
                self._drop_stream(pending)
                raise
            pending.dirty = True
            pending.mtime_ns = time.time_ns()
            if pending.stream is not None and not pending.stream.truncated(length):
                self._drop_stream(pending, again=length == 0)
        return 0

    def _truncate_file(self, parts: Path, length: int) -> int:
        """truncate(2) by path of a File not open here: staged, uploaded, and the old one retired."""
        if self._sidecar_record(parts) is not None:
            raise GemfsError(errno.EACCES, "sidecars are read-only")
        node = self.catalog.lookup(parts)
        if not isinstance(node, FileNode):
            raise GemfsError(errno.ENOENT)
        fh = self._open_file(node.record, parts, os.O_WRONLY, True)
        try:
            self.truncate(None, length, fh)
            self._upload(self._handle(fh))
        finally:
            self.release(None, fh)
        return 0

    @fuse_op
    def flush(self, path: str, fh: int) -> int:
        obj = self._handle(fh)
        if not isinstance(obj, Pending) or obj.kind == "local" or not (obj.dirty or obj.error):
            return 0  # (dirty and kind are hints here; _upload reads them under the lock)
        pid = _caller()
        with self._lock:
            obj.closed_by = procinfo.process_of(pid) if pid > 0 else 0
        if pid > 0 and procinfo.dying_of_signal(pid):
            # A writer killed half-way (cp on SIGTERM/SIGINT): its bytes are not what it meant
            # to write, so they are never published.
            with obj.lock:
                if obj.dirty and obj.error is None:
                    obj.error = errno.EIO
                    self._drop_stream(obj)
                    log.warning("%s: its writer (pid %d, %s) was killed; not uploaded",
                                "/".join(obj.path), pid, procinfo.command(pid) or "?")
            return 0
        if self._another_writer(obj, pid):
            return 0  # the last writer's close uploads it
        self._upload(obj, durable=True)
        return 0

    def _another_writer(self, p: Pending, pid: int) -> bool:
        """Does the closing process, or one it inherited the descriptor from, still hold this file
        open for writing? (procinfo.holds_for_writing)"""
        with self._lock:
            path = p.path
        return self._held_for_writing(pid, path)

    def _held_for_writing(self, pid: int, path: Path) -> bool:
        if pid <= 0 or not self.mountpoint:
            return False
        return procinfo.holds_for_writing(pid, os.path.join(self.mountpoint, *path))

    @fuse_op
    def fsync(self, path: str, datasync: int, fh: int) -> int:
        """A durability point: when it returns 0 the bytes written so far are a File."""
        obj = self._handle(fh)
        if isinstance(obj, Pending):
            self._upload(obj, durable=True)
        return 0

    @fuse_op
    def release(self, path: str, fh: int) -> int:
        with self._lock:
            obj = self._handles.pop(fh, None)
            if isinstance(obj, Pending):
                obj.handles -= 1
                keep = obj.handles > 0 or (not obj.unlinked and obj.kind != "upload")
        if isinstance(obj, ReadHandle):
            obj.close()
        elif isinstance(obj, Pending) and not keep:
            self._settle(obj)
        return 0

    def _settle(self, p: Pending) -> None:
        """The last handle of a written file is gone: its uploaded bytes become the cache entry
        of their File (a rename, no copy), and the file stops being pending. It stays in
        `_pending` until the cache has it, so a stat meanwhile never sees an unreadable File
        (the kernel would keep that mode for --attr-timeout); an open meanwhile waits."""
        with p.lock:
            with self._lock:
                if p.handles:
                    return  # opened again meanwhile
                p.settling = True
            self._drop_stream(p)  # a stream still open here was never finished by a close
            if p.dirty and p.error is None and not p.failed and not p.unlinked and p.kind == "upload":
                # No close uploaded it (a race this code does not know of): never lose it. It is
                # held like a temp file, durable, and goes up at unmount or the next mount.
                log.warning("%s: closed without being uploaded; held, to go up at unmount",
                            "/".join(p.path))
                with self._lock:
                    p.kind, p.settling = "held", False
                self._journal(p, p.path)
                return
            kept = False
            if (not p.dirty and not p.unlinked and p.uploaded is not None and p.digest
                    and self.cache is not None and not p.base_missing):
                kept = self.cache.adopt(p.uploaded.id, p.staged.path, size=p.staged.size,
                                        sha256_hex=p.digest,
                                        expires_at=p.uploaded.expiration_time or None)
            if kept:
                p.staged.disown()
            else:
                p.staged.discard()
            with self._lock:
                if self._pending.get(p.path) is p:
                    del self._pending[p.path]

    def _forget(self, p: Pending) -> None:
        """Drop a pending file and its staged bytes."""
        with self._lock:
            if self._pending.get(p.path) is p:
                del self._pending[p.path]
        with p.lock:
            self._drop_stream(p)
            p.staged.discard()

    def _upload(self, p: Pending, *, durable: bool = False) -> None:
        """Upload a dirty pending file under its current path, then retire what it replaces.
        Held temp files go up only by a rename or at unmount; lock files never."""
        with p.lock:
            with self._lock:
                parts, unlinked, kind = p.path, p.unlinked, p.kind
            if p.error is not None:
                raise GemfsError(p.error, "an earlier write failed; nothing was uploaded")
            if not p.dirty or unlinked or kind == "local":
                return
            if kind == "held" and not self._draining_now():
                if durable:
                    self._journal(p, parts)
                return
            display = display_name(parts)  # local names decoded: the inverse of the tree's
            mime_type = mime.guess(parts[-1], p.staged.head(mime.SNIFF_BYTES))
            size = p.staged.size
            progress = {"path": display, "size": size, "sent": 0, "started": time.time()}
            with self._lock:
                self._uploads[id(p)] = progress

            def advance(sent: int) -> None:
                progress["sent"] = sent

            stream, p.stream, p.no_stream = p.stream, None, False
            if stream is not None and (stream.display_name, stream.mime_type) != (display, mime_type):
                # renamed, or its first bytes rewritten, since it started: go up whole
                stream.abandon()
                stream = None
            try:
                if stream is not None:
                    result = stream.finish(size, advance)
                else:
                    result = self.remote.upload_verified(p.staged.fd, size, display, mime_type,
                                                         advance)
            except GemfsError as e:
                p.failed = True
                found = None
                if e.errno == errno.EDQUOT and p.replaces:
                    log.warning("%s: no room in the quota for the new version next to the old "
                                "one (%d bytes); an overwrite needs both until it is done",
                                display, size)
                elif e.errno == errno.EIO:
                    found = self._doubt(display, p.staged.fd, size, p.replaces)
                if found is None:
                    raise
                result = found
            finally:
                with self._lock:
                    self._uploads.pop(id(p), None)
            record = result.record
            p.failed = False
            if p.hold is not None and self.state is not None:
                self.state.update_hold(p.hold, uploaded_id=record.id)
            p.dirty = False
            retired, p.replaces = p.replaces, [record]
            # The uploader checked the SHA-256 of what it sent against the File's sha256Hash.
            p.uploaded, p.digest = record, result.sha256_hex
            self.catalog.add_uploaded(record)
            with self._lock:
                self._recent[record.id] = time.time()
            if self.state is not None:
                self.state.set_mtime(record.id, p.mtime_ns)
            log.info("uploaded %s as %s (%d bytes, %s)", display, record.name, size, mime_type)
        for old in retired:
            if old.id != record.id:
                self._delete_remote(old, quiet=True)
        self._release_hold(p)
        self._settle_doubts(display, record)
        if self.wait_active:
            self._wait_active(record)

    def _doubt(self, display: str, fd: int, size: int, replaces: list[FileRecord]) -> UploadResult | None:
        """An upload failed in a way that leaves open whether the server made its File (every
        answer lost until the deadline). Look once (caller holds the file's lock, so nothing
        changes the staged bytes meanwhile): when the File is there, the upload happened and
        this is its result. Otherwise remember what it would hold, so the next upload of the
        same name can delete that File if it turns up. The close reports the failure, so such a
        File is not one the user knows of, and two Files of one name would be a duplicate.

        Looking at once matters for an overwrite: the File it replaces is not retired when the
        upload fails, so a File made despite the failure would stand beside it under one name
        until some later upload of that name settled it."""
        sha256_hex = sha256_of_fd(fd, size)
        started = self._clock()
        made = self._find_made(display, size, sha256_hex, replaces)
        if made is not None:
            log.info("%s: its upload failed, but the server made %s with its bytes; it stands",
                     display, made.name)
            return UploadResult(made, sha256_hex, 0, 0)
        with self._lock:
            self._doubtful.setdefault(display, []).append((size, sha256_hex, started))
        return None

    def _find_made(self, display: str, size: int, sha256_hex: str,
                   replaces: list[FileRecord]) -> FileRecord | None:
        """The File a failed upload of `display` made after all, or None (none among the newest
        Files, or the listing failed too). It has that name, size and SHA-256, and it is newer
        than every File the upload replaces, which all existed before it began (both createTimes
        are the server's, so this machine's clock never enters); of several, the newest. The
        Files it replaces are never it, even with the same bytes (`cp` of a file over its own
        copy)."""
        try:
            listing, _ = self.remote.list_page(deadline=LOOKUP_DEADLINE)  # the newest Files
        except GemfsError as e:
            log.warning("could not look for the File of the failed upload of %s: %s", display, e)
            return None
        known = {r.id for r in replaces}
        floor = max((r.create_time for r in replaces), default=float("-inf"))
        made = [r for r in listing
                if r.display_name == display and r.id not in known and r.size == size
                and r.create_time > floor and hex_from_api(r.api.get("sha256Hash")) == sha256_hex]
        return max(made, key=lambda r: r.create_time, default=None)

    def _settle_doubts(self, display: str, record: FileRecord) -> None:
        """After a successful upload of `display`: delete the Files that earlier failed uploads of
        that name made after all (same name, size and SHA-256, made since the attempt began:
        measured back from the new File's createTime, so the two machines' clocks never meet)."""
        with self._lock:
            doubts = self._doubtful.pop(display, None)
        if not doubts:
            return
        try:
            listing = self.remote.list_all()
        except GemfsError as e:
            log.warning("could not look for Files of failed uploads of %s: %s", display, e)
            with self._lock:
                self._doubtful.setdefault(display, []).extend(doubts)
            return
        now = self._clock()
        for other in listing:
            if other.id == record.id or other.display_name != display:
                continue
            sha = hex_from_api(other.api.get("sha256Hash"))
            if any(other.size == size and sha == digest
                   and record.create_time - (now - started) - 60 <= other.create_time <= record.create_time
                   for size, digest, started in doubts):
                log.info("deleting %s: the File of an upload of %s that seemed to fail",
                         other.name, display)
                self._delete_remote(other, quiet=True)

    def _journal(self, p: Pending, parts: Path) -> None:
        """Make a held file durable (caller holds p.lock): its bytes move into the state store's
        held directory (a rename: the open descriptor stays valid) and a journal row says what
        it will become, so a daemon crash before its rename or unmount loses nothing: the next
        mount of the project finishes it (recover_held)."""
        if self.state is None:
            os.fsync(p.staged.fd)
            return
        display = display_name(parts)
        replaces = [r.id for r in p.replaces]
        if p.hold is None:
            p.staged.path = self.state.adopt_held(p.staged.path)
            p.hold = self.state.hold(p.staged.path, display, replaces, p.mtime_ns)
        else:
            self.state.update_hold(p.hold, display_name=display, replaces_ids=replaces,
                                   mtime_ns=p.mtime_ns, data_changed=True)

    def _release_hold(self, p: Pending) -> None:
        """The journal row of a held file is done with (uploaded, or unlinked). The bytes stay:
        they are still the staged file's, which settles or discards them itself."""
        with p.lock:
            row, p.hold = p.hold, None
        if row is not None and self.state is not None:
            self.state.release_hold(row, keep_file=True)

    def recover_held(self) -> int:
        """At mount: finish the held files of a daemon of this project that died (crash, kill -9)
        before their rename or unmount: upload each under the name it was to take (or finish
        retiring what it replaces, when its upload had happened). Returns how many."""
        if self.state is None:
            return 0
        done = 0
        for hold in self.state.recover():
            try:
                if hold.uploaded_id is None:
                    fd = os.open(hold.path, os.O_RDONLY | os.O_CLOEXEC)
                    try:
                        size = os.fstat(fd).st_size
                        name = hold.display_name.rsplit("/", 1)[-1]
                        mime_type = mime.guess(name, os.pread(fd, mime.SNIFF_BYTES, 0))
                        record = self.remote.upload(fd, size, hold.display_name, mime_type)
                    finally:
                        os.close(fd)
                    self.state.update_hold(hold.row, uploaded_id=record.id)
                    self.catalog.add_uploaded(record)
                    if hold.mtime_ns is not None:
                        self.state.set_mtime(record.id, hold.mtime_ns)
                    log.info("recovered held file %s as %s", hold.display_name, record.name)
                for file_id in hold.replaces_ids:
                    try:
                        self.remote.delete(file_id)
                        self.catalog.mark_deleted(file_id)
                    except GemfsError as e:
                        log.error("could not delete the replaced File files/%s: %s", file_id, e)
                self.state.release_hold(hold.row)
                done += 1
            except (GemfsError, OSError) as e:
                log.error("could not recover held file %s: %s (kept for the next mount)",
                          hold.display_name, e)
        return done

    def _draining_now(self) -> bool:
        with self._lock:
            return self._draining

    def _wait_active(self, record: FileRecord) -> None:
        """--wait-active: close returns once the File is ACTIVE; EIO when it FAILED."""
        delay = 0.2
        while record.state not in ("ACTIVE", "FAILED"):
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
            record = self.remote.get(record.id)
            self.catalog.add_uploaded(record)
        if record.state == "FAILED":
            message = (record.api.get("error") or {}).get("message", "processing failed")
            log.warning("%s (%s) FAILED: %s", record.display_name or record.id, record.name, message)
            raise GemfsError(errno.EIO, f"{record.name} FAILED: {message}")

    def _delete_remote(self, record: FileRecord, *, quiet: bool = False) -> None:
        try:
            self.remote.delete(record.id)
        except GemfsError as e:
            if not quiet:
                raise
            # The new bytes are whole; failing the close for the old File would tell the user
            # their write failed. The old File stays listed as NAME~id until it expires; the
            # name shows the new one.
            log.error("could not delete the replaced File %s: %s", record.name, e)
            self.catalog.mark_superseded(record.id)
            return
        self.catalog.mark_deleted(record.id)
        if self.cache is not None:
            self.cache.drop(record.id)
        if self.state is not None:
            self.state.forget(record.id)

    @fuse_op
    def unlink(self, path: str) -> int:
        parts = split_path(path)
        self._check_writable()
        with self._lock:
            pending = self._pending.pop(parts, None)
            if pending is not None:
                pending.unlinked = True
            hidden = self._hidden.pop(parts, None)
        if hidden is not None:
            return 0
        if pending is not None:
            # `rm` removes what is at the path: this file's own upload and any File it replaces.
            with pending.lock:
                self._drop_stream(pending)
                remote = list(pending.replaces)
                pending.replaces = []
                with self._lock:
                    idle = pending.handles == 0
                if idle:
                    pending.staged.discard()
            self._release_hold(pending)
            for record in remote:
                self._delete_remote(record)
            return 0
        node = self.catalog.lookup(parts)
        if isinstance(node, FileNode):
            self._delete_remote(node.record)
            return 0
        if isinstance(node, DirNode):
            raise GemfsError(errno.EISDIR)
        if self._sidecar_record(parts) is not None or self._hidden_list(parts) is not None:
            raise GemfsError(errno.EPERM, "sidecars are read-only")
        raise GemfsError(errno.ENOENT)

    def _hide(self, src: Path, dst: Path) -> int:
        """libfuse's rename of an open file that is being unlinked to `.fuse_hidden*`: the file
        goes away for everyone else (its Files are deleted) and lives on for its descriptors."""
        with self._lock:
            pending = self._pending.pop(src, None)
            if pending is not None:
                pending.unlinked = True
                pending.path = dst
                self._pending[dst] = pending
        if pending is not None:
            with pending.lock:
                self._drop_stream(pending)
                remote, pending.replaces = list(pending.replaces), []
            self._release_hold(pending)
            for record in remote:
                self._delete_remote(record)
            return 0
        node = self.catalog.lookup(src)
        if not isinstance(node, FileNode):
            raise GemfsError(errno.ENOENT)
        attrs = self._node_attrs(node)
        self._delete_remote(node.record)
        with self._lock:
            self._hidden[dst] = attrs
        return 0

    @fuse_op
    def rename(self, old: str, new: str, flags: int = 0) -> int:
        self._check_rename_flags(new, flags)
        src, dst = split_path(old), new_name(new)
        self._check_writable()
        if HIDDEN_NAME.match(dst[-1]) and dst[:-1] == src[:-1]:
            return self._hide(src, dst)
        if not self._dir_exists(dst[:-1]):
            raise GemfsError(errno.ENOENT)
        with self._lock:
            pending = self._pending.get(src)
        target = self.catalog.lookup(dst)
        if pending is None:
            if self._sidecar_record(src) is not None:
                raise GemfsError(errno.EPERM, "sidecars are read-only")
            node = self.catalog.lookup(src)
            if node is None:
                raise GemfsError(errno.ENOENT)
            if isinstance(node, DirNode):
                return self._rename_dir(src, dst)
            if isinstance(target, DirNode):
                raise GemfsError(errno.EISDIR)
            return self._rename_file(node.record, src, dst, target)
        if isinstance(target, DirNode):
            raise GemfsError(errno.EISDIR)
        pid = _caller()
        kind = self._kind_of(dst[-1], pid)
        # A writer closes (FLUSH) before it renames, but the kernel's RELEASE of its handle may
        # come after the rename: the handles of a file that the renaming process itself closed
        # last, and no longer holds for writing, are on their way out.
        me = procinfo.process_of(pid) if pid > 0 else -1
        src_written = self._held_for_writing(pid, src)
        dst_written = self._held_for_writing(pid, dst)
        with self._lock:
            other = self._pending.get(dst)
            if other is not None and other is not pending:
                if other.handles and (other.closed_by != me or dst_written):
                    raise GemfsError(errno.ETXTBSY, "target is being written")
                del self._pending[dst]
            if self._pending.get(src) is pending:
                del self._pending[src]
            old_kind = pending.kind
            pending.path, pending.kind = dst, kind
            self._pending[dst] = pending
            idle = pending.handles == 0 or (pending.closed_by == me and not src_written)
        if other is not None and other is not pending:
            with other.lock:
                self._drop_stream(other)
                other.staged.discard()
                other_remote, other.replaces = list(other.replaces), []
            for record in other_remote:
                self._delete_remote(record, quiet=True)
        with pending.lock:
            self._drop_stream(pending, again=True)  # its session carries the old name
            # The bytes go up (again) under the new name, retiring whatever was at it.
            if not pending.base_missing:
                pending.dirty = True
            if isinstance(target, FileNode):
                pending.replaces.append(target.record)
            if pending.hold is not None:
                self._journal(pending, dst)  # a crash from here on finishes the rename
            if not isinstance(target, FileNode) and sidecar.split(dst[-1]) is not None:
                # A rename onto a sidecar's name (rsync's `.X.meta.json.XXXXXX` onto
                # `X.meta.json`) makes a File of that display name, shown `X.meta~<id>.json`.
                claimed = self.catalog.claimant(dst)
                if claimed is not None:
                    pending.replaces.append(claimed)
        if idle and kind == "upload":
            # A closed temp file renamed to its final name: this is its one upload.
            try:
                self._upload(pending)
            except BaseException:
                self._unrename(pending, src, dst, target, old_kind)
                raise
            self._settle_if_idle(pending)
        return 0

    def _unrename(self, p: Pending, src: Path, dst: Path, target, kind: str) -> None:
        """A rename whose upload failed did not happen: the file is back at its old name, held as
        before, and whatever was at the target stays."""
        with self._lock:
            if self._pending.get(dst) is p and src not in self._pending:
                del self._pending[dst]
                p.path, p.kind = src, kind
                self._pending[src] = p
        with p.lock:
            if isinstance(target, FileNode) and target.record in p.replaces:
                p.replaces.remove(target.record)
            if p.hold is not None:
                self._journal(p, p.path)

    def _settle_if_idle(self, p: Pending) -> None:
        with self._lock:
            idle = p.handles == 0
        if idle:
            self._settle(p)

    def _rename_dir(self, src: Path, dst: Path) -> int:
        if self.catalog.is_local_dir(src) and not self.catalog.listdir(src):
            if self._exists(dst):
                raise GemfsError(errno.EEXIST)
            self.catalog.remove_dir(src)
            self.catalog.add_dir(dst)
            return 0
        raise GemfsError(errno.EPERM, "the Files API cannot rename; folders of Files stay")

    def _rename_file(self, record: FileRecord, src: Path, dst: Path, target) -> int:
        """mv of a File: with its bytes here, upload them under the new name, then delete the old
        File (the API has no rename). Without them: EPERM, never EXDEV, which would make mv
        try to read it."""
        if not self._cached(record.id):
            raise GemfsError(errno.EPERM, "the Files API cannot rename a File whose bytes are "
                             "not on this machine")
        fh = self._start_pending(dst, target.record if isinstance(target, FileNode) else None,
                                 base=record)
        p = self._handle(fh)
        try:
            with p.lock:
                self._materialize(p)
                p.dirty = True
                p.replaces.append(record)
        except BaseException:
            self.release(None, fh)
            raise
        try:
            self._upload(p)
        finally:
            self.release(None, fh)
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
        if flags & ~RENAME_NOREPLACE:  # RENAME_EXCHANGE, RENAME_WHITEOUT, anything newer
            raise GemfsError(errno.EINVAL, "renameat2 flags other than RENAME_NOREPLACE")
        if flags & RENAME_NOREPLACE and self._exists(split_path(new)):
            raise GemfsError(errno.EEXIST)

    def _refuse_trash(self, parts: Path) -> None:
        """No trash folder at the root: GIO (every GTK file manager) would make `.Trash-UID`,
        upload `.trashinfo` files into it and then fail to move the File in (the API has no
        rename). Refused, GIO offers to delete permanently instead, and nothing is uploaded."""
        if len(parts) == 1 and TRASH_NAME.match(parts[0]):
            raise GemfsError(errno.EPERM, "no trash on a gemfs mount")

    def _xattrs(self, path: str) -> dict[str, bytes]:
        """The extended attributes of a path: a File's metadata under `user.gemini.*`; none
        for folders, sidecars and files still being written (they have no File yet)."""
        parts = split_path(path)
        if not parts:
            return {}
        with self._lock:
            pending = self._pending.get(parts)
        if pending is not None:
            # Its File, once the bytes written so far are one. Read without the file lock, which an
            # upload holds: two single reads, and a stale answer only lags one upload behind.
            uploaded = None if pending.dirty else pending.uploaded
            return record_xattrs(self._fresh_record(uploaded)) if uploaded else {}
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


# The trash folders of the XDG trash spec at a mount's top: `.Trash` (shared) and `.Trash-UID`.
TRASH_NAME = re.compile(r"^\.Trash(-[0-9]+)?$")

XATTR_PREFIX = "user.gemini."


def record_xattrs(record: FileRecord) -> dict[str, bytes]:
    """A File's `user.gemini.*` attributes, each as its sidecar shows it; absent fields are
    absent attributes."""
    values = {
        "uri": record.api.get("uri"),
        "name": record.name,
        "mime_type": record.mime_type,
        "state": record.state,
        "sha256": hex_from_api(record.api.get("sha256Hash")),
        "expiration_time": record.api.get("expirationTime"),
    }
    return {XATTR_PREFIX + k: str(v).encode("utf-8") for k, v in values.items() if v}
