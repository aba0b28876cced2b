"""The local content cache: the bytes of Files this machine uploaded, so a user can read their own
writes (the Files API never gives uploaded bytes back).

Public API (all methods are thread-safe):

    DEFAULT_MAX_BYTES = 10 GiB
    hex_from_api(sha256Hash: str | None) -> str | None     # the API's base64(hex) -> hex
    ContentCache(root: str, max_bytes: int, *, clock=time.time)
      .enabled -> bool                     # False if max_bytes == 0 or another process owns root
      .adopt(file_id, path, *, size, sha256_hex, expires_at) -> bool
      .open(file_id) -> int | None         # O_RDONLY|O_CLOEXEC fd, marks the entry used
      .contains(file_id) -> bool
      .size_of(file_id) -> int | None
      .drop(file_id) -> bool               # the File was deleted or replaced
      .expire() -> int                     # drop entries whose expires_at has passed
      .retain(live: dict[str, str | None]) -> int   # after a full listing
      .verify(file_id) -> bool             # re-hash one entry; a mismatch drops it
      .stats() -> dict                     # {"entries", "bytes", "max_bytes", "enabled"}
      .flush() -> None                     # write the index now (last-used times)
      .close() -> None

On disk, under `root` (per project; the caller derives it): `lock` (an flock held for the cache's
life), `index.db` (SQLite in WAL mode, one row per entry: file_id, size, sha256_hex, expires_at,
last_used, data file name; each change is one transaction, so a change costs O(1) however many
entries there are) and `data/` (one file per entry, with a name unique to that adoption, so an
unlink done after the lock was released can never hit a newer entry of the same File).
Directories are 0700, files 0600.

adopt() contract: True means the cache owns the bytes and nothing is left at `path`; False means
`path` was not touched and the caller discards it. The staged file is moved by `os.rename` (open
fds on it stay valid); if the staging dir is on another file system (EXDEV) the bytes are copied
to a temp file in `data/` and then `path` is unlinked, so a custom `--staging-dir` still gets
read-your-writes. The data file is fsynced before the index names it, and the index row is
committed before adopt() returns (synchronous=NORMAL: a daemon crash loses no row; a power loss
may lose the last rows, whose data files are then removed as strays), so an entry is never named
with bytes that are not whole on disk. A file bigger than max_bytes is not kept (False). The caller
adopts only bytes that will not be written again through an fd it still holds: the entry is what
was uploaded. With a `staging.StagedFile` the sequence is:

    if cache.adopt(record.id, staged.path, size=staged.size, sha256_hex=verified_hex,
                   expires_at=expiry_epoch_seconds):
        staged.disown()      # closes the fd, releases the staged bytes; the file now lives here
    else:
        staged.discard()

`hex_from_api()` turns a File's `sha256Hash` (base64 of the hex digest on the wire) into the hex
that adopt() and retain() take.

Opening an existing root: entries whose data file is missing or has another size are dropped, data
files the index does not name are removed, expired entries are dropped and the total is trimmed to
max_bytes. If another live process holds `root/lock`, this cache runs disabled (every call a miss
or a no-op, adopt False) and says so in one log line: two daemons never write one index.

Locks: one, `_lock`, guards `_entries` (the LRU order), `_bytes`, `_touched` and the index
connection; nothing else is taken under it. Under it only metadata work happens: opening a data
file, the index transaction (no fsync at commit in WAL mode with synchronous=NORMAL; an
occasional automatic checkpoint may sync) and nothing else; the rename or copy of adopt(), the
fsync of data, hashing and the unlink of removed data files run outside it, and a data file is
unlinked only after the index stopped naming it.

LRU: the use order lives in memory (an OrderedDict); `last_used` is written to the index with the
next change, on flush() and on close(), so after a crash the order is approximately the old one.
"""

from __future__ import annotations

import base64
import binascii
import collections
import errno
import fcntl
import hashlib
import logging
import os
import re
import secrets
import shutil
import sqlite3
import threading
import time
from dataclasses import dataclass

from gemfs import durable

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 10 * 1024**3
_INDEX = "index.db"
_SCHEMA = """CREATE TABLE IF NOT EXISTS entries (
    file_id TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    sha256_hex TEXT NOT NULL,
    expires_at REAL,
    last_used REAL NOT NULL,
    data TEXT NOT NULL
)"""
_DATA = "data"
_HEX64 = re.compile(r"[0-9a-f]{64}")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


