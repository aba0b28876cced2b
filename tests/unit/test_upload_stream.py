"""gemfs's upload streams (gemfs/upload.py UploadStream: a session started with no size, fed
whole chunks while its file is written, finalized at the close) against the real server app,
with faults injected before and after the server's work (test_upload.py's transport)."""

from __future__ import annotations

import errno
import hashlib
from pathlib import Path

import httpx
import pytest

from gemfs.errors import GemfsError
from gemfs.remote import Remote
from tests.unit.test_upload import (CHUNK, KEY, FaultyTransport, Rule, b64_hex, faults,  # noqa: F401
                                    fake_time, files_named, is_chunk, is_finalize, remote,
                                    serve, server, staged)

MIME = "application/octet-stream"


def body_bytes(faults: FaultyTransport) -> int:
    return sum(n for c, _, n in faults.log if c.startswith("upload"))


def test_a_stream_starts_without_a_size_and_each_byte_goes_once(remote, faults, staged):
    fd, data = staged()
    stream = remote.stream(fd, "streamed.bin", MIME)
    stream.start()
    assert faults.starts == [(None, None)]  # neither the header nor size_bytes: not known yet
    stream.send(3 * CHUNK + 5)  # only whole chunks: the last 5 bytes may still change
    assert stream.sent == 3 * CHUNK
    assert [(c, o) for c, o, _ in faults.log[1:]] == [("upload", k * CHUNK) for k in range(3)]
    result = stream.finish(len(data))
    assert result.record.size == len(data)
    assert result.record.api["sha256Hash"] == b64_hex(data)
    assert result.sha256_hex == hashlib.sha256(data).hexdigest()
    assert (result.resent_bytes, result.sessions) == (0, 1)
    assert body_bytes(faults) == len(data)
    assert faults.count("upload, finalize") == 1 and faults.count("query") == 0
    assert len(files_named(remote, "streamed.bin")) == 1


def test_send_stops_when_told(remote, faults, staged):
    fd, data = staged()
    stream = remote.stream(fd, "stopped.bin", MIME)
    stream.start()
    asked = []

    def stop_after_two() -> bool:  # asked before each chunk
        asked.append(1)
        return len(asked) > 2

    stream.send(5 * CHUNK, stop_after_two)
    assert stream.sent == 2 * CHUNK and len(asked) == 3
    assert stream.finish(len(data)).record.api["sha256Hash"] == b64_hex(data)


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_failed_chunk_stops_the_stream_and_the_finish_resumes_by_query(remote, faults, staged,
                                                                         when):
    faults.rules.append(Rule(is_chunk(1), when))
    fd, data = staged()
    stream = remote.stream(fd, f"paused-{when}.bin", MIME)
    stream.start()
    with pytest.raises(GemfsError):
        stream.send(4 * CHUNK)
    result = stream.finish(len(data))
    assert faults.count("query") == 1 and result.sessions == 1
    # lost answer: the server had it, nothing re-sent; reset: at most that chunk again
    assert result.resent_bytes == (0 if when == "after" else CHUNK)
    assert result.record.api["sha256Hash"] == b64_hex(data)
    assert len(files_named(remote, f"paused-{when}.bin")) == 1


def test_a_lost_finalize_answer_of_a_stream_makes_one_file(remote, faults, staged):
    faults.rules.append(Rule(is_finalize, "after"))
    fd, data = staged()
    stream = remote.stream(fd, "final.bin", MIME)
    stream.start()
    stream.send(len(data))
    result = stream.finish(len(data))
    assert faults.count("query") == 1 and faults.count("upload, finalize") == 1
    [only] = files_named(remote, "final.bin")
    assert only.id == result.record.id and only.size == len(data)


def test_a_file_of_whole_chunks_ends_with_an_empty_finalize(remote, faults, staged):
    fd, data = staged(4 * CHUNK)
    stream = remote.stream(fd, "whole.bin", MIME)
    stream.start()
    stream.send(len(data))
    result = stream.finish(len(data))
    assert faults.log[-1] == ("upload, finalize", 4 * CHUNK, 0)
    assert result.record.api["sha256Hash"] == b64_hex(data)


def test_a_cancelled_stream_is_never_a_file(remote, faults, staged):
    fd, data = staged()
    stream = remote.stream(fd, "cancelled.bin", MIME)
    stream.start()
    stream.send(2 * CHUNK)
    stream.cancel()
    assert faults.count("cancel") == 1
    assert files_named(remote, "cancelled.bin") == []
    stream.cancel()  # twice: nothing more is sent
    assert faults.count("cancel") == 1


def test_a_server_that_wants_sizes_gets_a_whole_upload_and_no_more_streams(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, staged, fake_time):  # noqa: F811
    serving = serve(tmp_path, monkeypatch, require_upload_size=True)
    url = next(serving)
    faults = FaultyTransport(httpx.HTTPTransport())  # noqa: F811
    remote = Remote(KEY, url, deadline=30.0, request_timeout=30.0, clock=fake_time.clock,  # noqa: F811
                    sleep=fake_time.sleep, transport=faults, chunk_size=CHUNK)
    try:
        fd, data = staged()
        stream = remote.stream(fd, "sized.bin", MIME)
        with pytest.raises(GemfsError) as refused:
            stream.start()
        assert refused.value.errno == errno.EINVAL
        result = stream.finish(len(data))  # the close: its size is known now
        assert faults.starts == [(None, None), (str(len(data)), len(data))]
        assert result.record.api["sha256Hash"] == b64_hex(data)
        assert len(files_named(remote, "sized.bin")) == 1
        assert remote.stream(fd, "next.bin", MIME) is None  # not tried again
    finally:
        remote.close()
        next(serving, None)
