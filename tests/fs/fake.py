"""An in-memory Files API behind the `Remote` interface, with a fake clock and fault injection.

`FakeRemote` is what `GemFS` talks to in the in-process test tier: it keeps every File's bytes,
writes records the way the real service does (12-character ids, `sha256Hash` as base64 of the hex
digest, createTime/updateTime with 6 fractional digits, expirationTime with 9, 48 h retention
read from the injected `FakeClock`), logs every request, and fails on request, either *before*
the work (nothing happened on the server) or *after* it (the server did it, the answer was lost).
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from gemfs.errors import ApiFailure, GemfsError
from gemfs.model import FileRecord
from gemfs.upload import UploadResult
from gemfs.server import wire

GiB = 1024**3
DEFAULT_QUOTA = 20 * GiB  # files-api-wire.md §12: 21474836480 bytes
DEFAULT_MAX_FILE_SIZE = 2 * GiB
FILE_TTL = 48 * 3600.0
PAGE_SIZE = 100
READ_CHUNK = 8 << 20  # the SDK reads a staged file in 8 MiB pieces
OPS = ("list", "get", "delete", "upload", "download")


class FakeClock:
    """Seconds since the epoch that move only when a test says so (shared by remote and catalog)."""

    def __init__(self, start: float = 1_795_000_000.0) -> None:  # late 2026
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock does not go back")
        with self._lock:
            self._now += seconds


@dataclass
class Request:
    """One call as the server saw it; `outcome` is "ok", "failed-before" or "failed-after"."""

    op: str
    target: str  # a File id, a display name, or "" for list
    outcome: str = "ok"
    size: int = 0


@dataclass
class Fault:
    err: int
    after: bool


@dataclass
class Stored:
    record: FileRecord
    data: bytes


@dataclass
class FakeRemote:
    """The `gemfs.remote.Remote` interface in memory. Thread-safe: `_lock` guards every field
    below it; no callback (upload progress) runs under it."""

    clock: FakeClock
    quota: int = DEFAULT_QUOTA
    max_file_size: int = DEFAULT_MAX_FILE_SIZE
    seed: int = 0
    base_url: str = "fake://files-api/"
    deadline: float = 60.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    files: dict[str, Stored] = field(default_factory=dict)  # live and expired, by id
    requests: list[Request] = field(default_factory=list)
    calls: int = 0
    _faults: dict[str, deque] = field(default_factory=lambda: {op: deque() for op in OPS})
    _last_create_us: int = 0
    _ids: set[str] = field(default_factory=set)
    streams: list = field(default_factory=list)  # every FakeStream made, in order

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)

    # -- fault injection ------------------------------------------------------------------------

    def fail_next(self, op: str, err: int = errno.EIO, after: bool = False, *, times: int = 1) -> None:
        """The next `times` calls of `op` fail with `err`: before doing anything, or (after=True)
        once the work is done, as when the server committed and the answer was lost on the way
        back (what fs.py sees when its uploader gives up)."""
        if op not in OPS:
            raise ValueError(f"unknown op {op!r}; one of {OPS}")
        with self._lock:
            self._faults[op].extend(Fault(err, after) for _ in range(times))

    def clear_faults(self) -> None:
        with self._lock:
            for queue in self._faults.values():
                queue.clear()

    def armed(self, op: str) -> int:
        """How many injected faults of `op` have not fired yet."""
        with self._lock:
            return len(self._faults[op])

    def _begin(self, op: str, target: str, size: int = 0) -> tuple[Request, Fault | None]:
        """Log a request and take its fault; a before-fault raises here. Call under _lock."""
        self.calls += 1
        request = Request(op, target, size=size)
        self.requests.append(request)
        fault = self._faults[op].popleft() if self._faults[op] else None
        if fault is not None and not fault.after:
            request.outcome = "failed-before"
            raise _injected(op, fault.err)
        return request, fault

    @staticmethod
    def _end(request: Request, fault: Fault | None) -> None:
        if fault is not None:
            request.outcome = "failed-after"
            raise _injected(request.op, fault.err)

    # -- the Remote interface -------------------------------------------------------------------

    def list_all(self) -> list[FileRecord]:
        with self._lock:
            request, fault = self._begin("list", "")
            records = self._live_records()
            self._end(request, fault)
            return records

    def list_page(self, deadline: float | None = None) -> tuple[list[FileRecord], bool]:
        with self._lock:
            request, fault = self._begin("list", "")
            records = self._live_records()
            self._end(request, fault)
            return records[:PAGE_SIZE], len(records) > PAGE_SIZE

    def get(self, file_id: str) -> FileRecord:
        with self._lock:
            request, fault = self._begin("get", file_id)
            stored = self._live(file_id)
            self._end(request, fault)
            if stored is None:
                raise _not_found(file_id)
            return stored.record

    def delete(self, file_id: str) -> None:
        """Like Remote.delete: a File that is already gone counts as deleted."""
        with self._lock:
            request, fault = self._begin("delete", file_id)
            self.files.pop(file_id, None)
            self._end(request, fault)

    def upload(self, fd: int, size: int, display_name: str, mime_type: str,
               progress: Callable[[int], None] | None = None) -> FileRecord:
        """Read `size` bytes of `fd` (pread, as the SDK's reader does) into a new ACTIVE File."""
        chunks, sent = [], 0
        while sent < size:
            piece = os.pread(fd, min(READ_CHUNK, size - sent), sent)
            if not piece:
                break
            chunks.append(piece)
            sent += len(piece)
            if progress is not None:
                progress(sent)
        data = b"".join(chunks)
        if len(data) != size:  # the staged file is shorter than fs.py said: a bug, not a fault
            raise AssertionError(f"upload of {display_name!r}: {size} bytes announced, {len(data)} staged")
        return self._make_file(data, display_name, mime_type)

    def _make_file(self, data: bytes, display_name: str, mime_type: str) -> FileRecord:
        """The one request that makes a File of `data` (an upload, or a stream's finalize),
        with its limits and injected faults."""
        size = len(data)
        with self._lock:
            request, fault = self._begin("upload", display_name, size)
            if size > self.max_file_size:
                request.outcome = "refused"
                raise GemfsError(errno.EFBIG, "upload: 413 file too large",
                                 ApiFailure(413, "INVALID_ARGUMENT", "file too large", "", "upload"))
            if self._used() + size > self.quota:
                request.outcome = "refused"
                raise GemfsError(errno.EDQUOT, "upload: 429 project storage quota exceeded",
                                 ApiFailure(429, "RESOURCE_EXHAUSTED", "Quota exceeded", "", "upload"))
            record = self._new_record(display_name, mime_type, data, generated=False)
            self._end(request, fault)
            return record

    def stream(self, fd: int, display_name: str, mime_type: str) -> "FakeStream":
        """Like Remote.stream: an upload that starts before `fd` is fully written."""
        return FakeStream(self, fd, display_name, mime_type)

    def upload_verified(self, fd: int, size: int, display_name: str, mime_type: str,
                        progress: Callable[[int], None] | None = None) -> UploadResult:
        """`upload`, with what gemfs's uploader reports besides: the SHA-256 of the bytes sent
        (checked against the File's sha256Hash there; here the fake's record is made from them)."""
        record = self.upload(fd, size, display_name, mime_type, progress)
        with self._lock:
            data = self._live(record.id).data
        return UploadResult(record, hashlib.sha256(data).hexdigest(), 0, 1)

    def download(self, file_id: str, destination: str) -> None:
        with self._lock:
            request, fault = self._begin("download", file_id)
            stored = self._live(file_id)
            if stored is None:
                raise _not_found(file_id)
            if not stored.record.generated:
                request.outcome = "refused"
                raise GemfsError(errno.EINVAL, "download: 400 Only generated files can be downloaded.")
            data = stored.data
        with open(destination, "wb") as out:
            out.write(data)
        with self._lock:
            self._end(request, fault)

    def close(self) -> None:
        pass

    # -- what tests set up and look at ----------------------------------------------------------

    def add_file(self, display_name: str | None, data: bytes, *, mime_type: str = "application/octet-stream",
                 generated: bool = False) -> FileRecord:
        """A File that another client made (or a generated one, which can be downloaded);
        not logged as a request of the mount."""
        with self._lock:
            return self._new_record(display_name, mime_type, data, generated=generated)

    def live(self) -> list[Stored]:
        """Every File that exists now (not deleted, not expired), oldest first."""
        with self._lock:
            now = self.clock()
            return sorted((s for s in self.files.values() if not _expired(s.record, now)),
                          key=lambda s: (s.record.create_time, s.record.id))

    def named(self, display_name: str) -> list[Stored]:
        return [s for s in self.live() if s.record.display_name == display_name]

    def data(self, display_name: str) -> bytes:
        """The bytes of the one live File with this display name (an AssertionError otherwise)."""
        found = self.named(display_name)
        assert len(found) == 1, f"{len(found)} Files named {display_name!r}"
        return found[0].data

    def ops(self, op: str, outcome: str | None = None) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.op == op and (outcome is None or r.outcome == outcome)]

    def count(self, op: str) -> int:
        """Calls of `op` the mount made, whatever their outcome."""
        return len(self.ops(op))

    def mark(self) -> int:
        """A position in the request log: `since(mark)` gives what came after it."""
        with self._lock:
            return len(self.requests)

    def since(self, mark: int, op: str | None = None) -> list[Request]:
        with self._lock:
            return [r for r in self.requests[mark:] if op is None or r.op == op]

    # -- internals (call under _lock) -----------------------------------------------------------

    def _live(self, file_id: str) -> Stored | None:
        stored = self.files.get(file_id)
        if stored is None or _expired(stored.record, self.clock()):
            return None
        return stored

    def _live_records(self) -> list[FileRecord]:
        now = self.clock()
        live = [s.record for s in self.files.values() if not _expired(s.record, now)]
        live.sort(key=lambda r: (r.create_time, r.id), reverse=True)  # the API lists newest first
        return live

    def _used(self) -> int:
        now = self.clock()
        return sum(s.record.size for s in self.files.values() if not _expired(s.record, now))

    def _new_id(self) -> str:
        while True:
            candidate = "".join(self._random.choice(wire.ID_ALPHABET) for _ in range(wire.ID_LENGTH))
            if candidate not in self._ids:
                self._ids.add(candidate)
                return candidate

    def _new_record(self, display_name: str | None, mime_type: str, data: bytes, *, generated: bool) -> FileRecord:
        file_id = self._new_id()
        # Strictly increasing, as the server's: "newest first" must be the creation order.
        create_us = max(int(self.clock() * 1e6), self._last_create_us + 1)
        self._last_create_us = create_us
        api: dict[str, object] = {"name": f"files/{file_id}"}
        if display_name:
            api["displayName"] = display_name
        api["mimeType"] = mime_type
        if data:
            api["sizeBytes"] = str(len(data))  # proto3: a 0-byte File has no sizeBytes
        api["createTime"] = wire.timestamp_us(create_us)
        api["updateTime"] = wire.timestamp_us(create_us)
        api["expirationTime"] = wire.timestamp_ns((create_us + int(FILE_TTL * 1e6)) * 1000)
        api["sha256Hash"] = wire.sha256_field(hashlib.sha256(data).hexdigest())
        api["uri"] = wire.file_uri(file_id)
        if generated:
            api["downloadUri"] = wire.file_uri(file_id) + ":download?alt=media"
        api["state"] = wire.STATE_ACTIVE
        api["source"] = wire.SOURCE_GENERATED if generated else wire.SOURCE_UPLOADED
        record = FileRecord.from_api(api)
        self.files[file_id] = Stored(record, bytes(data))
        return record


