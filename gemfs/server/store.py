"""Durable state of the Files API server: File metadata and upload sessions in SQLite, bytes
in plain files. Knows nothing about HTTP.

Layout under the data directory:

    gemfs.sqlite3   metadata (WAL mode): files, upload sessions, every id ever issued
    blobs/<blob>    the bytes of a File (a random blob name, not the File id)
    uploads/<key>   the partial bytes of an open upload session (or a generated File in flight)
    lock            held (flock) while a server uses the directory

Guarantees:

* A File exists only once all its bytes are on disk: the partial file is fsynced, renamed into
  `blobs/`, the directory fsynced, and only then is the row inserted, in one transaction that
  also closes the upload session.
* A session row records only bytes that were fsynced first, so after a crash or restart the
  partial file is truncated to what the row says and re-hashed.
* Random ids are never reused, even after a delete (table `names`).
* Expired Files are invisible to every query before the sweep removes them.
* Projects are identified by an opaque string (the server passes the sha256 of the API key);
  upload sessions are stored under the sha256 of their token, so neither secret is on disk.

All methods are blocking and thread-safe; the server calls them from worker threads. One
`UploadSession` must not be written by two threads at once: the caller serialises per session.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import logging
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from gemfs import durable
from gemfs.server import wire

log = logging.getLogger(__name__)

# 2: files.error_code and files.error_message (a File made to end FAILED); 1 is migrated.
SCHEMA_VERSION = 2
_HASH_PIECE = 1024 * 1024

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS names (name TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS files (
    project      TEXT    NOT NULL,
    id           TEXT    NOT NULL,
    display_name TEXT,
    mime_type    TEXT    NOT NULL,
    size_bytes   INTEGER NOT NULL,
    sha256_hex   TEXT,
    create_us    INTEGER NOT NULL,
    ready_us     INTEGER NOT NULL,
    expire_us    INTEGER NOT NULL,
    source       TEXT    NOT NULL,
    blob         TEXT,
    error_code   INTEGER,
    error_message TEXT,
    PRIMARY KEY (project, id)
);
CREATE INDEX IF NOT EXISTS files_by_time ON files (project, create_us DESC, id DESC);
CREATE INDEX IF NOT EXISTS files_by_expiry ON files (expire_us);
CREATE TABLE IF NOT EXISTS sessions (
    key          TEXT    PRIMARY KEY,
    project      TEXT    NOT NULL,
    file_id      TEXT    NOT NULL,
    display_name TEXT,
    mime_type    TEXT    NOT NULL,
    declared     INTEGER NOT NULL,
    received     INTEGER NOT NULL DEFAULT 0,
    last_offset  INTEGER,
    last_length  INTEGER,
    create_us    INTEGER NOT NULL,
    state        TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_by_project ON sessions (project, state);
"""

_FILE_COLUMNS = (
    "project, id, display_name, mime_type, size_bytes, sha256_hex, create_us, ready_us, "
    "expire_us, source, blob, error_code, error_message"
)
_SESSION_COLUMNS = (
    "key, project, file_id, display_name, mime_type, declared, received, last_offset, "
    "last_length, create_us, state"
)

SESSION_ACTIVE = "active"
SESSION_FINAL = "final"

# `sessions.declared` of a session started without a size (wire.UNSIZED_UPLOADS_ACCEPTED): a
# value no sized session can have, so old data directories need no schema change. Such a session
# reserves what it has received, and its limits are checked as the bytes arrive.
UNKNOWN_SIZE = -1


# --- Records and errors ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FileRecord:
    project: str
    id: str
    display_name: str | None
    mime_type: str
    size_bytes: int
    sha256_hex: str | None
    create_us: int
    ready_us: int
    expire_us: int
    source: str
    blob: str | None
    # Set on a File made to fail: it is FAILED with this google.rpc.Status once ready.
    error_code: int | None = None
    error_message: str | None = None


@dataclasses.dataclass(frozen=True)
class UploadSession:
    key: str
    project: str
    file_id: str
    display_name: str | None
    mime_type: str
    declared: int
    received: int
    last_offset: int | None
    last_length: int | None
    create_us: int
    state: str

    @property
    def finalized(self) -> bool:
        return self.state == SESSION_FINAL

    @property
    def sized(self) -> bool:
        return self.declared != UNKNOWN_SIZE


