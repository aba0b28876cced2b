"""Drives a `GemFS` in-process, without FUSE, the way the kernel and mfusepy call it.

`Driver` builds the same objects `gemfs/mount.py` builds (GemFS over a Remote, a Catalog, a
StagingArea, a ContentCache and a StateStore, the catalog's listings reconciled into the last two,
and `recover_held` at start), but over a `FakeRemote` and a `FakeClock`, so a test runs in
milliseconds and can count every request. The staging, cache and state directories live under the
driver's `tmp`, so a second Driver over the same `tmp` is the next mount of the same project. Operations are called as mfusepy calls them: paths like "/a/b", file handles
as ints, open flags; errors surface as mfusepy's `FuseOSError` (an OSError whose errno is what
the kernel would hand the process), which `fuse_op` in gemfs/errors.py makes of a GemfsError.

The caller's pid (`fuse_get_context`) is this test process, so /proc lookups behave; its command
name (`procinfo.command`, which decides whether rsync's `.NAME.XXXXXX` is a held temp name) is
`Driver.command` when a test sets one (`"rsync"`), else the real one. The mount
point is an empty directory of the test's own, so no close looks like "the caller keeps another
descriptor of this file open" unless a test says so with `holding(path)`, which opens a stand-in
file at that path below it for writing, as a process that keeps its descriptor open during fsync,
or a shell that dup2()s a redirect and closes the first descriptor (procinfo.holds_for_writing
counts only descriptors open for writing).
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import stat
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import gemfs.fs as fs_module
from gemfs import procinfo
from gemfs.cache import ContentCache
from gemfs.catalog import Catalog
from gemfs.fs import GemFS
from gemfs.staging import StagingArea
from gemfs.state import StateStore
from tests.fs.fake import DEFAULT_MAX_FILE_SIZE, DEFAULT_QUOTA, FakeClock, FakeRemote

WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
CP_CHUNK = 128 * 1024  # cp writes in pieces of max(st_blksize, 128 KiB)
CACHE_BYTES = 1 << 30  # the content cache's bound; tests stay far below it


class Driver:
    """One in-process mount: `fs` (the GemFS), `remote` (the FakeRemote), `clock`, `catalog`."""

    def __init__(self, tmp: Path, *, quota: int = DEFAULT_QUOTA, max_file_size: int = DEFAULT_MAX_FILE_SIZE,
                 show_meta: bool = False, list_ttl: float = float("inf"), remote: FakeRemote | None = None,
                 clock: FakeClock | None = None, seed: int = 0, cache_bytes: int = CACHE_BYTES,
                 command: str | None = None, stream_from: int | None = 16 * 1024) -> None:
        self.clock = clock or (remote.clock if remote else FakeClock())
        self.remote = remote or FakeRemote(self.clock, quota=quota, max_file_size=max_file_size, seed=seed)
        self.fs: GemFS | None = None
        # An infinite TTL keeps refreshes out of background threads: a test that wants a new
        # listing calls relist(), which fetches in this thread.
        self.catalog = Catalog(self._listing, ttl=list_ttl, clock=self.clock)
        self.catalog.refresh_now()
        self.staging = StagingArea(str(tmp / "staging"), max_file_size=max_file_size,
                                   quota_left=lambda: quota - self.catalog.used_bytes())
        # The fake clock: expiry is judged against the expirationTime the fake wrote from it.
        self.cache = ContentCache(str(tmp / "cache"), cache_bytes, clock=self.clock)
        self.state = StateStore(str(tmp / "state"), clock=self.clock)
        self.fs = GemFS(self.remote, self.catalog, self.staging, quota=quota, show_meta=show_meta,
                        cache=self.cache if self.cache.enabled else None, state=self.state,
                        clock=self.clock, stream_from=stream_from)
        self.mountpoint = os.path.realpath(tmp / "mnt")
        os.makedirs(self.mountpoint, exist_ok=True)
        self.fs.mountpoint = self.mountpoint
        self.pid = os.getpid()  # the caller FUSE names; a test may set another (a dying process)
        self.command = command  # the caller's command name, when a test names one
        self._saved_context: list[tuple[Any, str, Any]] = []
        context = lambda: (os.getuid(), os.getgid(), self.pid)  # noqa: E731
        real_command = procinfo.command

        def command_of(pid: int) -> str:
            return self.command if self.command is not None and pid == self.pid else real_command(pid)

        for module, name, value in ((fs_module, "fuse_get_context", context),
                                    (procinfo, "command", command_of)):
            self._saved_context.append((module, name, getattr(module, name)))
            setattr(module, name, value)
        self.recovered = self.fs.recover_held()  # as mount.py does before it mounts

    def _listing(self) -> list:
        """The catalog's listing, as mount.py wires it: a full listing also tells the cache and
        the state store which Files are gone."""
        started = time.time()
        records = self.remote.list_all()
        if self.fs is not None:
            self.fs.reconcile(records, started)
        return records

    def shutdown(self) -> None:
        """Undo the patches and close the staging area, cache and state store (the staged files
        die with the staging area)."""
        self._unpatch()
        if self.staging is not None:  # not after crash()
            self.staging.close()
            self.cache.close()
            self.state.close()
            self.staging = None  # type: ignore[assignment]

    def _unpatch(self) -> None:
        for module, name, value in reversed(self._saved_context):
            setattr(module, name, value)
        self._saved_context.clear()

    def crash(self) -> None:
        """The daemon dies here: no unmount, nothing cleaned up. Its staging, cache and state
        directories stay on disk as they are, and its flocks are let go, as the kernel does for a
        dead process."""
        self._unpatch()
        os.close(self.staging._lock_fd)
        self.state._db.close()  # a dead process's connection: what it committed is on disk
        os.close(self.state._lock_fd)
        if self.cache.enabled:
            self.cache._db.close()
            os.close(self.cache._lock_fd)
        self.staging = None  # type: ignore[assignment]

    def __enter__(self) -> "Driver":
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # -- raw calls ------------------------------------------------------------------------------

    def call(self, op: str, *args: Any) -> Any:
        """`fs.<op>(*args)`; raises OSError (mfusepy's FuseOSError) with the kernel's errno."""
        return getattr(self.fs, op)(*args)

    def err(self, op: str, *args: Any) -> int:
        """The errno `fs.<op>(*args)` gives the kernel, 0 on success."""
        return errno_of(lambda: self.call(op, *args))

    @contextlib.contextmanager
    def holding(self, path: str, *, write: bool = True):
        """While inside, this process holds a descriptor (open for writing unless `write` is
        False) whose /proc/self/fd link is the mount's `path`, as the kernel would show a descriptor open on the mount (the stand-in file lives
        in the otherwise empty directory that `fs.mountpoint` names)."""
        shadow = os.path.join(self.mountpoint, path.lstrip("/"))
        os.makedirs(os.path.dirname(shadow), exist_ok=True)
        fd = os.open(shadow, (os.O_WRONLY if write else os.O_RDONLY) | os.O_CREAT, 0o600)
        try:
            yield
        finally:
            os.close(fd)
            os.unlink(shadow)

    def unmount(self) -> None:
        """What mount.py does once libfuse has stopped taking requests."""
        self.fs.drain()
        self.fs.upload_held()

    def relist(self) -> None:
        """A fresh `files.list` snapshot, fetched now in this thread (as a TTL expiry would)."""
        self.catalog.refresh_now()

    # -- what a process does, op by op as the kernel sends them ---------------------------------

    def exists(self, path: str) -> bool:
        return self.err("getattr", path) == 0

    def open(self, path: str, flags: int = os.O_RDONLY, mode: int = 0o644) -> int:
        """open(2): CREATE when the lookup finds nothing and O_CREAT is set, else OPEN with the
        flags (libfuse3 sets atomic_o_trunc, so O_TRUNC arrives in OPEN). Raises OSError."""
        if flags & os.O_CREAT and not self.exists(path):
            return self.call("create", path, stat.S_IFREG | mode, flags)
        if flags & os.O_CREAT and flags & os.O_EXCL:
            raise OSError(errno.EEXIST, os.strerror(errno.EEXIST))
        return self.call("open", path, flags & ~(os.O_CREAT | os.O_EXCL))

    def write(self, fh: int, data: bytes, offset: int = 0, path: str | None = None) -> int:
        """Write `data` at `offset` in cp's 128 KiB pieces; returns the bytes written."""
        done = 0
        while done < len(data):
            done += self.call("write", path, data[done:done + CP_CHUNK], offset + done, fh)
        return done

    def read(self, fh: int, size: int = 1 << 30, offset: int = 0, path: str | None = None) -> bytes:
        out, pos = [], offset
        while pos - offset < size:
            piece = self.call("read", path, min(CP_CHUNK, size - (pos - offset)), pos, fh)
            if not piece:
                break
            out.append(piece)
            pos += len(piece)
        return b"".join(out)

    def flush(self, path: str | None, fh: int) -> int:
        return self.err("flush", path, fh)

    def fsync(self, path: str | None, fh: int) -> int:
        return self.err("fsync", path, 0, fh)

    def release(self, path: str | None, fh: int) -> None:
        """RELEASE: the kernel ignores its result, and so do tests."""
        self.err("release", path, fh)

    def close(self, path: str | None, fh: int) -> int:
        """close(2) of the last descriptor: FLUSH (its errno is close's) then RELEASE."""
        result = self.flush(path, fh)
        self.release(path, fh)
        return result

    def write_file(self, path: str, data: bytes, flags: int = WRITE_FLAGS) -> int:
        """`cp`'s syscalls (or `>>`'s, with O_APPEND): open, write in pieces, close. 0, or the
        first errno the process saw (a failed write still closes, as cp does)."""
        try:
            fh = self.open(path, flags)
        except OSError as e:
            return e.errno
        try:
            # O_APPEND: the kernel writes at the end it knows, the size from getattr.
            offset = self.call("getattr", path, fh)["st_size"] if flags & os.O_APPEND else 0
            self.write(fh, data, offset, path)
        except OSError as e:
            self.close(path, fh)
            return e.errno
        return self.close(path, fh)

    def read_file(self, path: str) -> bytes:
        """`cat`: open O_RDONLY, read to the end, close. Raises OSError."""
        fh = self.open(path, os.O_RDONLY)
        try:
            return self.read(fh, path=path)
        finally:
            self.close(path, fh)

    def stat(self, path: str) -> dict:
        """The attributes `stat` sees. Raises OSError."""
        return self.call("getattr", path, None)

    def ls(self, path: str = "/") -> dict[str, dict]:
        """`ls -l`: opendir, one READDIRPLUS, releasedir; name -> attributes. Entries the
        listing gives without attributes (sidecars) are looked up, as the kernel does."""
        fh = self.call("opendir", path)
        try:
            entries = list(self.call("readdir_plus", path, 0, fh))
        finally:
            self.call("releasedir", path, fh)
        out = {}
        for name, attrs, _offset in entries:
            if name in (".", ".."):
                continue
            out[name] = attrs if attrs is not None else self.stat(join(path, name))
        return out

    def rm(self, path: str) -> int:
        return self.err("unlink", path)

    def mv(self, old: str, new: str) -> int:
        return self.err("rename", old, new)

    def mkdir(self, path: str) -> int:
        return self.err("mkdir", path, 0o755)

    def rmdir(self, path: str) -> int:
        return self.err("rmdir", path)


def _default_signals() -> None:
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, signal.SIG_DFL)


@contextlib.contextmanager
def ended_process(sig: int | None = None):
    """The pid of a child that has ended, killed by `sig` (or exited 0 when None), and is not
    reaped yet: its /proc/PID/stat carries how it ended, as that of a task still closing its
    descriptors on the way out does. Set `Driver.pid` to it to make it the closing process."""
    # Default dispositions in the child: a pytest-xdist worker may have SIGINT ignored, which an
    # exec keeps, and a `sleep` that ignores SIGINT never ends.
    proc = subprocess.Popen(["sleep", "600"] if sig else ["true"], preexec_fn=_default_signals)
    if sig:
        proc.send_signal(sig)
    os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)  # ended, not reaped
    try:
        yield proc.pid
    finally:
        proc.wait()


def join(folder: str, name: str) -> str:
    return folder.rstrip("/") + "/" + name


def errno_of(fn: Callable[[], Any]) -> int:
    try:
        fn()
    except OSError as e:
        return e.errno
    return 0
