"""gemfs's own client of the X-Goog-Upload resumable protocol (files-api-wire.md §2.2, §2.3, §12).

The SDK's `files.upload` cannot ask a session what it holds, so any fault restarts the file from
byte 0 and a lost finalize answer makes a second File. This client speaks the protocol itself:
`start` a session, send chunks at offsets that are multiples of the server's granularity, the
last one with `upload, finalize`, and after any unclear failure (a reset, a timeout, a 5xx, a
lost or garbled answer) `query` the session: `active` resumes at the size the server has,
`final` hands over the File the session already made, and only a session that is gone (404,
410, `cancelled`) makes a new one from byte 0. It hashes the bytes as they go (SHA-256, in a
worker thread, overlapping the network) and checks them against the File's `sha256Hash`.

The upload URL carries a bearer credential (`upload_id`): it never appears in a log line, an
exception or a repr; a session is named `session#N`.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import itertools
import json
import logging
import os
import random
import re
from concurrent.futures import Executor, Future, wait
from dataclasses import dataclass, field
from typing import Callable

import httpx

from gemfs.errors import ApiFailure, GemfsError, failure_from_answer
from gemfs.model import FileRecord

log = logging.getLogger(__name__)

# Chunks are this big (the SDK's size), or the largest multiple of the server's granularity below
# it: a fault re-sends at most one chunk, and an upload holds at most two in memory (the one on
# the wire and the one read ahead).
DEFAULT_CHUNK_SIZE = 8 * 1024 * 1024

_UPLOAD_ID = re.compile(r"(upload_id=)[^&\s\"'>]*", re.IGNORECASE)
_SESSION_NUMBERS = itertools.count(1)


def redact(text: str) -> str:
    """`text` with every upload_id value blanked."""
    return _UPLOAD_ID.sub(r"\1<redacted>", text)


class _RedactUploadIds(logging.Filter):
    """httpx logs each request's URL at INFO and httpcore the answer's headers (the start answer
    holds the upload URL) at DEBUG; an `upload_id` must not reach a log even with those on.
    (A logger's filters see only that logger's own records, so each is named.)"""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            args = record.args if isinstance(record.args, tuple) else (record.args,)
            record.args = tuple(redact(str(a)) if "upload_id" in str(a) else a for a in args)
        if isinstance(record.msg, str) and "upload_id" in record.msg:
            record.msg = redact(record.msg)
        return True


_filter = _RedactUploadIds()
for _name in ("httpx", "httpx2", *(f"{core}.{part}" for core in ("httpcore", "httpcore2")
                                  for part in ("connection", "http11", "http2", "proxy", "socks"))):
    if _filter not in logging.getLogger(_name).filters:
        logging.getLogger(_name).addFilter(_filter)


@dataclass(frozen=True)
class UploadResult:
    """A finished upload: the File, the verified SHA-256 of the bytes (lower-case hex), the bytes
    sent more than once because of faults, and how many sessions it took."""

    record: FileRecord
    sha256_hex: str
    resent_bytes: int
    sessions: int


class _Gone(Exception):
    """The session no longer exists (404, 410, `cancelled`): only a new one can go on."""


class _Fault(Exception):
    """A failed request; `failure` says whether it is worth retrying."""

    def __init__(self, failure: ApiFailure) -> None:
        super().__init__(str(failure))
        self.failure = failure


class _Retry:
    """Remote._call's rules for one upload: jittered backoff from 0.25 s doubling to 8 s (or what
    the server asked for), inside `deadline` seconds counted from the first failure since the
    last progress, so a long transfer that keeps moving is never cut short by it."""

    def __init__(self, deadline: float, clock: Callable[[], float],
                 sleep: Callable[[float], None]) -> None:
        self.deadline, self.clock, self.sleep = deadline, clock, sleep
        self.end: float | None = None
        self.delay = 0.25
        self.failures = 0

    def progressed(self) -> None:
        self.end, self.delay = None, 0.25

    def wait_or_raise(self, failure: ApiFailure, label: str) -> None:
        self.failures += 1
        now = self.clock()
        if self.end is None:
            self.end = now + self.deadline
        pause = failure.retry_after if failure.retry_after is not None else (
            self.delay * (0.5 + random.random()))
        if not failure.retryable or now + pause >= self.end:
            log.warning("upload %s failed after %d failure(s): %s", label, self.failures, failure)
            raise GemfsError.of(failure)
        log.debug("upload %s: %s; retrying in %.2fs", label, failure, pause)
        self.sleep(pause)
        self.delay = min(self.delay * 2, 8.0)


@dataclass
class _Transfer:
    """One upload's state, owned by the thread that runs it (but for `sha` and `hashed_upto`,
    which the read-ahead task alone touches while it runs)."""

    fd: int
    size: int | None  # None while a stream's size is not known yet (UploadStream)
    display_name: str
    mime_type: str
    progress: Callable[[int], None] | None
    url: str | None = field(default=None, repr=False)  # the session's URL: a bearer credential
    label: str = "session#?"
    sessions: int = 0
    chunk: int = DEFAULT_CHUNK_SIZE
    sent_upto: int = 0  # the end of the furthest byte range ever put on the wire
    resent: int = 0
    acked_upto: int = 0  # the furthest offset any session of this upload has confirmed
    final_offset: int | None = None  # where the finalizing chunk started, once it was sent
    sha: "hashlib._Hash" = field(default_factory=hashlib.sha256, repr=False)
    hashed_upto: int = 0
    # The one worker task of this upload in flight (reading, and hashing, the chunk at
    # `ahead`); only that task touches `sha` and `hashed_upto` while it runs.
    hashing: Future | None = field(default=None, repr=False)
    ahead: tuple[int, int] | None = None
    reported: int = -1

    def report(self, sent: int) -> None:
        if self.progress and sent > self.reported:
            self.reported = sent
            self.progress(sent)


def chunk_size_for(granularity: int | None, preferred: int = DEFAULT_CHUNK_SIZE) -> int:
    """The largest multiple of `granularity` not above `preferred` (at least one granule)."""
    if not granularity or granularity <= 0:
        return preferred
    return granularity * max(1, preferred // granularity)


def _read(fd: int, offset: int, length: int) -> bytes:
    data = os.pread(fd, length, offset)
    if len(data) == length:
        return data
    parts = [data]  # pread may return less than asked; the staged file has the bytes
    got = len(data)
    while got < length:
        more = os.pread(fd, length - got, offset + got)
        if not more:
            raise GemfsError(errno.EIO, f"staged file shorter than its size ({offset + got} bytes)")
        parts.append(more)
        got += len(more)
    return b"".join(parts)


class Uploader:
    """Resumable uploads over one thread-safe httpx client (shared by all uploads of a Remote)."""

    def __init__(
        self,
        http: httpx.Client,
        start_url: str,
        headers: dict[str, str],
        *,
        deadline: float,
        clock: Callable[[], float],
        sleep: Callable[[float], None],
        hasher: Executor,
        delete: Callable[[str], None],
        on_request: Callable[[], None] = lambda: None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> None:
        self._http = http
        self._start_url = start_url
        self._headers = dict(headers)  # the SDK's: API key, user agent, JSON content type
        self._deadline = deadline
        self._clock, self._sleep = clock, sleep
        self._hasher = hasher
        self._delete = delete
        self._on_request = on_request
        self._chunk_size = chunk_size
        # Set once, by the first start without a size that the server refused with a 4xx:
        # streams are then never tried again in this process (a bool, read without a lock).
        self.unsized_refused = False

    def upload(self, fd: int, size: int, display_name: str, mime_type: str,
               progress: Callable[[int], None] | None = None) -> UploadResult:
        t = _Transfer(fd, size, display_name, mime_type, progress)
        return self._complete(t, "start", 0)

    def stream(self, fd: int, display_name: str, mime_type: str) -> "UploadStream | None":
        """An upload of a file still being written (UploadStream), or None when this server has
        refused a start without a size before (files-api-wire.md §12: UNK for the Gemini
        endpoint); then the file goes up whole at its close, as with `upload`."""
        if self.unsized_refused:
            return None
        return UploadStream(self, _Transfer(fd, None, display_name, mime_type, None))

    def _complete(self, t: _Transfer, state: str, offset: int) -> UploadResult:
        """Run `t` to its File from `state` ("start", "query" or "send" at `offset`), check
        the bytes' hash, and report."""
        retry = _Retry(self._deadline, self._clock, self._sleep)
        try:
            file_json = self._run(t, retry, state, offset)
            digest = self._finish_hash(t)
        finally:
            if t.hashing is not None:  # a read-ahead left by a failure: let it end, quietly
                wait([t.hashing])
        record = FileRecord.from_api(file_json)
        self._verify(t, record, digest)
        t.report(t.size)
        if t.reported < 0 and t.progress:
            t.progress(0)
        log.debug("upload %s: files/%s, %d bytes, %d re-sent, %d session(s)",
                  t.label, record.id, t.size, t.resent, t.sessions)
        return UploadResult(record, digest, t.resent, t.sessions)

    # --- the state machine ----------------------------------------------------------------

    def _run(self, t: _Transfer, retry: _Retry, state: str = "start", offset: int = 0) -> dict:
        """Start, send, and after each unclear failure query; returns the File's JSON."""
        while True:
            try:
                if state == "start":
                    self._start(t)
                    offset, state = 0, "send"
                elif state == "query":
                    answer = self._query(t)
                    if isinstance(answer, dict):
                        return answer
                    offset, state = answer, "send"
                return self._send(t, offset, retry)
            except _Gone:
                log.info("upload %s: the session is gone; a new one starts from byte 0", t.label)
                t.url, state = None, "start"
                # Code 0: a session that keeps vanishing ends as EIO, not as the 404's ENOENT.
                retry.wait_or_raise(ApiFailure(0, "", "the upload session is gone", op="upload",
                                               retryable=True), t.label)
            except _Fault as fault:
                retry.wait_or_raise(fault.failure, t.label)
                state = "query" if t.url is not None else "start"

    def _start(self, t: _Transfer) -> None:
        headers = dict(self._headers)
        headers.update({
            "Content-Type": "application/json",
            "X-Goog-Upload-Protocol": "resumable",
            "X-Goog-Upload-Command": "start",
            "X-Goog-Upload-Header-Content-Type": t.mime_type,
        })
        meta: dict = {"display_name": t.display_name, "mime_type": t.mime_type}
        if t.size is not None:  # a stream's start says nothing: its finalize ends it
            headers["X-Goog-Upload-Header-Content-Length"] = str(t.size)
            meta["size_bytes"] = t.size
        body = json.dumps({"file": meta}).encode()
        label = f"session#{next(_SESSION_NUMBERS)}"
        resp = self._post(self._start_url, headers, body, "upload start", label)
        if resp.status_code != 200:
            raise _Fault(self._failure(resp, "upload start"))
        url = resp.headers.get("x-goog-upload-url")
        if not url:
            raise _Fault(ApiFailure(0, "", "bad response: no upload URL in the answer",
                                    op="upload start", retryable=True))
        granularity = resp.headers.get("x-goog-upload-chunk-granularity", "")
        t.chunk = chunk_size_for(int(granularity) if granularity.isdigit() else None,
                                 self._chunk_size)
        t.url, t.label = url, label
        t.sessions += 1
        t.final_offset = None
        log.debug("upload %s started: %s bytes in chunks of %d", label,
                  "unknown" if t.size is None else t.size, t.chunk)

    def _query(self, t: _Transfer) -> int | dict:
        """Ask the session where it is: the offset to go on from, or the File it already made."""
        assert t.url is not None
        resp = self._post(t.url, {"X-Goog-Upload-Command": "query"}, b"", "upload query", t.label)
        if resp.status_code in (404, 410):
            raise _Gone()
        if resp.status_code != 200:
            raise _Fault(self._failure(resp, "upload query"))
        status = resp.headers.get("x-goog-upload-status", "").strip().lower()
        if status == "cancelled":
            raise _Gone()
        if status == "final":
            file_json = _file_of(resp)
            if file_json is not None:
                log.info("upload %s: the finalize was lost on the way back; its File is taken "
                         "from the session", t.label)
                return file_json
            if t.final_offset is not None:
                # A server that answers `final` without the File: re-send the finalizing chunk,
                # which the protocol answers again with the File (as for the SDK's re-sends).
                log.info("upload %s is final; re-sending its last chunk for the File", t.label)
                return t.final_offset
            raise _Fault(_garbled("upload query", "final without a File"))
        received = resp.headers.get("x-goog-upload-size-received", "")
        if status != "active" or not received.isdigit() or int(received) > t.size:
            raise _Fault(_garbled("upload query", f"status {status or 'missing'}"))
        log.debug("upload %s: the server has %s of %d bytes", t.label, received, t.size)
        return int(received)

    def _send(self, t: _Transfer, offset: int, retry: _Retry, upto: int | None = None,
              stop: Callable[[], bool] = lambda: False) -> dict | int:
        """Send the chunks from `offset` on; returns the File's JSON from the finalize answer.
        With `upto` (a stream, size not known yet): only the whole chunks that end by `upto`,
        none of them final, until `stop()` says so; returns the offset reached."""
        assert t.url is not None
        end = t.size if upto is None else upto
        while True:
            if upto is not None and (offset + t.chunk > upto or stop()):
                return offset
            length = min(t.chunk, end - offset)
            last = upto is None and offset + length >= end
            data = self._load(t, offset, length)
            after = offset + length
            if not last and (upto is None or after + t.chunk <= upto):
                # read and hash the next chunk while this one is on the wire
                self._prefetch(t, after, min(t.chunk, end - after))
            if offset < t.sent_upto:
                t.resent += min(length, t.sent_upto - offset)
            t.sent_upto = max(t.sent_upto, after)
            command = "upload, finalize" if last else "upload"
            if last:
                t.final_offset = offset
            headers = {"X-Goog-Upload-Command": command, "X-Goog-Upload-Offset": str(offset)}
            resp = self._post(t.url, headers, data, "upload chunk", t.label)
            del data
            if resp.status_code in (404, 410):
                raise _Gone()
            if resp.status_code != 200:
                raise _Fault(self._failure(resp, "upload chunk"))
            status = resp.headers.get("x-goog-upload-status", "").strip().lower()
            if last:
                file_json = _file_of(resp) if status == "final" else None
                if file_json is None:
                    raise _Fault(_garbled("upload finalize", f"status {status or 'missing'}"))
                return file_json
            received = resp.headers.get("x-goog-upload-size-received", "")
            if status != "active":
                raise _Fault(_garbled("upload chunk", f"status {status or 'missing'}"))
            offset = int(received) if received.isdigit() and int(received) <= end else after
            if offset > t.acked_upto:
                # Only new ground restarts the deadline: a session that keeps dying after its
                # first chunk must not retry forever.
                t.acked_upto = offset
                retry.progressed()
            t.report(offset)

    def _post(self, url: str, headers: dict[str, str], body: bytes, op: str,
              label: str) -> httpx.Response:
        self._on_request()
        log.debug("api %s (%s)", op, label)
        try:
            resp = self._http.post(url, headers=headers, content=body)
        except httpx.TransportError as exc:
            # httpx's words can name the URL; keep only the kind of failure and a redacted text.
            raise _Fault(ApiFailure(0, "", f"{type(exc).__name__}: {redact(str(exc))}", op=op,
                                    retryable=True)) from None
        # httpx's Request and Response refer to each other, so the chunk they hold would wait
        # for the cyclic garbage collector: up to ~9 chunks (72 MiB) alive at once, and a daemon
        # peak of 320 MB for a 1 GiB upload. Let the request drop the chunk now.
        stream = resp.request.stream
        if isinstance(stream, httpx.ByteStream):
            stream._stream = b""  # httpcore refers to this very object
        resp.request._content = b""
        return resp

    @staticmethod
    def _failure(resp: httpx.Response, op: str) -> ApiFailure:
        try:
            body = resp.json()
        except ValueError:
            body = None
        return failure_from_answer(resp.status_code, body, op, resp.headers.get("retry-after"),
                                   fallback_message=resp.reason_phrase)

    # --- the content hash -----------------------------------------------------------------

    def _load(self, t: _Transfer, offset: int, length: int) -> bytes:
        """The chunk at `offset`: the prefetched one when it is that, else read (and hashed)
        now, after any task in flight has ended."""
        ahead, task = t.ahead, t.hashing
        t.ahead, t.hashing = None, None
        if task is not None:
            data = task.result()
            if ahead == (offset, length):
                return data
        return self._read_and_hash(t, offset, length)

    def _prefetch(self, t: _Transfer, offset: int, length: int) -> None:
        t.ahead = (offset, length)
        t.hashing = self._hasher.submit(self._read_and_hash, t, offset, length)

    @staticmethod
    def _read_and_hash(t: _Transfer, offset: int, length: int) -> bytes:
        """Read a chunk; hash it if it is the next one in order (bytes are hashed once, in
        order, the first time they go out). Runs in a worker for the chunk after the one on
        the wire: pread and hashlib let go of the GIL, so both overlap the network."""
        data = _read(t.fd, offset, length)
        if offset == t.hashed_upto and data:
            t.sha.update(data)
            t.hashed_upto = offset + len(data)
        return data

    def _finish_hash(self, t: _Transfer) -> str:
        if t.hashing is not None:
            t.hashing.result()
            t.hashing, t.ahead = None, None
        while t.hashed_upto < t.size:  # only when the File came back before all bytes were read
            piece = _read(t.fd, t.hashed_upto, min(t.chunk, t.size - t.hashed_upto))
            t.sha.update(piece)
            t.hashed_upto += len(piece)
        return t.sha.hexdigest()

    def _verify(self, t: _Transfer, record: FileRecord, digest: str) -> None:
        """The File must hold our bytes: its sha256Hash (base64 of the hex digest) when the
        server gives one, and its size. A File with other bytes is deleted, and the upload
        fails with EIO."""
        want = base64.b64encode(digest.encode()).decode()
        got = record.api.get("sha256Hash") or ""
        size_ok = "sizeBytes" not in record.api or record.size == t.size
        if (not got or got == want) and size_ok:
            return
        log.error("upload %s: files/%s does not hold the bytes sent (sha256 %s, size %d of %d); "
                  "deleting it", t.label, record.id, "differs" if got != want else "matches",
                  record.size, t.size)
        try:
            self._delete(record.id)
        except GemfsError as e:
            log.error("could not delete the damaged files/%s: %s", record.id, e)
        raise GemfsError(errno.EIO, f"files/{record.id} does not hold the bytes that were sent")