class StoreError(Exception):
    """A request the store refuses; the server maps each subclass to a wire error."""


class DataDirBusy(StoreError):
    pass


class NameTaken(StoreError):
    pass


class FileTooLarge(StoreError):
    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"{size} > {limit}")
        self.size, self.limit = size, limit


class QuotaExceeded(StoreError):
    def __init__(self, used: int, size: int, quota: int) -> None:
        super().__init__(f"{used} + {size} > {quota}")
        self.used, self.size, self.quota = used, size, quota


class SessionGone(StoreError):
    """The upload session was finalized, cancelled or failed meanwhile, or its bytes are lost."""


class Overflow(StoreError):
    """More bytes than the upload declared."""


class SizeMismatch(StoreError):
    pass


# --- Clock -------------------------------------------------------------------------------------


class Clock:
    """Wall-clock time that tests may move forward (never backward)."""

    def __init__(self, source: Callable[[], float] = time.time) -> None:
        self._source = source
        self._offset = 0.0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self._source() + self._offset

    @property
    def offset(self) -> float:
        return self._offset

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("the clock only moves forward")
        with self._lock:
            self._offset += seconds


# --- Settings ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Limits:
    file_ttl_seconds: float = wire.DEFAULT_FILE_TTL_SECONDS
    max_file_size: int = wire.DEFAULT_MAX_FILE_SIZE
    project_quota: int = wire.DEFAULT_PROJECT_QUOTA
    # By processing class (`wire.processing_class`); a class not named here is ACTIVE at once.
    processing_seconds: Mapping[str, float] = dataclasses.field(
        default_factory=lambda: dict(wire.DEFAULT_PROCESSING_SECONDS)
    )
    session_lifetime_seconds: float = wire.UPLOAD_SESSION_LIFETIME_SECONDS


def _us(seconds: float) -> int:
    return int(round(seconds * 1_000_000))


def token_key(token: str) -> str:
    """The name under which an upload token is stored: its sha256, never the token itself."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


# --- Writers -----------------------------------------------------------------------------------


class ChunkWriter:
    """Appends one chunk to an upload session's partial file. Nothing counts until `commit`;
    `discard` leaves the session exactly as it was before the chunk.

    A sized session takes bytes up to its declared size (more: `Overflow`). An unknown-size one
    takes them while the File stays within the per-file limit (`FileTooLarge`) and the project
    within its quota as it stood when the chunk began (`QuotaExceeded`); `commit` re-checks the
    quota, since other sessions of the project may have grown meanwhile."""

    def __init__(self, store: Store, session: UploadSession, room: int, used: int) -> None:
        self._store = store
        self._session = session
        self._used = used
        self._hasher = store._hasher_for(session).copy()
        path = store._partial_path(session.key)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        self._file = os.fdopen(fd, "r+b", buffering=0)
        self._file.truncate(session.received)
        self._file.seek(session.received)
        self._room = room
        self.written = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.written + len(data) > self._room:
            raise self._store._over_room(self._session, self._used, self.written + len(data))
        view = memoryview(data)
        while view:
            n = self._file.write(view)
            view = view[n:]
        self._hasher.update(data)
        self.written += len(data)

    def commit(self, offset: int) -> UploadSession:
        try:
            os.fdatasync(self._file.fileno())
        finally:
            self._file.close()
        return self._store._commit_chunk(self._session, offset, self.written, self._hasher)

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self._file.truncate(self._session.received)
        self._file.close()


class BlobWriter:
    """Receives the bytes of a File created in one go (generated Files); `finish` turns them
    into a blob and returns (blob name, size, sha256 hex)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._tmp = store._uploads / f"gen-{secrets.token_hex(16)}"
        fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self._file = os.fdopen(fd, "wb", buffering=0)
        self._hasher = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | bytearray) -> None:
        view = memoryview(data)
        while view:
            n = self._file.write(view)
            view = view[n:]
        self._hasher.update(data)
        self.size += len(data)

    def finish(self) -> tuple[str, int, str]:
        os.fsync(self._file.fileno())
        self._file.close()
        blob = self._store._place_blob(self._tmp)
        return blob, self.size, self._hasher.hexdigest()

    def discard(self) -> None:
        self._file.close()
        with contextlib.suppress(FileNotFoundError):
            self._tmp.unlink()


