"""The contract issues 9 and 10 ask of fs.py: exact errnos and exact request counts.

Most of it is built and these are plain tests now. What is not built yet stays a strict xfail
whose reason names the issue and its item: when it lands the test starts to pass, the strict
xfail turns that into a failure, and the marker comes off.
"""

from __future__ import annotations

import errno
import os
import signal
import stat

import pytest

from tests.fs.driver import Driver, ended_process


def xfail(reason: str):
    return pytest.mark.xfail(strict=True, reason=reason)


def mode(attrs: dict) -> int:
    return stat.S_IMODE(attrs["st_mode"])


def theirs(drv: Driver, name: str = "theirs.txt", data: bytes = b"0123456789"):
    """A File uploaded by another client: gemfs has none of its bytes."""
    record = drv.remote.add_file(name, data, mime_type="text/plain")
    drv.relist()
    return record


# -- issue 9 item 1: read your own writes ------------------------------------------------------------


def test_read_your_own_writes(drv: Driver):
    assert drv.write_file("/a.txt", b"hello") == 0
    assert mode(drv.stat("/a.txt")) == 0o644
    assert drv.read_file("/a.txt") == b"hello"
    drv.relist()
    assert mode(drv.ls("/")["a.txt"]) == 0o644
    assert drv.read_file("/a.txt") == b"hello"
    assert drv.remote.count("download") == 0  # uploaded bytes are never downloaded


# -- issue 9 item 2: own Files behave like files; any File opens for writing -------------------------


def test_open_wronly_without_trunc_then_close_uploads_nothing(drv: Driver):
    record = theirs(drv)
    fh = drv.open("/theirs.txt", os.O_WRONLY)
    assert drv.close("/theirs.txt", fh) == 0
    assert (drv.remote.count("upload"), drv.remote.count("delete")) == (0, 0)
    assert [s.record.id for s in drv.remote.named("theirs.txt")] == [record.id]


def test_write_needing_old_bytes_is_eperm_at_the_write(drv: Driver):
    theirs(drv)
    fh = drv.open("/theirs.txt", os.O_WRONLY)
    assert drv.err("write", "/theirs.txt", b"X", 0, fh) == errno.EPERM  # bytes 1..9 would be needed
    drv.close("/theirs.txt", fh)
    fh = drv.open("/theirs.txt", os.O_WRONLY | os.O_APPEND)
    assert drv.err("write", "/theirs.txt", b"X", 10, fh) == errno.EPERM  # bytes 0..9 would be needed
    drv.close("/theirs.txt", fh)
    assert (drv.remote.count("upload"), drv.remote.count("delete")) == (0, 0)
    assert drv.remote.data("theirs.txt") == b"0123456789"


def test_ftruncate_to_zero_then_write_replaces_a_file_without_its_bytes(drv: Driver):
    record = theirs(drv)
    fh = drv.open("/theirs.txt", os.O_WRONLY)
    assert drv.err("truncate", "/theirs.txt", 0, fh) == 0
    assert drv.write(fh, b"new", 0, "/theirs.txt") == 3
    assert drv.close("/theirs.txt", fh) == 0
    assert drv.remote.data("theirs.txt") == b"new"
    assert drv.remote.count("upload") == 1
    assert [r.target for r in drv.remote.ops("delete")] == [record.id]


def test_append_to_an_own_file(drv: Driver):
    assert drv.write_file("/log.txt", b"one\n") == 0
    old_id = drv.remote.named("log.txt")[0].record.id
    mark = drv.remote.mark()
    fh = drv.open("/log.txt", os.O_WRONLY | os.O_APPEND)
    assert drv.write(fh, b"two\n", 4, "/log.txt") == 4
    assert drv.close("/log.txt", fh) == 0
    assert [(r.op, r.target) for r in drv.remote.since(mark)] == [("upload", "log.txt"), ("delete", old_id)]
    assert drv.remote.data("log.txt") == b"one\ntwo\n"


def test_rename_of_an_own_file(drv: Driver):
    assert drv.write_file("/a.txt", b"bytes") == 0
    old_id = drv.remote.named("a.txt")[0].record.id
    mark = drv.remote.mark()
    assert drv.mv("/a.txt", "/b.txt") == 0
    assert [(r.op, r.target) for r in drv.remote.since(mark)] == [("upload", "b.txt"), ("delete", old_id)]
    assert drv.remote.named("a.txt") == []
    assert drv.remote.data("b.txt") == b"bytes"
    assert set(drv.ls("/")) == {"b.txt"}


def test_rename_of_an_own_file_over_another(drv: Driver):
    assert drv.write_file("/a.txt", b"aaa") == 0
    assert drv.write_file("/b.txt", b"bbbb") == 0
    ids = {s.record.display_name: s.record.id for s in drv.remote.live()}
    mark = drv.remote.mark()
    assert drv.mv("/a.txt", "/b.txt") == 0
    done = drv.remote.since(mark)
    assert [(r.op, r.target) for r in done[:1]] == [("upload", "b.txt")]
    assert sorted(r.target for r in done[1:] if r.op == "delete") == sorted(ids.values())
    assert len(done) == 3
    assert drv.remote.data("b.txt") == b"aaa"
    assert set(drv.ls("/")) == {"b.txt"}


