"""Uploads that start before the close (gemfs/streaming.py, SEMANTICS.md "Uploads that start
before the close"), in process: the FakeStream keeps each chunk as it was when sent, so a File
holds stale bytes if a rewrite of sent bytes went unnoticed, and the contents are checked."""

from __future__ import annotations

import errno
import os
import signal
import time

from tests.fs.driver import WRITE_FLAGS, Driver, ended_process
from tests.fs.fake import FakeStream

STREAM_FROM = 16 * 1024  # the Driver's default
CHUNK = FakeStream.chunk


def payload(n: int, seed: int = 1) -> bytes:
    return bytes((i * 7 + seed) % 251 for i in range(n))


def wait_sent(drv: Driver, at_least: int, index: int = -1) -> FakeStream:
    """The stream once its thread has sent `at_least` bytes (an event, not a time limit: the
    bound only keeps a broken stream from hanging the test)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if drv.remote.streams and drv.remote.streams[index].sent >= at_least:
            return drv.remote.streams[index]
        time.sleep(0.001)
    raise AssertionError(f"the stream never sent {at_least} bytes: "
                         f"{[s.sent for s in drv.remote.streams]}")


def cancelled(stream: FakeStream) -> bool:
    """Whether the stream's session gets cancelled: its thread does that on its way out, after
    the operation that broke it has returned (waited for as an event, as in wait_sent)."""
    deadline = time.monotonic() + 30
    while not stream.cancelled and time.monotonic() < deadline:
        time.sleep(0.001)
    return stream.cancelled


def open_new(drv: Driver, path: str) -> int:
    return drv.open(path, WRITE_FLAGS)


def test_a_big_file_goes_out_while_written_and_its_close_makes_one_file(drv: Driver):
    data = payload(20 * CHUNK + 123)
    fh = open_new(drv, "/big.bin")
    drv.write(fh, data[: 10 * CHUNK])
    stream = wait_sent(drv, 8 * CHUNK)  # sent before the close, while the file was written
    drv.write(fh, data[10 * CHUNK:], 10 * CHUNK)
    mark = drv.remote.mark()
    assert drv.close("/big.bin", fh) == 0
    assert [(r.op, r.target, r.size) for r in drv.remote.since(mark)] == [
        ("upload", "big.bin", len(data))]
    assert drv.remote.data("big.bin") == data
    assert len(drv.remote.streams) == 1 and not stream.cancelled
    assert drv.read_file("/big.bin") == data  # the uploaded bytes became the cache entry


def test_a_small_file_is_not_streamed(drv: Driver):
    assert drv.write_file("/small.txt", payload(STREAM_FROM - 1)) == 0
    assert drv.remote.streams == []
    assert drv.remote.data("small.txt") == payload(STREAM_FROM - 1)


def test_a_rewrite_of_sent_bytes_cancels_the_stream_and_the_close_sends_the_new_ones(drv: Driver):
    data = payload(12 * CHUNK)
    fh = open_new(drv, "/f.bin")
    drv.write(fh, data)
    first = wait_sent(drv, 8 * CHUNK)
    drv.write(fh, b"HEADER", 0)  # a muxer patching its header at the end
    assert drv.close("/f.bin", fh) == 0
    assert cancelled(first)
    assert drv.remote.data("f.bin") == b"HEADER" + data[6:]
    assert len(drv.remote.named("f.bin")) == 1
    # After a break no new stream starts for that file: it goes up whole at the close.
    assert len(drv.remote.streams) == 1


def test_a_write_above_what_was_sent_keeps_the_stream(drv: Driver):
    data = payload(12 * CHUNK + 100)  # the last 100 bytes are no whole chunk: never taken
    fh = open_new(drv, "/g.bin")
    drv.write(fh, data)
    stream = wait_sent(drv, 12 * CHUNK)
    drv.write(fh, b"tail", len(data) - 4)  # past the last whole chunk it may have taken
    assert drv.close("/g.bin", fh) == 0
    assert not stream.cancelled
    assert drv.remote.data("g.bin") == data[:-4] + b"tail"


def test_truncate_below_what_was_sent_cancels_and_the_file_is_what_remains(drv: Driver):
    data = payload(12 * CHUNK)
    fh = open_new(drv, "/t.bin")
    drv.write(fh, data)
    stream = wait_sent(drv, 8 * CHUNK)
    assert drv.err("truncate", "/t.bin", 5 * CHUNK + 1, fh) == 0
    assert drv.close("/t.bin", fh) == 0
    assert cancelled(stream)
    assert drv.remote.data("t.bin") == data[: 5 * CHUNK + 1]


def test_open_with_o_trunc_starts_over_and_may_stream_again(drv: Driver):
    fh = open_new(drv, "/o.bin")
    drv.write(fh, payload(8 * CHUNK, seed=1))
    first = wait_sent(drv, 4 * CHUNK)
    second = payload(9 * CHUNK, seed=2)
    fh2 = drv.open("/o.bin", os.O_WRONLY | os.O_TRUNC)
    drv.write(fh2, second)
    assert cancelled(first)
    wait_sent(drv, 4 * CHUNK)  # the new contents stream again
    assert drv.close("/o.bin", fh2) == 0
    assert drv.close("/o.bin", fh) == 0
    assert drv.remote.data("o.bin") == second
    assert len(drv.remote.named("o.bin")) == 1


def test_rename_while_written_cancels_and_the_file_goes_up_under_its_new_name(drv: Driver):
    data = payload(10 * CHUNK)
    fh = open_new(drv, "/before.bin")
    drv.write(fh, data)
    stream = wait_sent(drv, 8 * CHUNK)
    assert drv.mv("/before.bin", "/after.bin") == 0
    assert cancelled(stream)
    assert drv.close("/after.bin", fh) == 0
    assert drv.remote.named("before.bin") == []
    assert drv.remote.data("after.bin") == data


def test_unlink_while_written_cancels_and_nothing_goes_up(drv: Driver):
    fh = open_new(drv, "/gone.bin")
    drv.write(fh, payload(10 * CHUNK))
    stream = wait_sent(drv, 8 * CHUNK)
    assert drv.rm("/gone.bin") == 0
    assert cancelled(stream)
    mark = drv.remote.mark()
    drv.close(None, fh)
    assert drv.remote.since(mark, "upload") == []
    assert drv.remote.live() == []


def test_a_writer_killed_midway_never_makes_a_file(drv: Driver):
    fh = open_new(drv, "/killed.bin")
    drv.write(fh, payload(10 * CHUNK))
    stream = wait_sent(drv, 8 * CHUNK)
    with ended_process(signal.SIGTERM) as pid:
        drv.pid = pid
        drv.close("/killed.bin", fh)
    assert cancelled(stream)
    assert drv.remote.live() == []


def test_a_temp_name_is_not_streamed_and_its_rename_uploads_it_once(drv: Driver):
    data = payload(10 * CHUNK)
    fh = open_new(drv, "/.goutputstream-ABC123")
    drv.write(fh, data)
    assert drv.close("/.goutputstream-ABC123", fh) == 0
    assert drv.remote.streams == []
    assert drv.mv("/.goutputstream-ABC123", "/saved.bin") == 0
    assert drv.remote.data("saved.bin") == data
    assert drv.remote.count("upload") == 1


def test_fsync_finalizes_what_was_written_and_the_close_replaces_it(drv: Driver):
    first, more = payload(9 * CHUNK, seed=3), payload(9 * CHUNK, seed=4)
    fh = open_new(drv, "/log.bin")
    drv.write(fh, first)
    wait_sent(drv, 8 * CHUNK)
    assert drv.fsync("/log.bin", fh) == 0
    assert drv.remote.data("log.bin") == first
    drv.write(fh, more, len(first))
    assert drv.close("/log.bin", fh) == 0
    assert drv.remote.data("log.bin") == first + more
    assert len(drv.remote.named("log.bin")) == 1  # the fsync's File was retired


def test_a_failed_finalize_reaches_the_close_and_a_second_close_uploads_once(drv: Driver):
    data = payload(10 * CHUNK)
    fh = open_new(drv, "/fail.bin")
    drv.write(fh, data)
    wait_sent(drv, 8 * CHUNK)
    drv.remote.fail_next("upload", errno.EIO)
    assert drv.flush("/fail.bin", fh) == errno.EIO
    assert drv.remote.live() == []
    # The same descriptor closed again (a dup): the bytes go up whole, once.
    assert drv.close("/fail.bin", fh) == 0
    assert drv.remote.data("fail.bin") == data
    assert len(drv.remote.named("fail.bin")) == 1


def test_a_streamed_overwrite_whose_finalize_answer_is_lost_leaves_one_file(drv: Driver):
    """A stream over a closed File whose finalize gives up after the server made the File: the
    close finds that File (fs._doubt), returns 0 and retires the old one; no second upload."""
    assert drv.write_file("/big.bin", b"old") == 0
    (old,) = drv.remote.named("big.bin")
    data = payload(10 * CHUNK)
    fh = drv.open("/big.bin", WRITE_FLAGS)
    drv.write(fh, data)
    wait_sent(drv, 8 * CHUNK)
    drv.remote.fail_next("upload", errno.EIO, after=True)
    mark = drv.remote.mark()
    assert drv.close("/big.bin", fh) == 0
    assert [(r.op, r.outcome) for r in drv.remote.since(mark)] == [
        ("upload", "failed-after"), ("list", "ok"), ("delete", "ok")]
    assert [s.data for s in drv.remote.named("big.bin")] == [data]
    assert drv.remote.ops("delete")[-1].target == old.record.id


def test_streams_off_means_every_file_goes_up_at_its_close(make_driver):
    drv = make_driver(stream_from=None)
    assert drv.write_file("/big.bin", payload(20 * CHUNK)) == 0
    assert drv.remote.streams == []
    assert drv.remote.data("big.bin") == payload(20 * CHUNK)


def test_a_server_that_wants_sizes_gets_whole_uploads(make_driver):
    drv = make_driver()
    drv.remote.stream = lambda fd, display, mime: None  # as Remote.stream after a refusal
    assert drv.write_file("/big.bin", payload(20 * CHUNK)) == 0
    assert drv.remote.data("big.bin") == payload(20 * CHUNK)


def test_status_shows_a_stream_while_its_file_is_written(drv: Driver):
    from gemfs.status import render

    fh = open_new(drv, "/shown.bin")
    drv.write(fh, payload(10 * CHUNK))
    wait_sent(drv, 8 * CHUNK)
    [up] = drv.fs.status()["uploads"]
    assert (up["path"], up["size"], up["writing"]) == ("shown.bin", 10 * CHUNK, True)
    assert 8 * CHUNK <= up["sent"] <= 10 * CHUNK
    text = render({"mountpoint": "/m", "pid": os.getpid(), "status": drv.fs.status()})
    assert "uploads:   1 in flight" in text and "shown.bin" in text
    assert "(still being written)" in text
    assert drv.close("/shown.bin", fh) == 0
    assert drv.fs.status()["uploads"] == []


def test_a_stream_that_cannot_start_never_fails_a_write(drv: Driver, monkeypatch):
    # The stream is an optimisation: out of descriptors for its dup, or of threads, the write
    # that would have started it has already put its bytes in the staged file and must say so;
    # the file then goes up whole at its close.
    import gemfs.fs

    def no_stream(*args, **kwargs):
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(gemfs.fs, "Streamer", no_stream)
    data = payload(10 * CHUNK)
    assert drv.write_file("/nofd.bin", data) == 0
    assert drv.remote.data("nofd.bin") == data
    assert len(drv.remote.named("nofd.bin")) == 1


def test_a_streamer_whose_thread_cannot_start_keeps_no_descriptor(monkeypatch):
    import threading

    import pytest

    from gemfs.streaming import Streamer

    def refuse(self):
        raise RuntimeError("can't start new thread")

    r, w = os.pipe()
    try:
        before = sorted(os.listdir("/proc/self/fd"))
        with monkeypatch.context() as m:
            m.setattr(threading.Thread, "start", refuse)
            with pytest.raises(RuntimeError):
                Streamer(lambda fd: object(), r, 0, "x", "application/octet-stream")
        assert sorted(os.listdir("/proc/self/fd")) == before
    finally:
        os.close(r)
        os.close(w)


def test_a_file_sized_first_streams_only_from_a_write_at_its_end(drv: Driver):
    # ftruncate to the full size, then blocks in order (some downloaders): nothing streams
    # while the writes fill the middle, so no zeros go out to be cancelled later.
    data = payload(12 * CHUNK)
    fh = open_new(drv, "/sized.bin")
    assert drv.err("truncate", "/sized.bin", len(data), fh) == 0
    drv.write(fh, data[: 11 * CHUNK])
    assert drv.remote.streams == []
    drv.write(fh, data[11 * CHUNK:], 11 * CHUNK)  # reaches the end: a stream may start now
    assert drv.close("/sized.bin", fh) == 0
    assert drv.remote.data("sized.bin") == data
    assert all(not s.cancelled for s in drv.remote.streams)
    assert len(drv.remote.named("sized.bin")) == 1