# --- Store -------------------------------------------------------------------------------------


class Store:
    def __init__(self, root: Path, *, limits: Limits = Limits(), clock: Clock | None = None):
        self.root = Path(root)
        self.limits = limits
        self.clock = clock or Clock()
        self._blobs = self.root / "blobs"
        self._uploads = self.root / "uploads"
        for d in (self.root, self._blobs, self._uploads):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock_fd = self._acquire_dir_lock()
        self._db_lock = threading.RLock()
        self._hash_lock = threading.Lock()
        self._hashers: dict[str, tuple[int, hashlib._Hash]] = {}
        try:
            self._db = sqlite3.connect(
                self.root / "gemfs.sqlite3", isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: a committed row (a File, or bytes counted in a session) survives power loss.
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            self._check_schema()
            row = self._db.execute("SELECT MAX(create_us) FROM files").fetchone()
            self._last_create_us = row[0] or 0
            self._remove_orphans()
        except BaseException:
            self.close()
            raise

    # --- lifecycle --------------------------------------------------------------------------

    def close(self) -> None:
        db = getattr(self, "_db", None)
        if db is not None:
            with self._db_lock:
                db.close()
            self._db = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _acquire_dir_lock(self) -> int:
        fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise DataDirBusy(f"{self.root} is in use by another gemfs server") from None
            raise
        return fd

    def _check_schema(self) -> None:
        row = self._db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        if row is None:
            self._db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        elif int(row[0]) == 1:
            with self._tx() as db:
                db.execute("ALTER TABLE files ADD COLUMN error_code INTEGER")
                db.execute("ALTER TABLE files ADD COLUMN error_message TEXT")
                db.execute("UPDATE meta SET value=? WHERE key='schema'", (str(SCHEMA_VERSION),))
            log.info("data directory %s migrated to schema %d", self.root, SCHEMA_VERSION)
        elif int(row[0]) != SCHEMA_VERSION:
            raise StoreError(f"unsupported schema version {row[0]} in {self.root}")

    def _remove_orphans(self) -> None:
        """Deletes bytes no row refers to: left behind by a crash between renaming a blob into
        place and committing its row, or between deleting a row and unlinking its blob."""
        blobs = {r[0] for r in self._db.execute("SELECT blob FROM files WHERE blob IS NOT NULL")}
        active = {
            r[0]
            for r in self._db.execute("SELECT key FROM sessions WHERE state=?", (SESSION_ACTIVE,))
        }
        removed = 0
        for path in self._blobs.iterdir():
            if path.name not in blobs:
                path.unlink(missing_ok=True)
                removed += 1
        for path in self._uploads.iterdir():
            if path.name not in active:
                path.unlink(missing_ok=True)
                removed += 1
        if removed:
            log.info("removed %d orphaned data files", removed)

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._db_lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._db_lock:
            return self._db.execute(sql, args).fetchall()

    # --- time and ids -----------------------------------------------------------------------

    def now_us(self) -> int:
        return _us(self.clock())

    def _next_create_us(self) -> int:
        """Strictly increasing creation times (call with the db lock held), so that "newest
        first" is the order Files were created in even within one clock tick."""
        self._last_create_us = max(self.now_us(), self._last_create_us + 1)
        return self._last_create_us

    def _new_id(self, db: sqlite3.Connection) -> str:
        while True:
            candidate = "".join(secrets.choice(wire.ID_ALPHABET) for _ in range(wire.ID_LENGTH))
            if db.execute("INSERT OR IGNORE INTO names VALUES (?)", (candidate,)).rowcount:
                return candidate

    def _ready_us(self, mime_type: str, create_us: int) -> int:
        kind = wire.processing_class(mime_type)
        return create_us + _us(self.limits.processing_seconds.get(kind, 0.0) if kind else 0.0)

    # --- quota ------------------------------------------------------------------------------

    def _usage(self, db: sqlite3.Connection, project: str, now: int) -> int:
        files = db.execute(
            "SELECT COALESCE(SUM(size_bytes), 0) FROM files WHERE project=? AND expire_us>?",
            (project, now),
        ).fetchone()[0]
        # A sized session reserves its declared size, an unknown-size one what it has received.
        live_since = now - _us(self.limits.session_lifetime_seconds)
        reserved = db.execute(
            "SELECT COALESCE(SUM(CASE WHEN declared=? THEN received ELSE declared END), 0) "
            "FROM sessions WHERE project=? AND state=? AND create_us>?",
            (UNKNOWN_SIZE, project, SESSION_ACTIVE, live_since),
        ).fetchone()[0]
        return files + reserved

    def usage(self, project: str) -> int:
        """Bytes counted against the project's quota: live Files plus open upload sessions
        (declared sizes, or bytes received for sessions of unknown size)."""
        with self._db_lock:
            return self._usage(self._db, project, self.now_us())

    def _admit(self, db: sqlite3.Connection, project: str, size: int, now: int) -> None:
        if size > self.limits.max_file_size:
            raise FileTooLarge(size, self.limits.max_file_size)
        used = self._usage(db, project, now)
        if used + size > self.limits.project_quota:
            raise QuotaExceeded(used, size, self.limits.project_quota)

    def _name_in_use(self, db: sqlite3.Connection, project: str, name: str, now: int) -> bool:
        if db.execute(
            "SELECT 1 FROM files WHERE project=? AND id=? AND expire_us>?", (project, name, now)
        ).fetchone():
            return True
        return bool(
            db.execute(
                "SELECT 1 FROM sessions WHERE project=? AND file_id=? AND state=? AND create_us>?",
                (
                    project,
                    name,
                    SESSION_ACTIVE,
                    now - _us(self.limits.session_lifetime_seconds),
                ),
            ).fetchone()
        )

    def _claim_name(self, db: sqlite3.Connection, project: str, name: str | None, now: int) -> str:
        if name is None:
            return self._new_id(db)
        if self._name_in_use(db, project, name, now):
            raise NameTaken(name)
        db.execute("INSERT OR IGNORE INTO names VALUES (?)", (name,))
        return name

    # --- Files ------------------------------------------------------------------------------

    def get_file(self, project: str, file_id: str) -> FileRecord | None:
        rows = self._query(
            f"SELECT {_FILE_COLUMNS} FROM files WHERE project=? AND id=? AND expire_us>?",
            (project, file_id, self.now_us()),
        )
        return FileRecord(*rows[0]) if rows else None

    def list_files(
        self, project: str, page_size: int, after: tuple[int, str] | None = None
    ) -> tuple[list[FileRecord], bool]:
        """Newest first (createTime, then id, both descending), starting after the keyset
        `after`. Returns the page and whether more Files follow it."""
        sql = f"SELECT {_FILE_COLUMNS} FROM files WHERE project=? AND expire_us>?"
        args: tuple = (project, self.now_us())
        if after is not None:
            sql += " AND (create_us, id) < (?, ?)"
            args += after
        sql += " ORDER BY create_us DESC, id DESC LIMIT ?"
        rows = self._query(sql, args + (page_size + 1,))
        return [FileRecord(*r) for r in rows[:page_size]], len(rows) > page_size

    def delete_file(self, project: str, file_id: str) -> bool:
        with self._tx() as db:
            row = db.execute(
                "SELECT blob FROM files WHERE project=? AND id=? AND expire_us>?",
                (project, file_id, self.now_us()),
            ).fetchone()
            if row is None:
                return False
            db.execute("DELETE FROM files WHERE project=? AND id=?", (project, file_id))
        self._unlink_blob(row[0])
        return True

    def fail_file(self, project: str, file_id: str, code: int, message: str) -> FileRecord | None:
        """Makes a File end FAILED with this error, from now on (its updateTime becomes now,
        whether it was PROCESSING or ACTIVE). None if there is no such live File."""
        with self._tx() as db:
            now = self.now_us()
            changed = db.execute(
                "UPDATE files SET error_code=?, error_message=?, ready_us=MAX(create_us, ?) "
                "WHERE project=? AND id=? AND expire_us>?",
                (code, message, now, project, file_id, now),
            ).rowcount
        return self.get_file(project, file_id) if changed else None

    def open_blob(self, rec: FileRecord) -> int | None:
        """An open read-only descriptor on the File's bytes, or None if it has none."""
        if rec.blob is None:
            return None
        try:
            return os.open(self._blobs / rec.blob, os.O_RDONLY)
        except FileNotFoundError:
            return None

    def _insert_file(
        self,
        db: sqlite3.Connection,
        *,
        project: str,
        file_id: str,
        display_name: str | None,
        mime_type: str,
        size: int,
        sha256_hex: str | None,
        source: str,
        blob: str | None,
    ) -> tuple[FileRecord, str | None]:
        """Inserts a File; returns it and the blob of an expired File it displaced, if any."""
        now = self.now_us()
        stale = db.execute(
            "SELECT blob FROM files WHERE project=? AND id=? AND expire_us<=?",
            (project, file_id, now),
        ).fetchone()
        if stale is not None:
            db.execute("DELETE FROM files WHERE project=? AND id=?", (project, file_id))
        create = self._next_create_us()
        rec = FileRecord(
            project=project,
            id=file_id,
            display_name=display_name,
            mime_type=mime_type,
            size_bytes=size,
            sha256_hex=sha256_hex,
            create_us=create,
            ready_us=self._ready_us(mime_type, create),
            expire_us=create + _us(self.limits.file_ttl_seconds),
            source=source,
            blob=blob,
        )
        db.execute(
            f"INSERT INTO files ({_FILE_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            dataclasses.astuple(rec),
        )
        return rec, (stale[0] if stale else None)

    def create_generated(
        self,
        project: str,
        writer: BlobWriter,
        *,
        mime_type: str,
        display_name: str | None = None,
        name: str | None = None,
    ) -> FileRecord:
        """Turns the bytes of `writer` into a GENERATED File (the admin hook, §9.15)."""
        blob, size, digest = writer.finish()
        try:
            with self._tx() as db:
                file_id = self._claim_name(db, project, name, self.now_us())
                rec, stale = self._insert_file(
                    db,
                    project=project,
                    file_id=file_id,
                    display_name=display_name,
                    mime_type=mime_type,
                    size=size,
                    sha256_hex=digest,
                    source=wire.SOURCE_GENERATED,
                    blob=blob,
                )
        except BaseException:
            self._unlink_blob(blob)
            raise
        self._unlink_blob(stale)
        return rec

    def new_blob_writer(self) -> BlobWriter:
        return BlobWriter(self)

    def seed(
        self, project: str, count: int, *, prefix: str, size: int, mime_type: str
    ) -> list[FileRecord]:
        """Creates `count` ACTIVE uploaded Files without bytes, in one transaction. Their hash
        is that of `size` zero bytes; their sizes count against the quota."""
        if size > self.limits.max_file_size:
            raise FileTooLarge(size, self.limits.max_file_size)
        digest = _zeros_sha256(size)
        width = max(1, len(str(count - 1)))
        out = []
        with self._tx() as db:
            used = self._usage(db, project, self.now_us())
            if used + size * count > self.limits.project_quota:
                raise QuotaExceeded(used, size * count, self.limits.project_quota)
            for i in range(count):
                rec, _ = self._insert_file(
                    db,
                    project=project,
                    file_id=self._new_id(db),
                    display_name=f"{prefix}{i:0{width}d}",
                    mime_type=mime_type,
                    size=size,
                    sha256_hex=digest,
                    source=wire.SOURCE_UPLOADED,
                    blob=None,
                )
                out.append(rec)
        return out

    def register(self, project: str, entries: list[tuple[str, str]]) -> list[FileRecord]:
        """REGISTERED Files (§2.8) for (display name, MIME type) pairs; they have no bytes."""
        with self._tx() as db:
            return [
                self._insert_file(
                    db,
                    project=project,
                    file_id=self._new_id(db),
                    display_name=display_name,
                    mime_type=mime_type,
                    size=0,
                    sha256_hex=None,
                    source=wire.SOURCE_REGISTERED,
                    blob=None,
                )[0]
                for display_name, mime_type in entries
            ]

    # --- upload sessions --------------------------------------------------------------------

    def start_upload(
        self,
        project: str,
        *,
        name: str | None,
        display_name: str | None,
        mime_type: str,
        size: int | None,
    ) -> tuple[str, UploadSession]:
        """Opens a session and reserves its declared size; returns (token, session). The token
        is the bearer secret of the upload URL and is not kept anywhere. A session of unknown
        size (`size` None) reserves nothing yet, but a full project still refuses it here."""
        token = secrets.token_urlsafe(wire.UPLOAD_TOKEN_BYTES)
        with self._tx() as db:
            now = self.now_us()
            self._admit(db, project, 0 if size is None else size, now)
            file_id = self._claim_name(db, project, name, now)
            session = UploadSession(
                key=token_key(token),
                project=project,
                file_id=file_id,
                display_name=display_name,
                mime_type=mime_type,
                declared=UNKNOWN_SIZE if size is None else size,
                received=0,
                last_offset=None,
                last_length=None,
                create_us=now,
                state=SESSION_ACTIVE,
            )
            db.execute(
                f"INSERT INTO sessions ({_SESSION_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                dataclasses.astuple(session),
            )
        return token, session

    def get_session(self, token: str) -> UploadSession | None:
        """The live (active or finalized, not expired) session behind an upload token."""
        rows = self._query(
            f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE key=? AND create_us>?",
            (token_key(token), self.now_us() - _us(self.limits.session_lifetime_seconds)),
        )
        return UploadSession(*rows[0]) if rows else None

    def begin_chunk(self, session: UploadSession, length: int | None = None) -> ChunkWriter:
        """A writer for the next chunk, whose size is `length` if the request said so. For a
        session of unknown size a chunk that cannot fit the per-file limit or the quota is
        refused here, before any of its bytes reach the disk."""
        if session.sized:
            return ChunkWriter(self, session, session.declared - session.received, 0)
        with self._db_lock:
            used = self._usage(self._db, session.project, self.now_us())
        room = min(
            self.limits.max_file_size - session.received, self.limits.project_quota - used
        )
        if length is not None and length > max(room, 0):
            raise self._over_room(session, used, length)
        return ChunkWriter(self, session, room, used)

    def _over_room(self, session: UploadSession, used: int, length: int) -> StoreError:
        """Why `length` more bytes do not fit a session: the per-file limit first, then the
        quota (for which `used` already counts the session's received bytes)."""
        if not session.sized and session.received + length > self.limits.max_file_size:
            return FileTooLarge(session.received + length, self.limits.max_file_size)
        if not session.sized:
            return QuotaExceeded(used, length, self.limits.project_quota)
        return Overflow()

    def _partial_path(self, key: str) -> Path:
        return self._uploads / key

    def _hasher_for(self, session: UploadSession) -> hashlib._Hash:
        """The running hash of the session's first `received` bytes. After a restart (or any
        doubt) it is rebuilt from the partial file, which is first cut to `received`."""
        with self._hash_lock:
            cached = self._hashers.get(session.key)
        if cached is not None and cached[0] == session.received:
            return cached[1]
        hasher = hashlib.sha256()
        path = self._partial_path(session.key)
        if session.received:
            try:
                with open(path, "r+b") as f:
                    if os.fstat(f.fileno()).st_size < session.received:
                        raise SessionGone("partial upload shorter than recorded")
                    f.truncate(session.received)
                    for piece in iter(lambda: f.read(_HASH_PIECE), b""):
                        hasher.update(piece)
            except FileNotFoundError:
                raise SessionGone("partial upload missing") from None
            log.info("re-hashed %d bytes of a resumed upload session", session.received)
        with self._hash_lock:
            self._hashers[session.key] = (session.received, hasher)
        return hasher

    def _commit_chunk(
        self, session: UploadSession, offset: int, length: int, hasher: hashlib._Hash
    ) -> UploadSession:
        received = session.received + length
        with self._tx() as db:
            updated = db.execute(
                "UPDATE sessions SET received=?, last_offset=?, last_length=? "
                "WHERE key=? AND state=? AND received=?",
                (received, offset, length, session.key, SESSION_ACTIVE, session.received),
            ).rowcount
            if updated and length and not session.sized:
                # Other sessions of the project may have grown since the chunk began; the
                # transaction makes the check and the new reservation one step.
                self._check_quota(db, session.project)
        if not updated:
            raise SessionGone("session changed while a chunk was being written")
        with self._hash_lock:
            self._hashers[session.key] = (received, hasher)
        return dataclasses.replace(
            session, received=received, last_offset=offset, last_length=length
        )

    def _check_quota(self, db: sqlite3.Connection, project: str) -> None:
        used = self._usage(db, project, self.now_us())
        if used > self.limits.project_quota:
            raise QuotaExceeded(used, 0, self.limits.project_quota)

    def finalize_upload(self, session: UploadSession) -> FileRecord:
        if session.sized and session.received != session.declared:
            raise SizeMismatch(f"{session.received} != {session.declared}")
        digest = self._hasher_for(session).hexdigest()
        partial = self._partial_path(session.key)
        if not partial.exists():  # a 0-byte upload never wrote a chunk
            with open(partial, "wb") as f:
                os.fsync(f.fileno())
        blob = self._place_blob(partial)
        try:
            with self._tx() as db:
                closed = db.execute(
                    "UPDATE sessions SET state=? WHERE key=? AND state=?",
                    (SESSION_FINAL, session.key, SESSION_ACTIVE),
                ).rowcount
                if not closed:
                    raise SessionGone("session finalized or cancelled meanwhile")
                rec, stale = self._insert_file(
                    db,
                    project=session.project,
                    file_id=session.file_id,
                    display_name=session.display_name,
                    mime_type=session.mime_type,
                    size=session.received,
                    sha256_hex=digest,
                    source=wire.SOURCE_UPLOADED,
                    blob=blob,
                )
                if not session.sized:
                    # Its bytes were admitted chunk by chunk; the limits may have been lowered
                    # since (a restart with other options). Checked with the File in place of
                    # the session's reservation, in the transaction that makes the swap.
                    if session.received > self.limits.max_file_size:
                        raise FileTooLarge(session.received, self.limits.max_file_size)
                    self._check_quota(db, session.project)
        except BaseException:
            self._unlink_blob(blob)
            raise
        self._forget_hasher(session.key)
        self._unlink_blob(stale)
        return rec

    def end_session(self, session: UploadSession) -> None:
        """Cancels or fails a session: its row, bytes and reservation go away."""
        with self._tx() as db:
            db.execute("DELETE FROM sessions WHERE key=?", (session.key,))
        self._forget_hasher(session.key)
        self._partial_path(session.key).unlink(missing_ok=True)

    def _forget_hasher(self, key: str) -> None:
        with self._hash_lock:
            self._hashers.pop(key, None)

    # --- blobs ------------------------------------------------------------------------------

    def _place_blob(self, src: Path) -> str:
        """Moves a complete, fsynced file into `blobs/` under a fresh name and makes the rename
        durable before any row may point at it."""
        blob = secrets.token_hex(16)
        os.replace(src, self._blobs / blob)
        durable.fsync_dir(self._blobs)
        return blob

    def _unlink_blob(self, blob: str | None) -> None:
        if blob:
            (self._blobs / blob).unlink(missing_ok=True)

    # --- sweep ------------------------------------------------------------------------------

    def sweep(self) -> dict[str, int]:
        """Removes expired Files and upload sessions older than the session lifetime."""
        now = self.now_us()
        cutoff = now - _us(self.limits.session_lifetime_seconds)
        with self._tx() as db:
            blobs = [
                r[0]
                for r in db.execute(
                    "SELECT blob FROM files WHERE expire_us<=? AND blob IS NOT NULL", (now,)
                )
            ]
            files = db.execute("DELETE FROM files WHERE expire_us<=?", (now,)).rowcount
            keys = [
                r[0] for r in db.execute("SELECT key FROM sessions WHERE create_us<=?", (cutoff,))
            ]
            db.execute("DELETE FROM sessions WHERE create_us<=?", (cutoff,))
        for blob in blobs:
            self._unlink_blob(blob)
        for key in keys:
            self._forget_hasher(key)
            self._partial_path(key).unlink(missing_ok=True)
        if files or keys:
            log.info("sweep removed %d expired files and %d old upload sessions", files, len(keys))
        return {"files": files, "sessions": len(keys)}



def _zeros_sha256(size: int) -> str:
    hasher = hashlib.sha256()
    zeros = bytes(min(size, _HASH_PIECE))
    remaining = size
    while remaining:
        n = min(remaining, len(zeros))
        hasher.update(zeros[:n] if n < len(zeros) else zeros)
        remaining -= n
    return hasher.hexdigest()