class FakeStream:
    """gemfs.upload.UploadStream in memory. It keeps each chunk's bytes as they were when it was
    sent, as a server would, so a File made from a stream whose sent bytes were later rewritten
    holds the stale ones, and the model tests see it. Its finalize is the one "upload" request
    (limits and faults as for `FakeRemote.upload`); starts and chunks are counted, not logged."""

    chunk = 4096

    def __init__(self, remote: FakeRemote, fd: int, display_name: str, mime_type: str) -> None:
        self.remote, self.fd = remote, fd
        self.display_name, self.mime_type = display_name, mime_type
        self.parts: list[bytes] = []
        self.sent = 0
        self.cancelled = False
        with remote._lock:
            remote.streams.append(self)

    def start(self) -> None:
        pass

    def send(self, upto: int, stop: Callable[[], bool] = lambda: False) -> None:
        while self.sent + self.chunk <= upto and not stop():
            piece = os.pread(self.fd, self.chunk, self.sent)
            assert len(piece) == self.chunk, "a stream was told of bytes not staged"
            self.parts.append(piece)
            self.sent += self.chunk

    def finish(self, size: int, progress: Callable[[int], None] | None = None) -> UploadResult:
        assert not self.cancelled and size >= self.sent
        data = b"".join(self.parts) + os.pread(self.fd, size - self.sent, self.sent)
        assert len(data) == size, f"stream of {self.display_name!r}: {size} announced, {len(data)} staged"
        record = self.remote._make_file(data, self.display_name, self.mime_type)
        if progress is not None:
            progress(size)
        return UploadResult(record, hashlib.sha256(data).hexdigest(), 0, 1)

    def cancel(self) -> None:
        self.cancelled = True


def _expired(record: FileRecord, now: float) -> bool:
    return bool(record.expiration_time) and record.expiration_time <= now


def _injected(op: str, err: int) -> GemfsError:
    failure = ApiFailure(0, "", "injected fault", "", op, retryable=True)
    return GemfsError(err, f"{op}: injected fault ({errno.errorcode.get(err, err)})", failure)


def _not_found(file_id: str) -> GemfsError:
    # 403 PERMISSION_DENIED on a File, which errors.py maps to ENOENT (files-api-wire.md §6).
    return GemfsError(errno.ENOENT, f"403 PERMISSION_DENIED: You do not have permission to access "
                                    f"the File {file_id} or it may not exist.",
                      ApiFailure(403, "PERMISSION_DENIED", "", "", "get"))
