"""The write path as a state machine: random sequences of file operations and faults against a
model of what the user was promised, checked after every step.

The model is path -> the bytes of the last close (or fsync) that returned 0 for that path. After
each step:
- every path of the model is listed, with its size, and stat agrees;
- the FakeRemote holds exactly one File per display name of the model, with the model's bytes
  (duplicates: 0, bytes lost: 0);
- no File exists remotely under a name the model does not have (nothing a failed close or an
  unlink left behind).
A close that is not the last one of its file may or may not upload (gemfs waits for the last
writer when the closing process or an ancestor still holds the file open for writing; the
driver's second handles are not in /proc, so here they upload): until the last close, the bytes of
such a close are "possible" for that path, not promised. So are the bytes of an upload whose answer was lost
after the server made the File (LostAnswerMachine): gemfs may report EIO or find its File; the
invariants still allow at most one File for the name, holding promised or possible bytes.

Every closed file of the model is a File this mount uploaded. The driver's content cache keeps
its bytes (so `>>` and mv of it work like those of a local file, SEMANTICS.md "Own Files")
unless its last close failed after an fsync had put up earlier bytes: the cache takes bytes at
the last close only, so that File is like one uploaded elsewhere (`>>` and mv: EPERM).
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from tests.fs.driver import Driver

FILE_NAMES = ("a", "b.txt", "c.bin")  # never a temp name, never a directory name
DIR_NAMES = ("d", "e")
FILE_PATHS = tuple(
    [f"/{n}" for n in FILE_NAMES]
    + [f"/{d}/{n}" for d in DIR_NAMES for n in FILE_NAMES]
    + [f"/d/e/{n}" for n in FILE_NAMES[:2]]
)
DIR_PATHS = ("/d", "/e", "/d/e", "/e/d")
MAX_OPEN = 3

paths = st.sampled_from(FILE_PATHS)
picks = st.integers(0, 48)  # which of the open files, handles or known paths a rule acts on
dir_paths = st.sampled_from(DIR_PATHS)
contents = st.binary(max_size=64) | st.builds(lambda n, b: b * n, st.integers(0, 70_000), st.binary(min_size=1, max_size=3))


def pick(items: list, choice: int):
    return items[choice % len(items)]


def parents(path: str) -> list[str]:
    parts = path.strip("/").split("/")[:-1]
    return ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]


def display(path: str) -> str:
    return path.lstrip("/")


@dataclass
class OpenFile:
    """A file this machine holds open for writing: its handles and the bytes they staged."""

    handles: list[int]
    content: bytearray = field(default_factory=bytearray)
    dirty: bool = True  # bytes not yet made durable by a close or fsync that returned 0
    synced: bool = False  # an fsync of this open file returned 0: the model holds its bytes


class FsMachine(RuleBasedStateMachine):
    # Whether `inject_upload_fault` may lose the answer after the server made the File (the
    # subject of issue 10); LostAnswerMachine below turns it on.
    UPLOAD_FAULT_AFTER = False

    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.mkdtemp(prefix="gemfs-model-")
        self.drv = Driver(Path(self.tmp))
        self.model: dict[str, bytes] = {}  # path -> bytes promised
        # path -> {bytes a non-last close or a lost answer may have put up: when that File expires}
        self.maybe: dict[str, dict[bytes, float]] = {}
        self.opened: dict[str, OpenFile] = {}
        self.orphans: list[int] = []  # handles of files unlinked while open
        self.local_dirs: set[str] = set()  # made with mkdir and not removed
        self.expires: dict[str, float] = {}  # path -> expirationTime of the File of its model bytes
        # Paths whose model bytes this machine has no copy of: an fsync put them up, and the last
        # close, which hands the staged bytes to the content cache, failed with newer bytes.
        self.uncached: set[str] = set()
        self.fault: str | None = None  # the upload fault armed and not fired: "before", "after"

    def teardown(self) -> None:
        for fh in self.orphans:
            self.drv.release(None, fh)
        for path, f in self.opened.items():
            for fh in f.handles:
                self.drv.release(path, fh)
        self.drv.shutdown()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- helpers --------------------------------------------------------------------------------

    def dir_exists(self, path: str) -> bool | None:
        """True or False; None when only a File the model is unsure of (a "possible" one) is
        in it, which the mount may or may not know of yet."""
        below = path + "/"
        if path == "/" or path in self.local_dirs or any(p.startswith(below) for p in list(self.model) + list(self.opened)):
            return True
        return None if any(p.startswith(below) for p in self.maybe) else False

    def mkdir_p(self, path: str) -> None:
        for parent in parents(path):
            exists = self.dir_exists(parent)
            result = self.drv.mkdir(parent)
            assert result in (0, errno.EEXIST), (parent, errno.errorcode.get(result))
            if exists is not None:
                assert (result == 0) == (not exists), (parent, result)
            if result == 0:
                self.local_dirs.add(parent)

    def expiry(self, path: str, data: bytes) -> float:
        """The expirationTime of the File that holds `data` under `path`'s name (the service's,
        not a guess: its createTime may be a few microseconds past the clock)."""
        found = [s.record.expiration_time for s in self.drv.remote.named(display(path)) if s.data == data]
        assert found, f"no File named {display(path)!r} holds the bytes closed with success"
        return found[-1]

    def promise(self, path: str, data: bytes) -> None:
        self.model[path] = data
        self.expires[path] = self.expiry(path, data)
        self.maybe.pop(path, None)
        self.uncached.discard(path)

    def forget(self, path: str) -> None:
        self.model.pop(path, None)
        self.maybe.pop(path, None)
        self.expires.pop(path, None)
        self.uncached.discard(path)

    def settle(self, path: str, data: bytes, before: int, result: int, *, expect_upload: bool) -> bool:
        """Check the errno and upload count of a step that may upload `data` under `path`;
        True when the bytes are up. Without a fault the step succeeds. A fault before the work
        is the step's EIO. A fault after it (the server made the File, the answer was lost) may
        be EIO, or 0 if gemfs found out that its File exists; on EIO those bytes become possible
        for the path, and the invariants still allow one File only."""
        uploads = self.drv.remote.count("upload") - before
        assert uploads == (1 if expect_upload else 0), f"{uploads} uploads, expected {int(expect_upload)}"
        fired = self.fault if self.fault and not self.drv.remote.armed("upload") else None
        if fired:
            self.fault = None
        if fired is None:
            assert result == 0, errno.errorcode.get(result, result)
            return True
        if fired == "before":
            assert result == errno.EIO, errno.errorcode.get(result, result)
            return False
        assert result in (0, errno.EIO), errno.errorcode.get(result, result)
        if result == 0:
            return True
        made = [s.record.expiration_time for s in self.drv.remote.named(display(path)) if s.data == data]
        if made:
            self.maybe.setdefault(path, {})[data] = made[-1]
        return False

    # -- rules: whole files ---------------------------------------------------------------------

    @precondition(lambda self: len(self.opened) < MAX_OPEN)
    @rule(path=paths, data=contents)
    def write_file(self, path: str, data: bytes) -> None:
        """cp: create or truncate, write, close."""
        if path in self.opened:
            return
        self.mkdir_p(path)
        before = self.drv.remote.count("upload")
        result = self.drv.write_file(path, data)
        if self.settle(path, data, before, result, expect_upload=True):
            self.promise(path, data)

    @rule(path=paths, data=contents, suffix=st.sampled_from(["Xy12Z9", "000000", "aBcDeF"]))
    def rsync_style(self, path: str, data: bytes, suffix: str) -> None:
        """rsync: write `.NAME.XXXXXX`, close (held: no upload), rename over NAME (one upload)."""
        if path in self.opened:
            return
        self.mkdir_p(path)
        folder, name = path.rsplit("/", 1)
        temp = f"{folder}/.{name}.{suffix}"
        before = self.drv.remote.count("upload")
        self.drv.command = "rsync"  # `.NAME.XXXXXX` is a held temp name only when rsync makes it
        try:
            assert self.drv.write_file(temp, data) == 0
        finally:
            self.drv.command = None
        assert self.drv.remote.count("upload") == before
        assert self.drv.stat(temp)["st_size"] == len(data)
        result = self.drv.mv(temp, path)
        if self.settle(path, data, before, result, expect_upload=True):
            self.promise(path, data)
            assert self.drv.err("getattr", temp, None) == errno.ENOENT
        elif self.drv.err("getattr", temp, None) == 0:
            assert self.drv.rm(temp) == 0  # a held file that could not go up: rm never uploads it
        assert self.drv.err("getattr", temp, None) == errno.ENOENT

    def closed_files(self) -> list[str]:
        """Paths whose bytes are promised and that nothing holds open."""
        return sorted(p for p in self.model if p not in self.opened and p not in self.maybe)

    @precondition(lambda self: self.closed_files())
    @rule(choice=picks, data=contents)
    def overwrite(self, choice: int, data: bytes) -> None:
        """cp over a file this mount closed: a new File, then the old one retired."""
        path = pick(self.closed_files(), choice)
        before = self.drv.remote.count("upload")
        result = self.drv.write_file(path, data)
        if self.settle(path, data, before, result, expect_upload=True):
            self.promise(path, data)

    @precondition(lambda self: self.closed_files())
    @rule(choice=picks, data=st.binary(min_size=1, max_size=32))
    def append_by_reopen(self, choice: int, data: bytes) -> None:
        """`>>` on a closed file: its cached bytes are copied into staging and the close uploads
        the whole, then retires the old File. Without them the open works, the write is EPERM."""
        path = pick(self.closed_files(), choice)
        old = self.model[path]
        before = self.drv.remote.count("upload")
        fh = self.drv.open(path, os.O_WRONLY | os.O_APPEND)
        if path in self.uncached:
            assert self.drv.err("write", path, data, len(old), fh) == errno.EPERM
            assert self.drv.close(path, fh) == 0
            assert self.drv.remote.count("upload") == before
            return
        assert self.drv.write(fh, data, len(old), path) == len(data)
        result = self.drv.close(path, fh)
        if self.settle(path, old + data, before, result, expect_upload=True):
            self.promise(path, old + data)

    @rule(choice=picks, anywhere=st.booleans())
    def unlink(self, choice: int, anywhere: bool) -> None:
        """rm of a closed file (or of any name: ENOENT when nothing is there)."""
        known = sorted(p for p in set(self.model) | set(self.maybe) if p not in self.opened)
        path = FILE_PATHS[choice % len(FILE_PATHS)] if anywhere or not known else pick(known, choice)
        if path in self.opened:
            return
        result = self.drv.rm(path)
        if path in self.model:
            assert result == 0, errno.errorcode.get(result)
            self.forget(path)
        elif path in self.maybe:  # a File the mount may not know of yet (a lost answer)
            assert result in (0, errno.ENOENT), errno.errorcode.get(result)
            if result == 0:
                self.forget(path)
        else:
            assert result == errno.ENOENT, errno.errorcode.get(result)

    @precondition(lambda self: self.closed_files())
    @rule(choice=picks, after=st.booleans())
    def unlink_with_delete_fault(self, choice: int, after: bool) -> None:
        """rm whose files.delete fails: EIO, and the File is still there (before), or already gone
        (after: a second rm finds it gone and succeeds)."""
        path = pick(self.closed_files(), choice)
        self.drv.remote.fail_next("delete", errno.EIO, after=after)
        assert self.drv.rm(path) == errno.EIO
        assert self.drv.remote.armed("delete") == 0
        if after:
            assert self.drv.rm(path) == 0
            self.forget(path)

    @precondition(lambda self: self.closed_files())
    @rule(choice=picks, dst=paths)
    def rename(self, choice: int, dst: str) -> None:
        """mv of a closed file: an upload of its cached bytes under the new name, then a delete of
        the old File (the API has no rename); EPERM without them."""
        src = pick(self.closed_files(), choice)
        if src == dst or dst in self.opened:
            return
        self.mkdir_p(dst)
        before = self.drv.remote.count("upload")
        result = self.drv.mv(src, dst)
        if src in self.uncached:
            assert result == errno.EPERM, errno.errorcode.get(result, result)
            assert self.drv.remote.count("upload") == before
            return
        if self.settle(dst, self.model[src], before, result, expect_upload=True):
            self.promise(dst, self.model[src])
            self.forget(src)

    # -- rules: open files ----------------------------------------------------------------------

    @precondition(lambda self: len(self.opened) < MAX_OPEN)
    @rule(path=paths)
    def open_for_write(self, path: str) -> None:
        """open(O_WRONLY|O_CREAT|O_TRUNC) and keep the descriptor."""
        if path in self.opened:
            return
        self.mkdir_p(path)
        fh = self.drv.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        self.opened[path] = OpenFile([fh])
        assert self.drv.stat(path)["st_size"] == 0

    @precondition(lambda self: self.opened)
    @rule(choice=picks)
    def second_handle(self, choice: int) -> None:
        """Another descriptor on a file being written (a second process, or fork)."""
        path = pick(sorted(self.opened), choice)
        fh = self.drv.open(path, os.O_WRONLY)
        self.opened[path].handles.append(fh)

    @precondition(lambda self: self.opened)
    @rule(choice=picks, chunk=contents, where=st.integers(0, 100))
    def write_open(self, choice: int, chunk: bytes, where: int) -> None:
        """pwrite through one of the handles, anywhere up to just past the end."""
        path = pick(sorted(self.opened), choice)
        f = self.opened[path]
        fh = pick(f.handles, choice // 7)
        if not chunk:
            return  # write(fd, buf, 0) never reaches a FUSE file system
        offset = len(f.content) * where // 100 if where < 100 else len(f.content) + 7
        assert self.drv.write(fh, chunk, offset, path) == len(chunk)
        end = offset + len(chunk)
        if end > len(f.content):
            f.content.extend(b"\0" * (end - len(f.content)))
        f.content[offset:end] = chunk
        f.dirty = True

    @precondition(lambda self: self.opened)
    @rule(choice=picks, where=st.integers(0, 120))
    def truncate_open(self, choice: int, where: int) -> None:
        """ftruncate through a handle, shorter or longer."""
        path = pick(sorted(self.opened), choice)
        f = self.opened[path]
        length = len(f.content) * where // 100
        if length == len(f.content):
            length += 1  # always a change, so "dirty" means the same to the model and to gemfs
        assert self.drv.err("truncate", path, length, f.handles[0]) == 0
        del f.content[length:]
        f.content.extend(b"\0" * (length - len(f.content)))
        f.dirty = True

    @precondition(lambda self: self.opened)
    @rule(choice=picks)
    def fsync(self, choice: int) -> None:
        """fsync is a durability point: once it returns 0 the bytes are a File."""
        path = pick(sorted(self.opened), choice)
        f = self.opened[path]
        before = self.drv.remote.count("upload")
        result = self.drv.fsync(path, f.handles[0])
        if self.settle(path, bytes(f.content), before, result, expect_upload=f.dirty):
            if f.dirty or path in self.model:  # not when its File has expired since
                self.promise(path, bytes(f.content))
                f.synced = True
            f.dirty = False

    @precondition(lambda self: self.opened)
    @rule(choice=picks)
    def close_handle(self, choice: int) -> None:
        path = pick(sorted(self.opened), choice)
        f = self.opened[path]
        fh = pick(f.handles, choice // 7)
        f.handles.remove(fh)
        last = not f.handles
        content = bytes(f.content)
        before = self.drv.remote.count("upload")
        result = self.drv.close(path, fh)
        if not last:
            # Issue 9 item 7 lets gemfs wait for the last writer; if it uploads, it says so, and
            # the bytes are possible for the path until the last close settles them.
            uploads = self.drv.remote.count("upload") - before
            assert uploads <= (1 if f.dirty else 0)
            if uploads and self.settle(path, content, before, result, expect_upload=True):
                self.maybe.setdefault(path, {})[content] = self.expiry(path, content)
                f.dirty = False
            elif not uploads:
                assert result == 0, errno.errorcode.get(result)
            return
        del self.opened[path]
        # On failure, what an earlier close of this file may have put up stays possible.
        if self.settle(path, content, before, result, expect_upload=f.dirty):
            if f.dirty or path in self.maybe:
                self.promise(path, content)
        elif f.synced and path in self.model:
            self.uncached.add(path)  # the fsync'd File stays; its bytes were never cached

    @precondition(lambda self: self.opened)
    @rule(choice=picks, dst=paths)
    def rename_open(self, choice: int, dst: str) -> None:
        """mv of a file being written: it is uploaded under the new name, replacing what is there."""
        src = pick(sorted(self.opened), choice)
        if dst == src or dst in self.opened or src in self.model or src in self.maybe:
            return
        self.mkdir_p(dst)
        f = self.opened[src]
        content = bytes(f.content)
        before = self.drv.remote.count("upload")
        result = self.drv.mv(src, dst)
        if self.drv.remote.count("upload") == before:
            assert result == 0, errno.errorcode.get(result, result)
            self.opened[dst] = self.opened.pop(src)
            f.dirty = True
            assert self.drv.err("getattr", src, None) == errno.ENOENT
            return
        # This process closed the file last (that close failed) and holds no descriptor of it
        # in /proc (the other handle stands for another process): fs.rename takes the rename
        # as the publish of a closed temp file, and uploads it; a failed one undoes the rename.
        if self.settle(dst, content, before, result, expect_upload=True):
            self.opened[dst] = self.opened.pop(src)
            self.promise(dst, content)
            f.dirty = False
            assert self.drv.err("getattr", src, None) == errno.ENOENT

    @precondition(lambda self: self.opened)
    @rule(choice=picks)
    def unlink_open(self, choice: int) -> None:
        """rm of a file being written: never uploaded; its descriptors still work."""
        path = pick(sorted(self.opened), choice)
        f = self.opened.pop(path)
        assert self.drv.rm(path) == 0
        self.forget(path)
        self.orphans.extend(f.handles)

    @precondition(lambda self: self.orphans)
    @rule(choice=picks, chunk=st.binary(max_size=16))
    def use_orphan(self, choice: int, chunk: bytes) -> None:
        fh = pick(self.orphans, choice)
        assert self.drv.write(fh, chunk, 0) == len(chunk)
        assert self.drv.read(fh, len(chunk), 0)[: len(chunk)] == chunk

    @precondition(lambda self: self.orphans)
    @rule(choice=picks)
    def close_orphan(self, choice: int) -> None:
        fh = pick(self.orphans, choice)
        self.orphans.remove(fh)
        before = self.drv.remote.count("upload")
        assert self.drv.close(None, fh) == 0
        assert self.drv.remote.count("upload") == before

    # -- rules: directories ---------------------------------------------------------------------

    @rule(path=dir_paths)
    def mkdir(self, path: str) -> None:
        parent = parents(path + "/x")[-2] if path.count("/") > 1 else "/"
        exists, parent_exists = self.dir_exists(path), self.dir_exists(parent)
        result = self.drv.mkdir(path)
        if exists is not None and parent_exists is not None:
            expected = errno.EEXIST if exists else (0 if parent_exists else errno.ENOENT)
            assert result == expected, (path, errno.errorcode.get(result))
        else:
            assert result in (0, errno.EEXIST, errno.ENOENT), (path, errno.errorcode.get(result))
        if result == 0:
            self.local_dirs.add(path)

    @rule(path=dir_paths)
    def rmdir(self, path: str) -> None:
        exists = self.dir_exists(path)
        below = path + "/"
        busy = any(p.startswith(below) for p in list(self.model) + list(self.opened) + list(self.local_dirs))
        maybe_busy = any(p.startswith(below) for p in self.maybe)
        result = self.drv.rmdir(path)
        if exists is False:
            assert result == errno.ENOENT, (path, errno.errorcode.get(result))
        elif busy:
            assert result == errno.ENOTEMPTY, (path, errno.errorcode.get(result))
        elif maybe_busy:
            assert result in (0, errno.ENOENT, errno.ENOTEMPTY), (path, errno.errorcode.get(result))
        else:
            assert result == 0, (path, errno.errorcode.get(result))
        if result == 0:
            self.local_dirs.discard(path)

    # -- rules: the world -----------------------------------------------------------------------

    @precondition(lambda self: self.fault is None)
    @rule(after=st.booleans())
    def inject_upload_fault(self, after: bool) -> None:
        """The next upload fails before the server does anything (or, in LostAnswerMachine,
        possibly after it made the File)."""
        after = after and self.UPLOAD_FAULT_AFTER
        self.drv.remote.fail_next("upload", errno.EIO, after=after)
        self.fault = "after" if after else "before"

    @rule(seconds=st.sampled_from([1.0, 3600.0, 30 * 3600.0, 49 * 3600.0]))
    def advance_clock(self, seconds: float) -> None:
        self.drv.clock.advance(seconds)
        now = self.drv.clock()
        for path, at in list(self.expires.items()):
            if at <= now:  # the File expired: gone from the service and from the mount
                self.model.pop(path)
                self.expires.pop(path)
                self.uncached.discard(path)
        for path, versions in list(self.maybe.items()):
            for data, at in list(versions.items()):
                if at <= now:
                    del versions[data]
            if not versions:
                del self.maybe[path]

    @rule()
    def relist(self) -> None:
        self.drv.relist()

    # -- invariants -----------------------------------------------------------------------------

    @invariant()
    def listing_matches_the_model(self) -> None:
        for path, data in self.model.items():
            if path in self.opened:
                continue
            sizes = {len(data)} | {len(m) for m in self.maybe.get(path, ())}
            folder, name = path.rsplit("/", 1)
            entries = self.drv.ls(folder or "/")
            assert name in entries, f"{path} is not listed: {sorted(entries)}"
            assert entries[name]["st_size"] in sizes, path
            assert self.drv.stat(path)["st_size"] in sizes, path
        for path, f in self.opened.items():
            assert self.drv.stat(path)["st_size"] == len(f.content), path

    @invariant()
    def remote_holds_exactly_the_model(self) -> None:
        by_name: dict[str, list[bytes]] = {}
        for stored in self.drv.remote.live():
            by_name.setdefault(stored.record.display_name, []).append(stored.data)
        for path, data in self.model.items():
            found = by_name.get(display(path), [])
            if path in self.maybe:
                assert len(found) == 1 and (found[0] == data or found[0] in self.maybe[path]), path
                continue
            assert len(found) == 1, f"{len(found)} Files named {display(path)!r} (duplicates)"
            assert found[0] == data, f"{path}: the File's bytes are not the bytes closed (lost)"
        for name, found in by_name.items():
            path = "/" + name
            if path in self.model:
                continue
            assert path in self.maybe, f"{name!r} exists remotely but was never closed with success"
            assert len(found) == 1 and found[0] in self.maybe[path], name


class LostAnswerMachine(FsMachine):
    """FsMachine where an upload may also fail after the server made the File (issue 10: the
    uploader gave up, the answer was lost). Such a close may report EIO or 0; either way the
    promise holds: never two Files for one name, nothing closed with 0 lost."""

    UPLOAD_FAULT_AFTER = True


FAST = settings(max_examples=200, stateful_step_count=25, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
LONG = settings(FAST, max_examples=2000, stateful_step_count=40)

# A budget of examples, not of time: on a busy machine (4 test workers on 2 cores) a run takes
# several times its idle 12-25 s, and pytest's 120 s default would cut it mid-example.
SLOW_OK = pytest.mark.timeout(600)


@pytest.mark.heavy(45)
@SLOW_OK
def test_model():
    run_state_machine_as_test(FsMachine, settings=FAST)


@pytest.mark.long
@pytest.mark.timeout(3600)  # ~10x the default run's work
def test_model_long():
    run_state_machine_as_test(FsMachine, settings=LONG)


@pytest.mark.heavy(20)
@SLOW_OK
def test_model_with_lost_answers():
    run_state_machine_as_test(LostAnswerMachine,
                              settings=settings(FAST, phases=[Phase.explicit, Phase.reuse, Phase.generate]))