_HASH_BLOCK = 8 << 20


def sha256_of_fd(fd: int, size: int | None = None) -> str:
    """The SHA-256 (hex) of the first `size` bytes of `fd`, or of all of it, read by pread."""
    digest = hashlib.sha256()
    offset = 0
    while size is None or offset < size:
        block = os.pread(fd, _HASH_BLOCK if size is None else min(_HASH_BLOCK, size - offset), offset)
        if not block:
            break
        digest.update(block)
        offset += len(block)
    return digest.hexdigest()


def hex_from_api(sha256_hash: str | None) -> str | None:
    """The lower-case hex digest from a File's `sha256Hash`, which the API sends as base64 of the
    hex string (and some clients as base64 of the 32 raw bytes); None if absent or unreadable."""
    if not sha256_hash:
        return None
    try:
        raw = base64.b64decode(sha256_hash, validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(raw) == 32:
        return raw.hex()
    text = raw.decode("ascii", "replace").lower()
    return text if _HEX64.fullmatch(text) else None


@dataclass
class _Entry:
    size: int
    sha256_hex: str
    expires_at: float | None
    last_used: float
    data: str  # file name under data/


class ContentCache:
    """Bytes of uploaded Files by File id, LRU-bounded by max_bytes, kept across remounts."""

    def __init__(self, root: str, max_bytes: int, *, clock=time.time) -> None:
        if max_bytes < 0:
            raise ValueError("cache size must be 0 (off) or more")
        self.root = root
        self.max_bytes = max_bytes
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: collections.OrderedDict[str, _Entry] = collections.OrderedDict()  # LRU first
        self._bytes = 0  # sum of sizes in _entries
        self._touched: set[str] = set()  # ids whose last_used the index has not recorded yet
        self._db: sqlite3.Connection | None = None
        self._lock_fd = -1
        self.enabled = False
        if max_bytes == 0:
            return
        self._data_dir = os.path.join(root, _DATA)
        for d in (root, self._data_dir):
            os.makedirs(d, mode=0o700, exist_ok=True)
            os.chmod(d, 0o700)
        fd = os.open(os.path.join(root, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            log.warning("content cache %s is in use by another gemfs process: running without a cache", root)
            return
        self._lock_fd = fd
        self.enabled = True
        self._load()

    # -- opening ---------------------------------------------------------------------------------

    def _connect(self) -> list[tuple]:
        """Open the index (recreating it if unreadable) and return its rows."""
        path = os.path.join(self.root, _INDEX)
        for attempt in (1, 2):
            os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))  # sqlite keeps the mode
            os.chmod(path, 0o600)
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                db.execute(_SCHEMA)
                rows = db.execute("SELECT file_id, size, sha256_hex, expires_at, last_used, data"
                                  " FROM entries ORDER BY last_used").fetchall()
            except sqlite3.DatabaseError as e:
                db.close()
                if attempt == 2:
                    raise
                log.warning("content cache index %s is unreadable (%s): starting empty", path, e)
                for suffix in ("", "-wal", "-shm"):
                    durable.unlink(path + suffix)
                continue
            self._db = db
            return rows
        raise AssertionError("unreachable")

    def _load(self) -> None:
        rows = self._connect()
        seen: set[str] = set()
        broken = []
        for file_id, size, sha256_hex, expires_at, last_used, data in rows:
            entry = _Entry(size, sha256_hex, expires_at, last_used, data)
            try:
                ok = (os.sep not in data and not data.startswith(".") and data not in seen
                      and os.stat(os.path.join(self._data_dir, data)).st_size == size)
            except FileNotFoundError:
                ok = False
            if not ok:
                broken.append(file_id)
                continue
            seen.add(data)
            self._entries[file_id] = entry
            self._bytes += size
        for name in os.listdir(self._data_dir):
            if name not in seen:
                durable.unlink(os.path.join(self._data_dir, name))
        with self._lock:
            self._write_locked(dels=broken)
        expired = self.expire()
        with self._lock:
            victims = self._evict_locked(0)
            self._write_locked(dels=[v[0] for v in victims])
        self._unlink_all(victims)
        if broken or expired or victims:
            log.info("content cache %s: dropped %d broken, %d expired, %d over size", self.root,
                     len(broken), expired, len(victims))

    # -- the entries -----------------------------------------------------------------------------

    def adopt(self, file_id: str, path: str, *, size: int, sha256_hex: str,
              expires_at: float | None) -> bool:
        """Take the staged file at `path` as the bytes of `file_id` (see the module docstring)."""
        if not self.enabled or size > self.max_bytes:
            return False
        name = f"{secrets.token_hex(6)}-{_UNSAFE.sub('_', file_id)[-80:]}"
        target = os.path.join(self._data_dir, name)
        try:
            st = os.stat(path)
        except OSError as e:
            log.warning("not caching %s: %s", file_id, e.strerror or e)
            return False
        if st.st_size != size:
            log.warning("not caching %s: %d bytes on disk, %d uploaded", file_id, st.st_size, size)
            return False
        copied = False
        try:
            os.rename(path, target)
        except OSError as e:
            if e.errno != errno.EXDEV:
                log.warning("not caching %s: %s", file_id, e.strerror or e)
                return False
            if not self._copy_in(path, target):
                return False
            copied = True
        try:
            fd = os.open(target, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fchmod(fd, 0o600)
                os.fsync(fd)  # whole on disk before the index may name it
            finally:
                os.close(fd)
        except OSError as e:
            log.warning("not caching %s: %s", file_id, e.strerror or e)
            if copied:
                durable.unlink(target)
            else:
                os.rename(target, path)  # give it back: False means `path` is as it was
            return False
        if copied:
            durable.unlink(path)
        entry = _Entry(size, sha256_hex.lower(), expires_at, self._clock(), name)
        with self._lock:
            old = self._entries.pop(file_id, None)
            self._entries[file_id] = entry
            self._bytes += size - (old.size if old else 0)
            victims = self._evict_locked(0)
            self._write_locked(puts=[(file_id, entry)], dels=[v[0] for v in victims])
        self._unlink_all(victims + ([(file_id, old)] if old else []))
        return True

    def _copy_in(self, path: str, target: str) -> bool:
        tmp = os.path.join(self._data_dir, f".tmp-{secrets.token_hex(6)}")
        try:
            src = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                dst = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                with os.fdopen(src, "rb", closefd=False) as fin, os.fdopen(dst, "wb") as fout:
                    shutil.copyfileobj(fin, fout, 1 << 20)
            finally:
                os.close(src)
            os.rename(tmp, target)
            return True
        except OSError as e:
            durable.unlink(tmp)
            log.warning("not caching %s: copy failed: %s", path, e.strerror or e)
            return False

    def open(self, file_id: str) -> int | None:
        """A read-only fd on the entry's bytes (the caller closes it), or None; marks it used.
        The fd stays readable if the entry is evicted or dropped meanwhile."""
        opened = self._open_entry(file_id)
        return None if opened is None else opened[0]

    def _open_entry(self, file_id: str) -> tuple[int, _Entry] | None:
        if not self.enabled:
            return None
        with self._lock:
            entry = self._entries.get(file_id)
            if entry is None:
                return None
            try:
                fd = os.open(os.path.join(self._data_dir, entry.data), os.O_RDONLY | os.O_CLOEXEC)
            except OSError as e:
                log.warning("cached bytes of %s are gone (%s): dropping the entry", file_id, e.strerror)
                self._remove_locked(file_id)
                self._write_locked(dels=[file_id])
                return None
            entry.last_used = self._clock()
            self._entries.move_to_end(file_id)
            self._touched.add(file_id)
            return fd, entry

    def contains(self, file_id: str) -> bool:
        with self._lock:
            return file_id in self._entries

    def size_of(self, file_id: str) -> int | None:
        with self._lock:
            entry = self._entries.get(file_id)
            return None if entry is None else entry.size

    def drop(self, file_id: str) -> bool:
        """Forget a File's bytes (it was deleted or replaced); True if there were any."""
        if not self.enabled:
            return False
        with self._lock:
            entry = self._remove_locked(file_id)
            if entry is None:
                return False
            self._write_locked(dels=[file_id])
        self._unlink_all([(file_id, entry)])
        return True

    def expire(self) -> int:
        """Drop entries whose File has expired by now; returns how many."""
        if not self.enabled:
            return 0
        now = self._clock()
        with self._lock:
            gone = [fid for fid, e in self._entries.items() if e.expires_at is not None and e.expires_at <= now]
            victims = [(fid, self._remove_locked(fid)) for fid in gone]
            self._write_locked(dels=gone)
        self._unlink_all(victims)
        return len(victims)

    def retain(self, live: dict[str, str | None]) -> int:
        """After a full listing (File id -> its sha256 as hex, or None if the listing has none):
        drop entries whose File is gone or whose bytes are not the File's. Returns how many."""
        if not self.enabled:
            return 0
        with self._lock:
            gone = []
            for fid, e in self._entries.items():
                if fid not in live:
                    gone.append(fid)
                elif live[fid] is not None and live[fid].lower() != e.sha256_hex:
                    log.warning("cached bytes of %s differ from the File's sha256Hash: dropped", fid)
                    gone.append(fid)
            victims = [(fid, self._remove_locked(fid)) for fid in gone]
            self._write_locked(dels=gone)
        self._unlink_all(victims)
        return len(victims)

    def verify(self, file_id: str) -> bool:
        """Re-hash an entry (outside the lock) against its recorded sha256; a mismatch drops it.
        False also if there is no entry."""
        opened = self._open_entry(file_id)
        if opened is None:
            return False
        fd, entry = opened
        try:
            got = sha256_of_fd(fd)
        except OSError:
            got = None
        finally:
            os.close(fd)
        if got == entry.sha256_hex:
            return True
        log.warning("cached bytes of %s do not match their sha256: dropped", file_id)
        with self._lock:
            victim = self._entries.get(file_id)
            if victim is entry:  # not re-adopted meanwhile
                self._remove_locked(file_id)
                self._write_locked(dels=[file_id])
            else:
                victim = None
        if victim is not None:
            self._unlink_all([(file_id, victim)])
        return False

    def stats(self) -> dict:
        with self._lock:
            return {"entries": len(self._entries), "bytes": self._bytes,
                    "max_bytes": self.max_bytes, "enabled": self.enabled}

    def flush(self) -> None:
        """Write the last-used times to the index now (they are otherwise written with the next
        change), so the LRU order survives a crash."""
        with self._lock:
            if self.enabled:
                self._write_locked()

    def close(self) -> None:
        with self._lock:
            if not self.enabled:
                return
            self._write_locked()
            self.enabled = False
            self._db.close()
            self._db = None
        os.close(self._lock_fd)
        self._lock_fd = -1

    # -- helpers ---------------------------------------------------------------------------------

    def _remove_locked(self, file_id: str) -> _Entry | None:
        entry = self._entries.pop(file_id, None)
        if entry is not None:
            self._bytes -= entry.size
            self._touched.discard(file_id)
        return entry

    def _evict_locked(self, room: int) -> list[tuple[str, _Entry]]:
        """Remove least-recently-used entries until `room` more bytes fit; returns them. The
        caller records the removal in the index."""
        victims = []
        while self._entries and self._bytes + room > self.max_bytes:
            fid = next(iter(self._entries))
            victims.append((fid, self._remove_locked(fid)))
            log.debug("content cache: evicted %s", fid)
        return victims

    def _unlink_all(self, victims) -> None:
        """Unlink the data files of removed entries (after the index no longer names them)."""
        for _, entry in victims:
            durable.unlink(os.path.join(self._data_dir, entry.data))

    def _write_locked(self, *, puts=(), dels=()) -> None:
        """Record changes and pending last-used times in the index, in one transaction. A failed
        write is logged and not raised: the in-memory entries stay right, and the worst a lost
        index write does is drop entries (or keep a stray file until the next open)."""
        if self._db is None:
            return
        touched = [(self._entries[fid].last_used, fid) for fid in self._touched if fid in self._entries]
        self._touched.clear()
        if not (puts or dels or touched):
            return
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("DELETE FROM entries WHERE file_id = ?", [(fid,) for fid in dels])
                self._db.executemany(
                    "INSERT OR REPLACE INTO entries (file_id, size, sha256_hex, expires_at, last_used, data)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    [(fid, e.size, e.sha256_hex, e.expires_at, e.last_used, e.data) for fid, e in puts])
                self._db.executemany("UPDATE entries SET last_used = ? WHERE file_id = ?", touched)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        except sqlite3.Error as e:
            log.warning("could not write the content cache index in %s: %s", self.root, e)