# -- issue 10 item 3: fsync is a durability point ----------------------------------------------------------


def test_fsync_uploads_while_the_fd_stays_open_and_close_replaces_it(drv: Driver):
    fh = drv.open("/a.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    drv.write(fh, b"one")
    with drv.holding("/a.txt"):  # the process still holds the descriptor it fsyncs
        assert drv.fsync("/a.txt", fh) == 0
        assert drv.remote.data("a.txt") == b"one"  # durable: a File on the server
        drv.write(fh, b"two", 3)
    assert drv.close("/a.txt", fh) == 0
    assert drv.remote.data("a.txt") == b"onetwo"  # exactly one File, the last bytes
    assert drv.remote.count("upload") == 2
    assert drv.remote.count("delete") == 1  # the fsync's File, retired


# -- issue 10 item 5: a killed writer publishes nothing ------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL], ids=["TERM", "INT", "KILL"])
def test_writer_killed_by_a_signal_publishes_nothing(drv: Driver, sig: int):
    assert drv.write_file("/a.bin", b"the whole old file") == 0
    old_id = drv.remote.named("a.bin")[0].record.id
    fh = drv.open("/a.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    drv.write(fh, b"half")  # cp killed half-way
    with ended_process(sig) as pid:
        drv.pid = pid
        drv.close("/a.bin", fh)  # the kernel closes a dying task's descriptors; nobody reads the errno
    assert drv.remote.count("upload") == 1  # the first write_file only
    assert drv.remote.count("delete") == 0
    assert [s.record.id for s in drv.remote.named("a.bin")] == [old_id]
    assert drv.stat("/a.bin")["st_size"] == len(b"the whole old file")


# -- issue 10 item 6: renameat2 flags ---------------------------------------------------------------------------

RENAME_NOREPLACE, RENAME_EXCHANGE, RENAME_WHITEOUT = 1, 2, 4


@pytest.mark.parametrize("flag", [RENAME_EXCHANGE, RENAME_WHITEOUT], ids=["EXCHANGE", "WHITEOUT"])
def test_rename_exchange_and_whiteout_are_einval(drv: Driver, flag: int):
    assert drv.write_file("/a.txt", b"aaa") == 0
    assert drv.write_file("/.b.txt.Xy12Z9", b"held") == 0  # a file rename would upload
    mark = drv.remote.mark()
    assert drv.err("rename", "/.b.txt.Xy12Z9", "/a.txt", flag) == errno.EINVAL
    assert drv.remote.since(mark) == []
    assert drv.remote.data("a.txt") == b"aaa"
    assert drv.stat("/.b.txt.Xy12Z9")["st_size"] == 4


def test_rename_noreplace(drv: Driver):
    assert drv.write_file("/a.txt", b"aaa") == 0
    assert drv.write_file("/.b.txt.Xy12Z9", b"held") == 0
    mark = drv.remote.mark()
    assert drv.err("rename", "/.b.txt.Xy12Z9", "/a.txt", RENAME_NOREPLACE) in (errno.EEXIST, errno.EINVAL)
    assert drv.remote.since(mark) == []
    assert drv.remote.data("a.txt") == b"aaa"
    result = drv.err("rename", "/.b.txt.Xy12Z9", "/b.txt", RENAME_NOREPLACE)
    assert result in (0, errno.EINVAL)
    if result == 0:
        assert drv.remote.data("b.txt") == b"held"


# -- issue 10 item 1: a lost answer leaves no second File ----------------------------------------------------


@pytest.mark.parametrize("existing", [False, True], ids=["new", "overwrite"])
def test_lost_upload_answer_does_not_leave_two_files(drv: Driver, existing: bool):
    if existing:
        assert drv.write_file("/a.txt", b"old") == 0
    drv.remote.fail_next("upload", errno.EIO, after=True)
    result = drv.write_file("/a.txt", b"new bytes")
    assert result in (0, errno.EIO)
    if result:
        assert drv.write_file("/a.txt", b"new bytes") == 0  # cp again
    assert len(drv.remote.named("a.txt")) == 1
    assert drv.remote.data("a.txt") == b"new bytes"
    assert set(drv.ls("/")) == {"a.txt"}
    drv.relist()
    assert set(drv.ls("/")) == {"a.txt"}  # no orphan shown as a~<id>.txt
    assert drv.ls("/")["a.txt"]["st_size"] == 9


def test_failed_retire_does_not_hide_the_new_bytes(drv: Driver):
    """An overwrite whose delete of the old File fails still succeeds (the new bytes are whole):
    NAME shows the new bytes; the old File stays visible as NAME~id, so it can be removed."""
    assert drv.write_file("/a.txt", b"old") == 0
    drv.remote.fail_next("delete", errno.EIO)
    assert drv.write_file("/a.txt", b"newer") == 0
    for _ in range(2):  # as this mount shows it, and again after a full listing
        listing = drv.ls("/")
        assert listing["a.txt"]["st_size"] == 5
        (old,) = set(listing) - {"a.txt"}
        assert old.startswith("a~") and listing[old]["st_size"] == 3
        drv.relist()


# -- issue 9 item 7: a file unlinked while open ------------------------------------------------------------


def test_file_unlinked_while_open_works_through_its_handle(drv: Driver):
    fh = drv.open("/tmpfile", os.O_RDWR | os.O_CREAT | os.O_EXCL)  # tempfile.TemporaryFile
    assert drv.rm("/tmpfile") == 0
    assert drv.write(fh, b"abcdef", 0, None) == 6
    assert drv.read(fh, 100, 0, None) == b"abcdef"
    assert drv.err("truncate", None, 2, fh) == 0
    assert drv.call("getattr", None, fh)["st_size"] == 2
    assert drv.read(fh, 100, 0, None) == b"ab"
    assert drv.close(None, fh) == 0
    assert drv.remote.count("upload") == 0
    assert drv.remote.live() == []
    assert drv.ls("/") == {}


# -- issue 9 item 6: mtimes that tools set are kept ----------------------------------------------------------


T = 1_600_000_000_123_456_789  # 2020-09-13, in ns (mfusepy's use_ns)


def test_utimens_of_an_uploaded_file_is_kept(drv: Driver):
    assert drv.write_file("/a.txt", b"x") == 0
    assert drv.err("utimens", "/a.txt", (T, T)) == 0
    assert drv.stat("/a.txt")["st_mtime"] == T
    drv.relist()
    assert drv.ls("/")["a.txt"]["st_mtime"] == T


def test_rsync_mtime_survives_the_upload(drv: Driver):
    drv.command = "rsync"  # `.NAME.XXXXXX` is rsync's temp name only when rsync makes it
    temp = "/.b.txt.Qw12Er"
    assert drv.write_file(temp, b"synced") == 0
    assert drv.err("utimens", temp, (T, T)) == 0
    assert drv.mv(temp, "/b.txt") == 0
    assert drv.remote.count("upload") == 1
    assert drv.stat("/b.txt")["st_mtime"] == T  # rsync's quick check: size and mtime match
    drv.relist()
    assert drv.stat("/b.txt")["st_mtime"] == T


# -- issue 9 item 4: no trash in the mount ----------------------------------------------------------------------


@pytest.mark.parametrize("name", [".Trash", ".Trash-0", ".Trash-1000"])
def test_mkdir_of_a_trash_directory_at_the_root_is_refused(drv: Driver, name: str):
    assert drv.mkdir("/" + name) == errno.EPERM
    assert name not in drv.ls("/")
    assert drv.mkdir("/d") == 0
    assert drv.mkdir("/d/" + name) == 0  # only the root's trash is GIO's
    assert drv.remote.requests[1:] == []  # nothing but the mount's first listing


# -- issue 10 item 4 and issue 9 items 2 and 3: what is held, what stays local --------------------------------


@pytest.mark.parametrize("name", [".bashrc.backup", "movie.swf", ".config.sample"])
def test_ordinary_names_are_uploaded_at_close(drv: Driver, name: str):
    assert drv.write_file("/" + name, b"content") == 0
    assert [u.target for u in drv.remote.ops("upload")] == [name]
    assert drv.remote.data(name) == b"content"


def test_held_file_survives_a_crash(tmp_path):
    first = Driver(tmp_path / "mount", command="rsync")  # rsync's temp name: held at close
    remote = first.remote
    try:
        assert first.write_file("/.a.txt.Xy12Z9", b"closed with 0") == 0
        assert remote.count("upload") == 0  # held
    finally:
        first.crash()
    with Driver(tmp_path / "mount", remote=remote) as second:  # same staging root, same project
        second.unmount()
    assert remote.data(".a.txt.Xy12Z9") == b"closed with 0"
    assert remote.count("upload") == 1


@pytest.mark.parametrize("name", [".x.txt.swp", ".~lock.x.odt#"])
def test_lock_and_swap_files_stay_local(drv: Driver, name: str):
    path = "/" + name
    assert drv.write_file(path, b"lock") == 0
    assert drv.ls("/")[name]["st_size"] == 4
    fh = drv.open(path, os.O_RDWR)  # editors rewrite them in place
    assert drv.write(fh, b"LOCK!", 0, path) == 5
    assert drv.read(fh, 10, 0, path) == b"LOCK!"
    assert drv.close(path, fh) == 0
    drv.unmount()
    assert drv.remote.requests[1:] == []  # no upload, no delete: only the mount's first listing