class UploadStream:
    """An upload that starts while its file is still being written (`Uploader.stream`): the
    session starts with no size, whole chunks go out as they are written (`send`), and `finish`
    sends the rest and finalizes, under the same rules as `Uploader.upload` (a fault is resolved
    by `query`, a lost finalize answer by the session's `final`). `send` never retries: after a
    fault it stops, and `finish` resolves the session. Used by one thread at a time (the
    streamer's, then, once that has stopped, the closer's)."""

    def __init__(self, uploader: Uploader, t: _Transfer) -> None:
        self._up, self._t = uploader, t
        self._in_doubt = False  # a request failed: only a query says where the session is
        self._start_failure: ApiFailure | None = None

    @property
    def chunk(self) -> int:
        """The chunk size, known once `start` has returned (the server's granularity)."""
        return self._t.chunk

    @property
    def sent(self) -> int:
        """Bytes the server has confirmed."""
        return self._t.acked_upto

    def start(self) -> None:
        t = self._t
        try:
            self._up._start(t)
        except _Fault as fault:
            self._start_failure = fault.failure
            raise GemfsError.of(fault.failure) from None

    def send(self, upto: int, stop: Callable[[], bool] = lambda: False) -> None:
        """Send the whole chunks that end by `upto` (bytes that will not change any more),
        checking `stop()` before each."""
        t = self._t
        retry = _Retry(self._up._deadline, self._up._clock, self._up._sleep)  # never waited on
        try:
            self._up._send(t, t.acked_upto, retry, upto, stop)
        except _Gone:
            self._in_doubt = True
            raise GemfsError(errno.EIO, f"upload {t.label}: the session is gone") from None
        except _Fault as fault:
            self._in_doubt = True
            raise GemfsError.of(fault.failure) from None
        except BaseException:
            self._in_doubt = True  # whatever it was, only a query says what the server holds
            raise

    def finish(self, size: int, progress: Callable[[int], None] | None = None) -> UploadResult:
        """The file is closed at `size` bytes: send the rest, finalize, verify. A stream that
        never started goes up whole now, its size known."""
        t = self._t
        t.size, t.progress = size, progress
        if t.url is None:
            state = "start"
        elif self._in_doubt:
            state = "query"
        else:
            state = "send"
        result = self._up._complete(t, state, t.acked_upto)
        f = self._start_failure
        if f is not None and 400 <= f.code < 500 and f.code not in (408, 429):
            # The same upload started with its size where it could not without (UNK for the
            # Gemini endpoint, files-api-wire.md §12): stop trying for this process.
            log.warning("the server refused an upload started without its size (%s); files "
                        "will go up when they are closed", f)
            self._up.unsized_refused = True
        return result

    def cancel(self) -> None:
        """Give the session up (its bytes will not be a File); best effort, never raises."""
        t = self._t
        if t.hashing is not None:
            wait([t.hashing])
            t.hashing, t.ahead = None, None
        if t.url is None:
            return
        url, t.url = t.url, None
        try:
            self._up._post(url, {"X-Goog-Upload-Command": "cancel"}, b"", "upload cancel", t.label)
        except _Fault as fault:
            log.debug("upload %s: cancel failed (%s); the session will expire", t.label, fault)


def _file_of(resp: httpx.Response) -> dict | None:
    try:
        body = resp.json()
    except ValueError:
        return None
    file_json = body.get("file") if isinstance(body, dict) else None
    return file_json if isinstance(file_json, dict) and file_json.get("name") else None


def _garbled(op: str, what: str) -> ApiFailure:
    return ApiFailure(0, "", f"bad response: {what}", op=op, retryable=True)
