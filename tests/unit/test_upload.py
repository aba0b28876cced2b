"""gemfs's resumable upload client against the real server app (uvicorn in a thread), with faults
injected by an httpx transport both instead of the server's work and after it (the server did
the work, the answer is lost). Retry waits run on a fake clock: nothing here really sleeps."""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import uvicorn

from gemfs.errors import GemfsError
from gemfs.remote import Remote
from gemfs.server import wire
from gemfs.server.app import create_app
from gemfs.server.config import ServerConfig
from gemfs.server.store import Clock, Limits, Store
from tests.helpers import FakeTime

KEY = "upload-test-key"
GRANULE = 64 * 1024
CHUNK = 4 * GRANULE  # the Remote's preferred chunk: four of the server's granules
SIZE = 5 * CHUNK + 1234  # six chunks, the last one short


@dataclass
class Rule:
    """Fault on the `nth` request (counting from 0) for which `match(command, offset)` holds.
    `when` is "before" (the server never sees the request) or "after" (it does its work and the
    answer is then lost, or replaced by `replace(response)`)."""

    match: Callable[[str, int | None], bool]
    when: str
    nth: int = 0
    times: int = 1
    replace: Callable[[httpx.Response], httpx.Response] | None = None
    seen: int = 0


class FaultyTransport(httpx.BaseTransport):
    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner
        self.rules: list[Rule] = []
        self.log: list[tuple[str, int | None, int]] = []  # (command, offset, body length)
        self.upload_ids: set[str] = set()
        self.starts: list[tuple[str | None, int | None]] = []  # (size header, size_bytes) of each

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        command = request.headers.get("x-goog-upload-command", "")
        raw = request.headers.get("x-goog-upload-offset")
        offset = int(raw) if raw is not None else None
        body = request.read()
        self.log.append((command, offset, len(body)))
        if command == "start":
            self.starts.append((request.headers.get("x-goog-upload-header-content-length"),
                                json.loads(body)["file"].get("size_bytes")))
        self.upload_ids.update(parse_qs(urlsplit(str(request.url)).query).get("upload_id", []))
        for rule in self.rules:
            if not rule.times or not rule.match(command, offset):
                continue
            rule.seen += 1
            if rule.seen - 1 < rule.nth:
                continue
            rule.times -= 1
            if rule.when == "before":
                if rule.replace:
                    return rule.replace(httpx.Response(200))
                raise httpx.ConnectError("connection reset by peer")
            response = self.inner.handle_request(request)
            response.read()
            response.close()
            if rule.replace:
                return rule.replace(response)
            raise httpx.ReadError("connection reset by peer")
        return self.inner.handle_request(request)

    def count(self, command: str) -> int:
        return sum(1 for c, _, _ in self.log if c == command)

    def close(self) -> None:
        self.inner.close()


def is_chunk(k: int) -> Callable[[str, int | None], bool]:
    return lambda command, offset: command.startswith("upload") and offset == k * CHUNK


def is_finalize(command: str, offset: int | None) -> bool:
    return "finalize" in command


def is_start(command: str, offset: int | None) -> bool:
    return command == "start"


def error_answer(code: int, status: str, message: str, details: list | None = None,
                 headers: dict | None = None) -> Callable[[httpx.Response], httpx.Response]:
    error: dict = {"code": code, "message": message, "status": status}
    if details:
        error["details"] = details
    body = json.dumps({"error": error}).encode()
    return lambda _: httpx.Response(code, content=body, headers={
        "content-type": "application/json", **(headers or {})})


QUOTA_FAILURE = [{
    "@type": "type.googleapis.com/google.rpc.QuotaFailure",
    "violations": [{"quotaMetric": "generativelanguage.googleapis.com/file_storage_bytes",
                    "quotaId": "FileStorageBytesPerProject"}],
}]


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The real Files API app on 127.0.0.1 (a random port), naming a small granularity."""
    yield from serve(tmp_path, monkeypatch)


def serve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **config):
    """`server`'s body, with ServerConfig fields (`require_upload_size=True`)."""
    monkeypatch.setattr(wire, "CHUNK_GRANULARITY", GRANULE)
    # The server side's access log prints raw URLs (`gemfs serve` never enables it): keep it
    # out of caplog, which checks what the client logs.
    monkeypatch.setattr(logging.getLogger("uvicorn.access"), "disabled", True)
    store = Store(tmp_path / "data", limits=Limits(), clock=Clock())
    app = create_app(ServerConfig(data_dir=tmp_path / "data", sweep_interval_seconds=3600,
                                  **config), store)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, lifespan="on", log_config=None, access_log=False))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.01)
    yield f"http://127.0.0.1:{port}/"
    srv.should_exit = True
    thread.join(30)
    store.close()
    sock.close()


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


