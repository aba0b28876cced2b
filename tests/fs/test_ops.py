"""The operations table of docs/SEMANTICS.md, row by row, on an in-process GemFS over a FakeRemote.

Only rows that need no kernel are here (kernel caches, permissions and the tools themselves stay
in tests/mount). Each test counts the requests the mount made, so "uploads once" and "no API call"
are checked as numbers. Where issue 9 changes a row (own Files become readable, renamable and
appendable), the tests here use a File uploaded by another client, whose row does not change.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import time

import pytest

from gemfs import sidecar
from gemfs.errors import GemfsError
from tests.fs.driver import Driver, ended_process
from tests.fs.fake import FILE_TTL

PDF = b"%PDF-1.7\n" + b"x" * 100


def names(entries: dict) -> set[str]:
    return set(entries)


def mode(attrs: dict) -> int:
    return stat.S_IMODE(attrs["st_mode"])


# -- listing and lookups ----------------------------------------------------------------------


def test_listing_and_stat_come_from_one_snapshot(drv: Driver):
    for i in range(3):
        drv.remote.add_file(f"dir/f{i}.txt", b"x" * (i + 1))
    drv.relist()
    mark = drv.remote.mark()
    listed = drv.ls("/dir")
    assert {n: a["st_size"] for n, a in listed.items()} == {"f0.txt": 1, "f1.txt": 2, "f2.txt": 3}
    assert all(stat.S_ISREG(a["st_mode"]) for a in listed.values())
    assert stat.S_ISDIR(drv.stat("/dir")["st_mode"])
    for i in range(3):
        assert drv.stat(f"/dir/f{i}.txt")["st_size"] == i + 1
    assert drv.remote.since(mark) == []  # not one API call per file, nor one per listing


def test_readdir_plus_pages_through_one_listing_by_offset(drv: Driver):
    # mfusepy asks for the entries after the last offset the kernel took, once per request.
    for i in range(4):
        drv.remote.add_file(f"f{i}.txt", b"x" * (i + 1))
    drv.relist()
    fh = drv.call("opendir", "/")
    try:
        first = list(drv.call("readdir_plus", "/", 0, fh))
        assert [offset for _, _, offset in first] == [1, 2, 3, 4, 5, 6]
        assert first[:2] == [(".", None, 1), ("..", None, 2)]
        assert {name: attrs["st_size"] for name, attrs, _ in first[2:]} == {
            "f0.txt": 1, "f1.txt": 2, "f2.txt": 3, "f3.txt": 4}
        drv.remote.add_file("f4.txt", b"new")
        drv.relist()
        # A request that continues the listing pages through the same list: f4.txt, which came
        # after it started, is not slipped in to push an entry out or in twice.
        assert list(drv.call("readdir_plus", "/", 4, fh)) == first[4:]
        # A listing from the start (rewinddir) sees it.
        again = list(drv.call("readdir_plus", "/", 0, fh))
        assert [offset for _, _, offset in again] == [1, 2, 3, 4, 5, 6, 7]
        assert "f4.txt" in {name for name, _, _ in again}
    finally:
        drv.call("releasedir", "/", fh)


def test_probes_for_missing_names_are_enoent_without_a_call(drv: Driver):
    mark = drv.remote.mark()
    for probe in ("/.Trash-1000", "/.hidden", "/autorun.inf", "/nodir/x"):
        assert drv.err("getattr", probe, None) == errno.ENOENT
    assert drv.err("opendir", "/nodir") == errno.ENOENT
    assert drv.remote.since(mark) == []


def test_own_upload_and_delete_show_at_once(drv: Driver):
    assert drv.write_file("/a.txt", b"hello") == 0
    assert drv.ls("/")["a.txt"]["st_size"] == 5  # no relist: the overlay shows it
    assert drv.rm("/a.txt") == 0
    assert "a.txt" not in drv.ls("/")
    assert drv.err("getattr", "/a.txt", None) == errno.ENOENT


def test_expired_file_disappears_at_its_expiration_time(drv: Driver):
    assert drv.write_file("/a.txt", b"hello") == 0
    drv.clock.advance(FILE_TTL - 1)
    assert "a.txt" in drv.ls("/")
    drv.clock.advance(1)
    assert "a.txt" not in drv.ls("/")  # before any new listing
    assert drv.err("getattr", "/a.txt", None) == errno.ENOENT


# -- create, write, close -----------------------------------------------------------------------


def test_close_uploads_once_with_display_name_and_mime(drv: Driver):
    assert drv.mkdir("/docs") == 0
    assert drv.write_file("/docs/report.pdf", PDF) == 0
    assert drv.write_file("/notes.txt", b"plain words\n") == 0
    uploads = drv.remote.ops("upload")
    assert [(u.target, u.size) for u in uploads] == [("docs/report.pdf", len(PDF)), ("notes.txt", 12)]
    assert {s.record.display_name: s.record.mime_type for s in drv.remote.live()} == {
        "docs/report.pdf": "application/pdf", "notes.txt": "text/plain"}
    assert drv.remote.data("docs/report.pdf") == PDF
    assert drv.remote.count("delete") == 0


def test_create_in_a_missing_directory_is_enoent(drv: Driver):
    assert drv.write_file("/nodir/a.txt", b"x") == errno.ENOENT
    assert drv.remote.count("upload") == 0


def test_staged_file_takes_any_offset_truncate_and_seek(drv: Driver):
    fh = drv.open("/s.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    drv.write(fh, b"tail", 10)
    drv.write(fh, b"head", 0)
    assert drv.stat("/s.bin")["st_size"] == 14
    assert drv.err("truncate", "/s.bin", 12, fh) == 0
    assert drv.read(fh) == b"head" + b"\0" * 6 + b"ta"  # a file being written reads back
    assert mode(drv.stat("/s.bin")) == 0o644
    assert drv.close("/s.bin", fh) == 0
    assert drv.remote.data("s.bin") == b"head" + b"\0" * 6 + b"ta"
    assert drv.remote.count("upload") == 1


def test_empty_file_is_uploaded(drv: Driver):
    assert drv.write_file("/empty", b"") == 0
    assert drv.remote.data("empty") == b""
    assert drv.stat("/empty")["st_size"] == 0


def test_write_past_file_size_limit_is_efbig_at_write(make_driver):
    drv = make_driver(max_file_size=1000)
    fh = drv.open("/big", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    drv.write(fh, b"x" * 1000)
    assert drv.err("write", "/big", b"y", 1000, fh) == errno.EFBIG
    assert drv.close("/big", fh) == errno.EFBIG  # close reports it; nothing goes up
    assert drv.remote.count("upload") == 0
    assert drv.err("getattr", "/big", None) == errno.ENOENT


def test_write_past_the_project_quota_is_edquot_at_write(make_driver):
    drv = make_driver(quota=10_000)
    drv.remote.add_file("other.bin", b"o" * 8_000)
    drv.relist()
    assert drv.write_file("/a.bin", b"a" * 1_500) == 0
    assert drv.write_file("/b.bin", b"b" * 501) == errno.EDQUOT  # 8000 + 1500 + 501 > 10000
    assert [u.target for u in drv.remote.ops("upload")] == ["a.bin"]
    assert drv.staging.staged_bytes == 0  # the refused file's bytes are given back


def test_staged_bytes_count_against_the_quota(make_driver):
    drv = make_driver(quota=10_000)
    first = drv.open("/one", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    drv.write(first, b"1" * 6_000)
    second = drv.open("/two", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    assert drv.err("write", "/two", b"2" * 4_001, 0, second) == errno.EDQUOT
    assert drv.close("/two", second) == errno.EDQUOT
    assert drv.close("/one", first) == 0
    assert drv.remote.data("one") == b"1" * 6_000
    assert drv.remote.named("two") == []


def test_upload_error_reaches_close(drv: Driver):
    drv.remote.fail_next("upload", errno.EIO)
    assert drv.write_file("/a.txt", b"hello") == errno.EIO
    assert drv.remote.live() == []
    assert "a.txt" not in drv.ls("/")
    assert drv.write_file("/a.txt", b"hello") == 0  # cp again: one File
    assert drv.remote.data("a.txt") == b"hello"


def test_a_rename_after_a_failed_close_publishes_the_file_once(drv: Driver):
    """Found by test_model: a close that failed, another descriptor still open (another
    process's), then the closer renames the file. The renaming process holds it no longer, so
    the rename is the publish of a closed temp file: one upload under the new name, and the
    last close has nothing left to send."""
    first = drv.open("/d.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    second = drv.open("/d.txt", os.O_WRONLY)
    drv.write(first, b"draft")
    drv.remote.fail_next("upload", errno.EIO)
    assert drv.close("/d.txt", first) == errno.EIO
    assert drv.remote.live() == []
    assert drv.mv("/d.txt", "/a") == 0
    assert drv.remote.count("upload") == 2
    assert [s.data for s in drv.remote.named("a")] == [b"draft"]
    assert drv.close("/a", second) == 0
    assert drv.remote.count("upload") == 2
    assert [s.record.display_name for s in drv.remote.live()] == ["a"]


@pytest.mark.parametrize("err", [errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EINVAL])
def test_upload_errno_is_the_close_errno(drv: Driver, err: int):
    drv.remote.fail_next("upload", err)
    assert drv.write_file("/a.txt", b"hello") == err


def test_close_again_without_new_writes_does_not_upload_again(drv: Driver):
    fh = drv.open("/a.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    drv.write(fh, b"data")
    assert drv.flush("/a.txt", fh) == 0  # a dup'd descriptor closed first
    assert drv.flush("/a.txt", fh) == 0
    assert drv.close("/a.txt", fh) == 0
    assert drv.remote.count("upload") == 1
    assert drv.remote.data("a.txt") == b"data"


def test_flush_while_the_caller_holds_another_descriptor_does_not_upload(drv: Driver):
    """A shell redirect opens, dup2()s and closes the first descriptor before writing: that
    FLUSH must not upload an empty file; the last close uploads the bytes."""
    fh = drv.open("/loop.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    with drv.holding("/loop.txt"):
        assert drv.flush("/loop.txt", fh) == 0
        assert drv.remote.count("upload") == 0
        drv.write(fh, b"line\n")
    assert drv.close("/loop.txt", fh) == 0
    assert drv.remote.count("upload") == 1
    assert drv.remote.data("loop.txt") == b"line\n"


def test_flush_by_a_child_while_its_parent_holds_the_file_does_not_upload(drv: Driver):
    """`for ...; do date; done > f`: each child inherits the shell's descriptor and closes its
    copy; only the shell's close is the last writer's (procinfo.holds_for_writing walks the
    closing process's ancestors)."""
    fh = drv.open("/loop.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    drv.write(fh, b"line\n")
    child = subprocess.Popen(["sleep", "600"])  # its parent, this process, is the shell
    try:
        with drv.holding("/loop.txt"):
            drv.pid = child.pid
            assert drv.flush("/loop.txt", fh) == 0
            assert drv.remote.count("upload") == 0
            drv.pid = os.getpid()
    finally:
        child.kill()
        child.wait()
    assert drv.close("/loop.txt", fh) == 0
    assert drv.remote.count("upload") == 1
    assert drv.remote.data("loop.txt") == b"line\n"


def test_a_reader_holding_the_file_does_not_delay_the_upload(drv: Driver):
    """Only writers count as "another descriptor": a reader's close never uploads, so waiting
    for it would upload nothing at all (procinfo.holds_for_writing)."""
    fh = drv.open("/seen.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    drv.write(fh, b"data")
    with drv.holding("/seen.txt", write=False):  # a thumbnailer, `tail -f`
        assert drv.close("/seen.txt", fh) == 0
        assert drv.remote.data("seen.txt") == b"data"
    assert drv.remote.count("upload") == 1


def test_close_by_a_process_that_exits_normally_uploads(drv: Driver):
    """A process that exits without closing: the kernel closes its descriptors on the way out."""
    fh = drv.open("/a.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    drv.write(fh, b"all of it")
    with ended_process(None) as pid:
        drv.pid = pid
        assert drv.close("/a.txt", fh) == 0
    assert drv.remote.data("a.txt") == b"all of it"


def test_fsync_uploads_new_bytes_once(drv: Driver):
    fh = drv.open("/a.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    drv.write(fh, b"abc")
    assert drv.fsync("/a.txt", fh) == 0
    assert drv.remote.data("a.txt") == b"abc"
    assert drv.close("/a.txt", fh) == 0  # nothing new since the fsync
    assert drv.remote.count("upload") == 1


# -- overwrite -------------------------------------------------------------------------------------


def test_overwrite_uploads_the_new_file_then_deletes_the_old(drv: Driver):
    assert drv.write_file("/a.txt", b"old") == 0
    old_id = drv.remote.named("a.txt")[0].record.id
    mark = drv.remote.mark()
    fh = drv.open("/a.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    drv.write(fh, b"newer")
    attrs = drv.stat("/a.txt")  # while written, the path shows the new file
    assert (attrs["st_size"], mode(attrs)) == (5, 0o644)
    assert drv.close("/a.txt", fh) == 0
    assert [(r.op, r.target) for r in drv.remote.since(mark)] == [("upload", "a.txt"), ("delete", old_id)]
    assert drv.remote.data("a.txt") == b"newer"
    assert names(drv.ls("/")) == {"a.txt"}


def test_overwrite_whose_upload_fails_shows_the_old_file_again(drv: Driver):
    assert drv.write_file("/a.txt", b"old") == 0
    drv.remote.fail_next("upload", errno.EIO)
    assert drv.write_file("/a.txt", b"newer") == errno.EIO
    assert drv.remote.data("a.txt") == b"old"
    assert drv.remote.count("delete") == 0
    assert drv.ls("/")["a.txt"]["st_size"] == 3


# -- temp names held until rename ------------------------------------------------------------------


RSYNC_TEMP = "/.a.txt.Xy12Z9"  # rsync's `.NAME.XXXXXX`: held only when rsync itself makes it


@pytest.mark.parametrize("temp, command", [(".a.txt.Xy12Z9", "rsync"), (".goutputstream-QW3RT1", None),
                                           ("tmp.Ab3De6Gh9K", None)])
def test_temp_name_is_held_and_uploaded_once_by_the_rename(drv: Driver, temp: str, command: str | None):
    drv.command = command
    assert drv.write_file("/" + temp, b"content") == 0
    assert drv.remote.count("upload") == 0
    assert drv.ls("/")[temp]["st_size"] == 7  # visible while held
    assert drv.mv("/" + temp, "/a.txt") == 0
    assert [u.target for u in drv.remote.ops("upload")] == ["a.txt"]
    assert drv.remote.data("a.txt") == b"content"
    assert names(drv.ls("/")) == {"a.txt"}


def test_rsync_shaped_name_made_by_another_command_is_uploaded_at_close(drv: Driver):
    drv.command = "python3"
    assert drv.write_file(RSYNC_TEMP, b"content") == 0
    assert [u.target for u in drv.remote.ops("upload")] == [RSYNC_TEMP[1:]]
    mark = drv.remote.mark()
    assert drv.mv(RSYNC_TEMP, "/a.txt") == 0  # any closed file can be renamed: one upload, one delete
    assert [r.op for r in drv.remote.since(mark)] == ["upload", "delete"]
    assert drv.remote.data("a.txt") == b"content"
    assert names(drv.ls("/")) == {"a.txt"}


def test_temp_renamed_over_a_file_replaces_it(drv: Driver):
    assert drv.write_file("/a.txt", b"old") == 0
    old_id = drv.remote.named("a.txt")[0].record.id
    drv.command = "rsync"
    assert drv.write_file(RSYNC_TEMP, b"new") == 0
    mark = drv.remote.mark()
    assert drv.mv(RSYNC_TEMP, "/a.txt") == 0
    assert [(r.op, r.target) for r in drv.remote.since(mark)] == [("upload", "a.txt"), ("delete", old_id)]
    assert drv.remote.data("a.txt") == b"new"


def test_rename_of_held_temp_returns_the_upload_error(drv: Driver):
    drv.command = "rsync"
    assert drv.write_file("/.a.txt.Xy12Z9", b"content") == 0
    drv.remote.fail_next("upload", errno.EDQUOT)
    assert drv.mv("/.a.txt.Xy12Z9", "/a.txt") == errno.EDQUOT
    assert drv.remote.live() == []


def test_unlinked_temp_is_never_uploaded(drv: Driver):
    drv.command = "rsync"
    assert drv.write_file("/.a.txt.Xy12Z9", b"content") == 0
    assert drv.rm("/.a.txt.Xy12Z9") == 0
    drv.unmount()
    assert drv.remote.count("upload") == 0
    assert drv.remote.count("delete") == 0
    assert drv.ls("/") == {}


def test_temp_never_renamed_is_uploaded_under_its_name_at_unmount(drv: Driver):
    drv.command = "rsync"
    assert drv.write_file("/.a.txt.Xy12Z9", b"content") == 0
    assert drv.remote.count("upload") == 0
    drv.unmount()
    assert drv.remote.data(".a.txt.Xy12Z9") == b"content"
    assert drv.write_file("/late", b"x") == errno.EROFS  # unmount in progress


# -- unlink and rename of files being written --------------------------------------------------------


def test_unlink_of_a_pending_file(drv: Driver):
    fh = drv.open("/a.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    drv.write(fh, b"abc")
    assert drv.rm("/a.txt") == 0
    assert drv.err("getattr", "/a.txt", None) == errno.ENOENT
    assert drv.close(None, fh) == 0  # libfuse (hard_remove) hands an unlinked file no path
    assert drv.remote.count("upload") == 0
    assert drv.ls("/") == {}


def test_unlink_of_a_pending_overwrite_removes_the_old_file_too(drv: Driver):
    assert drv.write_file("/a.txt", b"old") == 0
    fh = drv.open("/a.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    drv.write(fh, b"new")
    assert drv.rm("/a.txt") == 0  # rm removes what is at the path
    assert drv.close(None, fh) == 0
    assert drv.remote.live() == []
    assert drv.remote.count("upload") == 1


def test_rename_of_a_file_being_written_uploads_under_the_new_name(drv: Driver):
    fh = drv.open("/draft", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    drv.write(fh, b"text")
    assert drv.mv("/draft", "/final.txt") == 0
    assert drv.remote.count("upload") == 0
    assert drv.stat("/final.txt")["st_size"] == 4
    assert drv.err("getattr", "/draft", None) == errno.ENOENT
    assert drv.close("/final.txt", fh) == 0
    assert [u.target for u in drv.remote.ops("upload")] == ["final.txt"]
    assert drv.remote.data("final.txt") == b"text"


# -- Files uploaded elsewhere ------------------------------------------------------------------------


def test_uploaded_file_is_0200_and_reading_it_is_eacces(drv: Driver):
    drv.remote.add_file("theirs.bin", b"secret")
    drv.relist()
    assert mode(drv.stat("/theirs.bin")) == 0o200
    assert drv.err("open", "/theirs.bin", os.O_RDONLY) == errno.EACCES
    assert drv.remote.count("download") == 0


def test_generated_file_is_downloaded_at_open(drv: Driver):
    drv.remote.add_file("video.mp4", b"\0\0\0 ftypmp42" + b"v" * 50, mime_type="video/mp4", generated=True)
    drv.relist()
    assert mode(drv.stat("/video.mp4")) == 0o444
    assert drv.read_file("/video.mp4") == b"\0\0\0 ftypmp42" + b"v" * 50
    assert drv.remote.count("download") == 1
    assert drv.staging.staged_bytes == 0  # a download is not quota


def test_write_into_an_uploaded_file_without_its_bytes_is_eperm(drv: Driver):
    """Today the open says EPERM; issue 9 moves it to the first write that needs the old bytes.
    Either way the process's first error is EPERM and nothing is uploaded or deleted."""
    drv.remote.add_file("theirs.txt", b"0123456789", mime_type="text/plain")
    drv.relist()
    assert drv.write_file("/theirs.txt", b"X", flags=os.O_WRONLY) == errno.EPERM
    assert drv.write_file("/theirs.txt", b"X", flags=os.O_WRONLY | os.O_APPEND) == errno.EPERM
    assert drv.err("truncate", "/theirs.txt", 5, None) == errno.EPERM
    assert (drv.remote.count("upload"), drv.remote.count("delete")) == (0, 0)
    assert drv.remote.data("theirs.txt") == b"0123456789"


def test_mv_of_a_file_uploaded_elsewhere_is_eperm(drv: Driver):
    drv.remote.add_file("theirs.txt", b"abc")
    drv.relist()
    assert drv.mv("/theirs.txt", "/mine.txt") == errno.EPERM  # never EXDEV: mv would read it
    assert (drv.remote.count("upload"), drv.remote.count("delete")) == (0, 0)
    assert names(drv.ls("/")) == {"theirs.txt"}


def test_overwrite_with_o_trunc_of_a_file_uploaded_elsewhere(drv: Driver):
    theirs = drv.remote.add_file("theirs.txt", b"abc")
    drv.relist()
    assert drv.write_file("/theirs.txt", b"mine") == 0
    assert drv.remote.data("theirs.txt") == b"mine"
    assert [r.target for r in drv.remote.ops("delete")] == [theirs.id]


# -- rm ----------------------------------------------------------------------------------------------


def test_rm_deletes_the_file(drv: Driver):
    assert drv.write_file("/a.txt", b"x") == 0
    file_id = drv.remote.named("a.txt")[0].record.id
    assert drv.rm("/a.txt") == 0
    assert [r.target for r in drv.remote.ops("delete")] == [file_id]
    assert drv.remote.live() == []
    assert drv.rm("/a.txt") == errno.ENOENT


def test_rm_of_a_file_already_gone_counts_as_deleted(drv: Driver):
    record = drv.remote.add_file("gone.txt", b"x")
    drv.relist()
    drv.remote.files.pop(record.id)  # another client deleted it; the snapshot still has it
    assert drv.rm("/gone.txt") == 0
    assert "gone.txt" not in drv.ls("/")


def test_rm_of_a_directory_is_eisdir(drv: Driver):
    assert drv.mkdir("/d") == 0
    assert drv.rm("/d") == errno.EISDIR


# -- sidecars ----------------------------------------------------------------------------------------


def test_sidecar_is_the_file_resource_as_json(make_driver):
    drv = make_driver(show_meta=True)
    assert drv.write_file("/a.txt", b"hello") == 0
    listed = drv.ls("/")
    assert names(listed) - {".hidden"} == {"a.txt", "a.txt.meta.json"}  # issue 9 item 5 adds .hidden
    record = drv.remote.named("a.txt")[0].record
    body = drv.read_file("/a.txt.meta.json")
    assert listed["a.txt.meta.json"]["st_size"] == len(body)
    assert mode(listed["a.txt.meta.json"]) == 0o444
    assert body.endswith(b"}\n")
    assert json.loads(body) == record.api
    assert list(json.loads(body))[:4] == ["name", "displayName", "mimeType", "sizeBytes"]
    assert json.loads(body)["sizeBytes"] == "5"
    assert body == sidecar.render(record)


def test_sidecar_is_hidden_from_listing_but_reachable(drv: Driver):
    assert drv.write_file("/a.txt", b"hello") == 0
    assert names(drv.ls("/")) == {"a.txt"}
    assert json.loads(drv.read_file("/a.txt.meta.json"))["displayName"] == "a.txt"


def test_sidecars_are_read_only(drv: Driver):
    assert drv.write_file("/a.txt", b"hello") == 0
    assert drv.rm("/a.txt.meta.json") == errno.EPERM
    assert drv.write_file("/a.txt.meta.json", b"{}") == errno.EACCES
    assert drv.err("open", "/a.txt.meta.json", os.O_WRONLY) == errno.EACCES
    assert drv.err("truncate", "/a.txt.meta.json", 0, None) == errno.EACCES
    assert drv.mv("/a.txt.meta.json", "/b.json") == errno.EPERM
    assert drv.remote.count("upload") == 1


# -- directories -------------------------------------------------------------------------------------


def test_mkdir_then_files_inside_are_uploaded_with_that_path(drv: Driver):
    assert drv.mkdir("/d") == 0
    assert drv.mkdir("/d") == errno.EEXIST
    assert drv.mkdir("/d/e") == 0
    assert drv.mkdir("/x/y") == errno.ENOENT
    assert stat.S_ISDIR(drv.stat("/d/e")["st_mode"])
    assert drv.write_file("/d/e/f.txt", b"f") == 0
    assert [u.target for u in drv.remote.ops("upload")] == ["d/e/f.txt"]


def test_rmdir_only_of_an_empty_directory(drv: Driver):
    assert drv.mkdir("/d") == 0
    assert drv.write_file("/d/f.txt", b"f") == 0
    assert drv.rmdir("/d") == errno.ENOTEMPTY
    assert drv.rm("/d/f.txt") == 0
    assert drv.rmdir("/d") == 0
    assert drv.rmdir("/d") == errno.ENOENT
    assert "d" not in drv.ls("/")


def test_rmdir_of_a_directory_with_a_file_being_written_is_enotempty(drv: Driver):
    assert drv.mkdir("/d") == 0
    fh = drv.open("/d/f", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    assert drv.rmdir("/d") == errno.ENOTEMPTY
    assert drv.close("/d/f", fh) == 0


def test_directory_emptied_by_this_mounts_deletes_stays_until_rmdir(drv: Driver):
    """SEMANTICS.md, Names: a folder left empty by this mount's own deletes stays as a local
    folder, so `rm -r` (unlink each file, then rmdir) works on any folder the mount shows."""
    drv.remote.add_file("r/x.txt", b"x")
    drv.relist()
    assert drv.mkdir("/r") == errno.EEXIST
    assert drv.rmdir("/r") == errno.ENOTEMPTY
    assert drv.rm("/r/x.txt") == 0
    assert "r" in drv.ls("/")
    drv.relist()  # the listing has no folder r any more; this mount still shows it
    assert drv.ls("/r") == {}
    assert drv.rmdir("/r") == 0
    assert "r" not in drv.ls("/")
    assert drv.remote.count("delete") == 1


def test_mv_of_an_empty_local_directory(drv: Driver):
    assert drv.mkdir("/d") == 0
    assert drv.mv("/d", "/e") == 0
    assert names(drv.ls("/")) == {"e"}
    assert drv.remote.requests[1:] == []  # the first request is the mount's listing


# -- metadata operations -------------------------------------------------------------------------------


def test_chmod_chown_utimens_are_accepted(drv: Driver):
    assert drv.write_file("/a.txt", b"x") == 0
    assert drv.err("chmod", "/a.txt", 0o600) == 0
    assert drv.err("chown", "/a.txt", 0, 0) == 0
    assert drv.err("utimens", "/a.txt", (10**18, 10**18)) == 0
    assert drv.err("chmod", "/missing", 0o600) == errno.ENOENT
    assert drv.remote.count("upload") == 1


def test_links_and_device_nodes_are_eperm(drv: Driver):
    assert drv.write_file("/a.txt", b"x") == 0
    assert drv.err("symlink", "/l", "a.txt") == errno.EPERM
    assert drv.err("link", "/l", "/a.txt") == errno.EPERM
    assert drv.err("mknod", "/fifo", stat.S_IFIFO | 0o644, 0) == errno.EPERM


def test_mtime_of_another_clients_file_is_update_time(drv: Driver):
    record = drv.remote.add_file("a.txt", b"x")
    drv.relist()
    assert drv.stat("/a.txt")["st_mtime"] == int(record.update_time * 1e9)
    assert drv.stat("/a.txt")["st_ctime"] == int(record.update_time * 1e9)


def test_mtime_of_an_own_file_is_when_this_mount_wrote_it(drv: Driver):
    """SEMANTICS.md, mtime: the time this mount wrote the file, kept per File id, so it does
    not jump to the (fake, here far-off) updateTime when the listing comes in."""
    before = time.time_ns()
    assert drv.write_file("/a.txt", b"x") == 0
    after = time.time_ns()
    record = drv.remote.named("a.txt")[0].record
    mtime = drv.stat("/a.txt")["st_mtime"]
    assert before <= mtime <= after
    assert drv.stat("/a.txt")["st_ctime"] == int(record.update_time * 1e9)
    drv.relist()
    assert drv.stat("/a.txt")["st_mtime"] == mtime


def test_names_must_be_utf8(drv: Driver):
    assert drv.write_file("/bad\udcff.txt", b"x") == errno.EINVAL  # mfusepy's surrogateescape
    assert drv.mkdir("/bad\udcff") == errno.EINVAL
    assert drv.remote.count("upload") == 0


def test_statfs_counts_quota_listed_and_staged_bytes(make_driver):
    quota = 1 << 30
    drv = make_driver(quota=quota)
    drv.remote.add_file("r.bin", b"r" * 40_960)
    drv.relist()
    fh = drv.open("/s.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    drv.write(fh, b"s" * 8_192)
    st = drv.call("statfs", "/")
    assert (st["f_bsize"], st["f_frsize"], st["f_namemax"]) == (4096, 4096, 255)
    assert st["f_blocks"] == quota // 4096
    assert st["f_bfree"] == st["f_bavail"] == (quota - 40_960 - 8_192) // 4096
    assert st["f_files"] == 1 + 2**20  # df -i: the one listed File used, 2^20 free
    assert st["f_ffree"] == st["f_favail"] == 2**20
    assert drv.close("/s.bin", fh) == 0
    assert drv.call("statfs", "/")["f_bfree"] == (quota - 40_960 - 8_192) // 4096  # now listed


# -- faults both ways -----------------------------------------------------------------------------------


def test_delete_fault_before_fails_rm_and_keeps_the_file(drv: Driver):
    assert drv.write_file("/a.txt", b"x") == 0
    drv.remote.fail_next("delete", errno.EIO)
    assert drv.rm("/a.txt") == errno.EIO
    assert drv.remote.data("a.txt") == b"x"
    assert "a.txt" in drv.ls("/")
    assert drv.rm("/a.txt") == 0
    assert drv.remote.live() == []


def test_delete_fault_after_fails_rm_and_a_second_rm_succeeds(drv: Driver):
    assert drv.write_file("/a.txt", b"x") == 0
    drv.remote.fail_next("delete", errno.EIO, after=True)
    assert drv.rm("/a.txt") == errno.EIO
    assert drv.remote.live() == []  # the server deleted it
    assert drv.rm("/a.txt") == 0  # already gone counts as deleted
    assert drv.ls("/") == {}
    drv.relist()
    assert drv.ls("/") == {}


def test_an_overwrite_whose_upload_answer_is_lost_leaves_one_file(drv: Driver):
    """Found by test_model (LostAnswerMachine): `>>` on a closed file, and the upload of the
    whole gives up after the server made the File. The File it replaces was not retired (the
    upload failed), so the two stood under one name. The close looks once: the File is there
    with its bytes, so the upload happened, the close returns 0 and the old File is retired."""
    assert drv.mkdir("/e") == 0
    assert drv.write_file("/e/a", b"\xf3\xa2~\x8e") == 0
    (old,) = drv.remote.named("e/a")
    drv.remote.fail_next("upload", errno.EIO, after=True)
    mark = drv.remote.mark()
    fh = drv.open("/e/a", os.O_WRONLY | os.O_APPEND)
    assert drv.write(fh, b"<,O&", 4, "/e/a") == 4
    assert drv.close("/e/a", fh) == 0
    assert [(r.op, r.target, r.outcome) for r in drv.remote.since(mark)] == [
        ("upload", "e/a", "failed-after"), ("list", "", "ok"), ("delete", old.record.id, "ok")]
    assert [s.data for s in drv.remote.named("e/a")] == [b"\xf3\xa2~\x8e<,O&"]
    assert drv.read_file("/e/a") == b"\xf3\xa2~\x8e<,O&"  # its bytes are this mount's own
    for _ in range(2):  # as this mount shows it, and after a full listing
        assert {n: a["st_size"] for n, a in drv.ls("/e").items()} == {"a": 8}
        drv.relist()


def test_a_lost_answer_over_a_file_of_the_same_bytes_keeps_the_new_file(drv: Driver):
    """`cp` of the same bytes over a File: the File it replaces has the same name, size and
    SHA-256 as the one the lost answer was about, but it is never taken for it."""
    assert drv.write_file("/a.txt", b"same") == 0
    (old,) = drv.remote.named("a.txt")
    drv.remote.fail_next("upload", errno.EIO, after=True)
    assert drv.write_file("/a.txt", b"same") == 0
    (new,) = drv.remote.named("a.txt")
    assert new.record.id != old.record.id and new.data == b"same"
    assert drv.remote.count("upload") == 2


def test_a_lost_upload_answer_while_listing_fails_too_is_settled_by_the_next_upload(drv: Driver):
    """When the listing that looks for the File fails too, the close reports EIO and the old
    bytes show; the File the server made is remembered and deleted by the next upload of the
    name, so one File is left, with the bytes of the close that succeeded."""
    assert drv.write_file("/a.txt", b"old") == 0
    drv.remote.fail_next("upload", errno.EIO, after=True)
    drv.remote.fail_next("list", errno.EIO)
    assert drv.write_file("/a.txt", b"lost") == errno.EIO
    assert sorted(s.data for s in drv.remote.named("a.txt")) == [b"lost", b"old"]
    assert drv.ls("/")["a.txt"]["st_size"] == 3
    drv.relist()  # the File made despite the failure shows as NAME~id, the name keeps the old
    orphan = next(s.record.id for s in drv.remote.named("a.txt") if s.data == b"lost")
    assert {n: a["st_size"] for n, a in drv.ls("/").items()} == {"a.txt": 3, f"a~{orphan}.txt": 4}
    assert drv.write_file("/a.txt", b"again!") == 0
    assert [s.data for s in drv.remote.named("a.txt")] == [b"again!"]
    drv.relist()
    assert {n: a["st_size"] for n, a in drv.ls("/").items()} == {"a.txt": 6}


def test_an_upload_that_failed_before_the_server_did_anything_changes_nothing(drv: Driver):
    """The same close, when the server made nothing: EIO, the old File stays, nothing deleted."""
    assert drv.write_file("/a.txt", b"old") == 0
    drv.remote.fail_next("upload", errno.EIO)
    mark = drv.remote.mark()
    assert drv.write_file("/a.txt", b"newer") == errno.EIO
    assert [r.op for r in drv.remote.since(mark)] == ["upload", "list"]
    assert [s.data for s in drv.remote.named("a.txt")] == [b"old"]


def test_listing_fault_keeps_the_previous_snapshot(drv: Driver):
    assert drv.write_file("/a.txt", b"x") == 0
    drv.remote.fail_next("list", errno.EIO)
    with pytest.raises(GemfsError) as raised:
        drv.relist()
    assert raised.value.errno == errno.EIO
    assert names(drv.ls("/")) == {"a.txt"}


def test_server_side_quota_refusal_reaches_close(make_driver):
    """The mount's own count said there was room, but another client filled the project
    since the last listing: the server's refusal is close's errno, and nothing is left behind."""
    drv = make_driver(quota=10_000)
    drv.remote.quota = 10_000
    drv.remote.add_file("elsewhere.bin", b"e" * 9_000)  # not listed yet
    assert drv.write_file("/a.bin", b"a" * 2_000) == errno.EDQUOT
    assert [(r.target, r.outcome) for r in drv.remote.ops("upload")] == [("a.bin", "refused")]
    assert drv.remote.named("a.bin") == []
    assert "a.bin" not in drv.ls("/")


def test_a_rename_before_the_kernel_releases_the_closed_temp_file_uploads_it(drv: Driver):
    """rsync and GIO close their temp file and rename it at once; the kernel's RELEASE of the
    handle may come after the RENAME. The rename by the process that closed it uploads it."""
    fh = drv.open("/.goutputstream-RACE01", os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    drv.write(fh, b"raced", 0, "/.goutputstream-RACE01")
    assert drv.flush("/.goutputstream-RACE01", fh) == 0  # close(2) returned; RELEASE not yet
    assert drv.mv("/.goutputstream-RACE01", "/final.txt") == 0
    assert drv.remote.data("final.txt") == b"raced"
    drv.release("/final.txt", fh)
    assert drv.remote.count("upload") == 1
    assert set(drv.ls("/")) == {"final.txt"}


def test_an_open_file_renamed_by_another_process_stays_local_until_its_close(drv: Driver):
    fh = drv.open("/a.txt", os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    drv.write(fh, b"still writing", 0, "/a.txt")
    drv.pid = os.getppid()  # not the process that has it open, and it never closed it
    assert drv.mv("/a.txt", "/b.txt") == 0
    assert drv.remote.count("upload") == 0
    drv.pid = os.getpid()
    assert drv.close("/b.txt", fh) == 0
    assert drv.remote.data("b.txt") == b"still writing"