@pytest.fixture
def faults() -> FaultyTransport:
    return FaultyTransport(httpx.HTTPTransport())


@pytest.fixture
def remote(server: str, faults: FaultyTransport, fake_time: FakeTime):
    r = Remote(KEY, server, deadline=30.0, request_timeout=30.0, clock=fake_time.clock,
               sleep=fake_time.sleep, transport=faults, chunk_size=CHUNK)
    yield r
    r.close()


@pytest.fixture
def staged(tmp_path: Path):
    """A staged file of `size` random bytes: (fd, bytes)."""
    fds: list[int] = []

    def make(size: int = SIZE) -> tuple[int, bytes]:
        data = os.urandom(size)
        path = tmp_path / f"staged-{len(fds)}"
        path.write_bytes(data)
        fds.append(os.open(path, os.O_RDONLY))
        return fds[-1], data

    yield make
    for fd in fds:
        os.close(fd)


def files_named(remote: Remote, name: str) -> list:
    return [f for f in remote.list_all() if f.display_name == name]


def b64_hex(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).hexdigest().encode()).decode()


def test_a_healthy_upload_sends_each_byte_once_and_verifies_its_hash(remote, faults, staged):
    fd, data = staged()
    seen: list[int] = []
    result = remote.upload_verified(fd, len(data), "healthy.bin", "application/octet-stream",
                                    seen.append)
    assert result.sha256_hex == hashlib.sha256(data).hexdigest()
    assert result.record.api["sha256Hash"] == b64_hex(data)
    assert (result.record.size, result.resent_bytes, result.sessions) == (len(data), 0, 1)
    assert seen == sorted(seen) and seen[-1] == len(data)
    assert faults.count("start") == 1 and faults.count("query") == 0
    assert sum(n for c, _, n in faults.log if c.startswith("upload")) == len(data)
    assert len(files_named(remote, "healthy.bin")) == 1


@pytest.mark.parametrize("k", [1, 4, 5])  # a middle chunk, the one before the last, the last
def test_a_reset_before_the_server_has_chunk_k_resends_at_most_that_chunk(
        remote, faults, staged, k):
    faults.rules.append(Rule(is_chunk(k), "before"))
    fd, data = staged()
    result = remote.upload_verified(fd, len(data), f"reset{k}.bin", "application/octet-stream")
    assert 0 < result.resent_bytes <= CHUNK
    assert result.sessions == 1 and faults.count("query") == 1
    assert len(files_named(remote, f"reset{k}.bin")) == 1
    assert result.record.api["sha256Hash"] == b64_hex(data)


@pytest.mark.parametrize("k", [0, 2, 4])
def test_a_lost_answer_after_the_server_took_chunk_k_resends_nothing(remote, faults, staged, k):
    faults.rules.append(Rule(is_chunk(k), "after"))
    fd, data = staged()
    result = remote.upload_verified(fd, len(data), f"lost{k}.bin", "application/octet-stream")
    assert result.resent_bytes == 0 and result.sessions == 1
    assert faults.count("query") == 1
    assert len(files_named(remote, f"lost{k}.bin")) == 1


def test_a_lost_finalize_answer_takes_the_file_from_query_and_makes_one_file(
        remote, faults, staged):
    faults.rules.append(Rule(is_finalize, "after"))
    fd, data = staged()
    result = remote.upload_verified(fd, len(data), "final.bin", "text/plain")
    assert result.resent_bytes == 0 and result.sessions == 1
    assert faults.count("query") == 1 and faults.count("upload, finalize") == 1
    [only] = files_named(remote, "final.bin")
    assert only.id == result.record.id
    assert result.sha256_hex == hashlib.sha256(data).hexdigest()


def test_a_garbled_finalize_answer_is_resolved_by_query(remote, faults, staged):
    faults.rules.append(Rule(is_finalize, "after",
                             replace=lambda r: httpx.Response(200, content=b"<html>oops",
                                                              headers=r.headers)))
    fd, data = staged()
    result = remote.upload_verified(fd, len(data), "garbled.bin", "text/plain")
    assert result.resent_bytes == 0 and faults.count("query") == 1
    assert len(files_named(remote, "garbled.bin")) == 1


def test_a_final_query_without_the_file_resends_only_the_last_chunk(remote, faults, staged):
    """A server whose `query` says `final` but leaves the File out: the finalizing chunk is
    sent again (the protocol answers a re-sent finalize with the same File)."""
    faults.rules.append(Rule(is_finalize, "after"))
    faults.rules.append(Rule(lambda c, o: c == "query", "after",
                             replace=lambda r: httpx.Response(200, headers=r.headers)))
    fd, data = staged()
    result = remote.upload_verified(fd, len(data), "bare.bin", "text/plain")
    assert result.resent_bytes == len(data) - 5 * CHUNK
    assert len(files_named(remote, "bare.bin")) == 1


def test_a_session_that_is_gone_starts_a_new_one_from_byte_0(remote, faults, staged):
    inner = faults.inner
    # Before chunk 2, the session is cancelled behind the client's back (as an expiry would),
    # and the chunk's connection is reset: query answers 404, a new session starts.
    original = faults.handle_request
    fired = []

    def handle(request: httpx.Request) -> httpx.Response:
        if not fired and request.headers.get("x-goog-upload-offset") == str(2 * CHUNK):
            fired.append(1)
            inner.handle_request(httpx.Request(
                "POST", request.url, headers={"X-Goog-Upload-Command": "cancel"})).read()
            raise httpx.ReadError("connection reset by peer")
        return original(request)

    faults.handle_request = handle  # type: ignore[method-assign]
    fd, data = staged()
    result = remote.upload_verified(fd, len(data), "gone.bin", "text/plain")
    assert fired and result.sessions == 2
    assert result.resent_bytes == 2 * CHUNK + CHUNK  # chunks 0, 1 and the reset chunk 2
    assert len(files_named(remote, "gone.bin")) == 1
    assert result.record.api["sha256Hash"] == b64_hex(data)


def test_a_session_that_keeps_vanishing_ends_with_eio_at_the_deadline(remote, faults, fake_time,
                                                                       staged):
    """Each session takes its first chunk, then is gone: the re-sent first chunk is no new
    ground, so the deadline is not restarted by it and the upload ends."""
    faults.rules.append(Rule(is_chunk(1), "before", times=-1))
    faults.rules.append(Rule(lambda c, o: c == "query", "before", times=-1, replace=error_answer(
        404, "NOT_FOUND", "The upload session does not exist or has expired.")))
    fd, data = staged()
    with pytest.raises(GemfsError) as info:
        remote.upload(fd, len(data), "vanishing.bin", "text/plain")
    assert info.value.errno == errno.EIO
    assert faults.count("start") >= 3 and sum(fake_time.sleeps) < remote.deadline
    assert files_named(remote, "vanishing.bin") == []


@pytest.mark.parametrize("where", [is_start, is_finalize])
def test_the_real_storage_quota_answer_is_edquot_at_once(remote, faults, fake_time, staged,
                                                         where):
    faults.rules.append(Rule(where, "before", replace=error_answer(
        429, "RESOURCE_EXHAUSTED", "Quota exceeded for metric: generativelanguage.googleapis.com/"
        "file_storage_bytes, limit: 21474836480", QUOTA_FAILURE)))
    fd, data = staged()
    with pytest.raises(GemfsError) as info:
        remote.upload(fd, len(data), "quota.bin", "text/plain")
    assert info.value.errno == errno.EDQUOT
    assert fake_time.sleeps == []
    assert faults.count("start") == 1 and faults.count("query") == 0
    assert files_named(remote, "quota.bin") == []


def test_a_plain_429_is_a_rate_limit_waited_out_as_the_server_asks(remote, faults, fake_time,
                                                                   staged):
    faults.rules.append(Rule(is_start, "before", times=2, replace=error_answer(
        429, "RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota).",
        headers={"Retry-After": "7"})))
    faults.rules.append(Rule(is_chunk(3), "before", replace=error_answer(
        429, "RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota).",
        [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "2.5s"}])))
    fd, data = staged()
    result = remote.upload_verified(fd, len(data), "rate.bin", "text/plain")
    assert fake_time.sleeps == [7.0, 7.0, 2.5]
    assert faults.count("start") == 3 and result.sessions == 1
    assert len(files_named(remote, "rate.bin")) == 1


def test_a_persistent_failure_ends_at_the_deadline_with_eio(remote, faults, fake_time, staged):
    faults.rules.append(Rule(is_chunk(1), "before", times=-1))
    faults.rules.append(Rule(lambda c, o: c == "query", "before", times=-1,
                             replace=error_answer(503, "UNAVAILABLE", "unavailable")))
    fd, data = staged()
    with pytest.raises(GemfsError) as info:
        remote.upload(fd, len(data), "down.bin", "text/plain")
    assert info.value.errno == errno.EIO
    assert len(fake_time.sleeps) >= 3
    assert sum(fake_time.sleeps) < remote.deadline  # no wait runs past the deadline
    assert files_named(remote, "down.bin") == []


def test_progress_during_an_upload_is_healthy_time_not_deadline(server, faults, staged):
    """The deadline counts from the first failure since the last chunk that went through: an
    upload whose chunks each fail once (and whose total retry time is far above the deadline)
    still finishes."""
    now = [0.0]
    r = Remote(KEY, server, deadline=5.0, clock=lambda: now[0],
               sleep=lambda s: now.__setitem__(0, now[0] + s + 3.0),  # each wait costs 3 s more
               transport=faults, chunk_size=CHUNK)
    try:
        for k in range(6):
            faults.rules.append(Rule(is_chunk(k), "before"))
        fd, data = staged()
        result = r.upload_verified(fd, len(data), "slow.bin", "text/plain")
        assert now[0] > r.deadline and faults.count("query") == 6
        assert result.resent_bytes <= 6 * CHUNK
    finally:
        r.close()


def test_a_file_with_other_bytes_is_deleted_and_eio(remote, faults, staged):
    def wrong_hash(response: httpx.Response) -> httpx.Response:
        body = response.json()
        body["file"]["sha256Hash"] = base64.b64encode(b"0" * 64).decode()
        return httpx.Response(200, json=body, headers={
            "x-goog-upload-status": "final"})

    faults.rules.append(Rule(is_finalize, "after", replace=wrong_hash))
    fd, data = staged()
    with pytest.raises(GemfsError) as info:
        remote.upload(fd, len(data), "bad.bin", "text/plain")
    assert info.value.errno == errno.EIO
    assert files_named(remote, "bad.bin") == []


def test_chunks_follow_the_servers_granularity(server, faults, staged, monkeypatch):
    granule = 100_000  # does not divide the preferred chunk: chunks must be a multiple of it
    monkeypatch.setattr(wire, "CHUNK_GRANULARITY", granule)
    r = Remote(KEY, server, transport=faults, chunk_size=CHUNK)
    try:
        fd, data = staged()
        r.upload(fd, len(data), "granule.bin", "text/plain")
    finally:
        r.close()
    chunks = [(o, n) for c, o, n in faults.log if c.startswith("upload")]
    assert len(chunks) > 2
    for offset, length in chunks[:-1]:
        assert offset % granule == 0 and length % granule == 0 and length <= CHUNK
    assert chunks[-1][0] + chunks[-1][1] == len(data)


def test_an_empty_file_is_one_finalize_of_no_bytes(remote, faults, staged):
    fd, _ = staged(0)
    seen: list[int] = []
    result = remote.upload_verified(fd, 0, "empty.txt", "text/plain", seen.append)
    assert result.sha256_hex == hashlib.sha256(b"").hexdigest()
    assert [(c, o, n) for c, o, n in faults.log if c != "start"] == [("upload, finalize", 0, 0)]
    assert seen == [0] and result.record.size == 0
    assert len(files_named(remote, "empty.txt")) == 1


def test_no_upload_id_reaches_a_log_or_an_exception(remote, faults, fake_time, staged, caplog):
    caplog.set_level(logging.DEBUG)
    faults.rules.append(Rule(is_chunk(1), "before"))
    faults.rules.append(Rule(is_finalize, "after"))
    fd, data = staged()
    remote.upload(fd, len(data), "secret1.bin", "text/plain")
    # A failing upload: 400 on a chunk, and a persistent reset after a first chunk.
    faults.rules.append(Rule(is_chunk(2), "before", replace=error_answer(
        400, "INVALID_ARGUMENT", "bad chunk")))
    errors: list[BaseException] = []
    with pytest.raises(GemfsError) as info:
        remote.upload(fd, len(data), "secret2.bin", "text/plain")
    errors.append(info.value)
    faults.rules.append(Rule(is_chunk(1), "before", times=-1))
    faults.rules.append(Rule(lambda c, o: c == "query", "before", times=-1))
    with pytest.raises(GemfsError) as info:
        remote.upload(fd, len(data), "secret3.bin", "text/plain")
    errors.append(info.value)
    assert len(faults.upload_ids) >= 3
    text = "\n".join(r.getMessage() for r in caplog.records)
    text += "\n".join(f"{e} {e!r} {e.failure!r} {e.__cause__!r} {e.__context__!r}"
                      for e in errors)
    assert "session#" in text  # sessions are named, just not by their credential
    for upload_id in faults.upload_ids:
        assert upload_id not in text
    assert KEY not in text
