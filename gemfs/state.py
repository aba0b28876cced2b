"""Small durable per-project state: the mtimes tools set on Files, and the journal of files held
locally at close (temp-named files waiting for their rename), so that a held file survives a
daemon crash and is finished by the next mount of the project.

Public API (all methods are thread-safe):

    Hold(row, path, display_name, replaces_ids: tuple[str, ...], mtime_ns, uploaded_id, created)
    StateStore(directory: str, *, clock=time.time)   # directory = <state-dir>/<project key>
      .set_mtime(file_id, mtime_ns) -> None
      .get_mtime(file_id) -> int | None
      .forget(file_id) -> None
      .retain(live_ids) -> int                        # after a full listing; returns rows dropped
      .held_dir -> str                                # this daemon's directory for held data
      .adopt_held(staged_path) -> str                 # rename the staged file into held_dir
      .hold(path, display_name, replaces_ids, mtime_ns) -> int   # the row id
      .update_hold(row, *, display_name=None, replaces_ids=None, mtime_ns=None,
                   uploaded_id=None, data_changed=False) -> None
      .release_hold(row, *, keep_file=False) -> None
      .holds() -> list[Hold]                          # this daemon's holds
      .recover() -> list[Hold]                        # take over the holds of dead daemons
      .close() -> None

On disk: `<directory>/state.db` (SQLite in WAL mode, 0600, as are its -wal and -shm files) and
`<directory>/held/<pid>-<random>/` (0700), one per daemon, holding an flock on its `lock` for
that daemon's life, like the staging directories. The staging sweep never looks here.

Durability. mtimes are written with `synchronous=NORMAL`: a daemon crash loses none (the WAL is
in the kernel), a power loss may lose the last ones, which costs only a re-upload by rsync. Every
write to the holds journal is committed with `synchronous=FULL`, and `hold()` first fsyncs the
held data file and its directory (the caller need not, but must not write the file again without
`update_hold(row, data_changed=True)`), so when `hold()` returns, the row and the bytes are on
disk. `release_hold()` deletes the row (durably) before it unlinks the file: a crash between the
two leaves only an unreferenced file, which the next recover() removes.

Holding a file at close:  p = store.adopt_held(staged.disown()); row = store.hold(p, name, ids,
mtime). Its rename to a final name: update_hold(row, display_name=...). Its upload: upload, then
update_hold(row, uploaded_id=record.id), retire `replaces_ids`, release_hold(row) (keep_file=True
after handing the file to the content cache). Its unlink: release_hold(row).

Recovery. `recover()`, called once at mount, takes over (re-owns) every hold whose daemon is gone
(its held directory's lock is free or missing), removes data files that no hold names and empty
directories of dead daemons, and drops holds whose data file is missing (logged: their bytes went
where release_hold's caller put them). A hold with `uploaded_id` set was uploaded: finish
retiring its `replaces_ids` and release it instead of uploading again. The holds of a daemon that
is still running (a second mount of the project) are never touched.

Locks: `_lock` guards the one sqlite3 connection (and with it every table); it is the only lock,
and fsync of data files happens outside it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import secrets
import shutil
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

from gemfs import durable

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS mtimes (
    file_id TEXT PRIMARY KEY,
    mtime_ns INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS holds (
    row INTEGER PRIMARY KEY AUTOINCREMENT,
    owner TEXT NOT NULL,
    path TEXT NOT NULL,
    display_name TEXT NOT NULL,
    replaces TEXT NOT NULL,
    mtime_ns INTEGER,
    uploaded_id TEXT,
    created REAL NOT NULL
);
"""
_LOCK = "lock"
_NEW = ".new-"


@dataclass(frozen=True)
class Hold:
    """One held file: its data at `path`, waiting to be uploaded as `display_name`."""

    row: int
    path: str
    display_name: str
    replaces_ids: tuple[str, ...]
    mtime_ns: int | None
    uploaded_id: str | None
    created: float


class StateStore:
    """The per-project state database and this daemon's held-files directory."""

    def __init__(self, directory: str, *, clock=time.time) -> None:
        self.directory = directory
        self._clock = clock
        self._lock = threading.Lock()
        os.makedirs(directory, mode=0o700, exist_ok=True)
        os.chmod(directory, 0o700)
        self._held_root = os.path.join(directory, "held")
        os.makedirs(self._held_root, mode=0o700, exist_ok=True)
        db = os.path.join(directory, "state.db")
        os.close(os.open(db, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))  # sqlite keeps the mode
        os.chmod(db, 0o600)
        self._db = sqlite3.connect(db, isolation_level=None, check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA busy_timeout=30000")
        self._db.execute("PRAGMA synchronous=FULL")
        self._sync = "FULL"
        self._db.executescript(_SCHEMA)  # each CREATE ... IF NOT EXISTS is atomic on its own
        self.instance, self._lock_fd = self._make_held_dir()
        self.held_dir = os.path.join(self._held_root, self.instance)

    def _make_held_dir(self) -> tuple[str, int]:
        """This daemon's held directory, created under a temporary name with its lock already
        taken and then renamed into place, so no other daemon ever sees it unlocked."""
        for _ in range(10):
            name = f"{os.getpid()}-{secrets.token_hex(4)}"
            tmp = os.path.join(self._held_root, _NEW + name)
            fd = -1
            try:
                os.mkdir(tmp, 0o700)
                fd = os.open(os.path.join(tmp, _LOCK), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                os.rename(tmp, os.path.join(self._held_root, name))
                return name, fd
            except OSError:
                # A recover() of another daemon swept the half-made directory: try another name.
                if fd >= 0:
                    os.close(fd)
                shutil.rmtree(tmp, ignore_errors=True)
        raise OSError(errno.EAGAIN, f"cannot create a held-files directory in {self._held_root}")

    @contextmanager
    def _txn(self, *, full: bool):
        """One write transaction, synced to disk at commit if `full`; the caller holds _lock
        (or is __init__)."""
        sync = "FULL" if full else "NORMAL"
        if self._sync != sync:
            self._db.execute(f"PRAGMA synchronous={sync}")
            self._sync = sync
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # -- mtimes ----------------------------------------------------------------------------------

    def set_mtime(self, file_id: str, mtime_ns: int) -> None:
        with self._lock, self._txn(full=False) as db:
            db.execute("INSERT OR REPLACE INTO mtimes (file_id, mtime_ns) VALUES (?, ?)",
                       (file_id, int(mtime_ns)))

    def get_mtime(self, file_id: str) -> int | None:
        with self._lock:
            row = self._db.execute("SELECT mtime_ns FROM mtimes WHERE file_id = ?", (file_id,)).fetchone()
        return None if row is None else row[0]

    def forget(self, file_id: str) -> None:
        with self._lock, self._txn(full=False) as db:
            db.execute("DELETE FROM mtimes WHERE file_id = ?", (file_id,))

    def retain(self, live_ids) -> int:
        """Drop the mtimes of Files not in `live_ids` (after a full listing); returns how many."""
        live = set(live_ids)
        with self._lock, self._txn(full=False) as db:
            gone = [(fid,) for (fid,) in db.execute("SELECT file_id FROM mtimes") if fid not in live]
            db.executemany("DELETE FROM mtimes WHERE file_id = ?", gone)
        return len(gone)

    # -- held files ------------------------------------------------------------------------------

    def adopt_held(self, staged_path: str) -> str:
        """Move a staged file into this daemon's held directory (by rename; across file systems
        by a copy that is fsynced before the original is unlinked). Returns its new path."""
        if os.path.dirname(os.path.abspath(staged_path)) == self.held_dir:
            return staged_path
        target = os.path.join(self.held_dir, secrets.token_hex(8) + ".held")
        try:
            os.rename(staged_path, target)
        except OSError as e:
            if e.errno != errno.EXDEV:
                raise
            tmp = target + ".tmp"
            try:
                with open(staged_path, "rb") as fin:
                    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                    with os.fdopen(fd, "wb") as fout:
                        shutil.copyfileobj(fin, fout, 1 << 20)
                        fout.flush()
                        os.fsync(fout.fileno())
                os.rename(tmp, target)
            except BaseException:
                durable.unlink(tmp)
                raise
            durable.fsync_dir(self.held_dir)
            os.unlink(staged_path)
        return target

    def hold(self, path: str, display_name: str, replaces_ids, mtime_ns: int | None) -> int:
        """Record a held file; when this returns, its bytes and its row are on disk."""
        durable.fsync_file(path)
        durable.fsync_dir(os.path.dirname(os.path.abspath(path)))
        with self._lock, self._txn(full=True) as db:
            cur = db.execute(
                "INSERT INTO holds (owner, path, display_name, replaces, mtime_ns, created)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (self.instance, path, display_name, json.dumps(list(replaces_ids)), mtime_ns,
                 self._clock()))
            return cur.lastrowid

    def update_hold(self, row: int, *, display_name: str | None = None, replaces_ids=None,
                    mtime_ns: int | None = None, uploaded_id: str | None = None,
                    data_changed: bool = False) -> None:
        """Change what a hold will become; `data_changed` fsyncs its bytes first."""
        fields, values = [], []
        for column, value in (("display_name", display_name), ("mtime_ns", mtime_ns),
                              ("uploaded_id", uploaded_id)):
            if value is not None:
                fields.append(f"{column} = ?")
                values.append(value)
        if replaces_ids is not None:
            fields.append("replaces = ?")
            values.append(json.dumps(list(replaces_ids)))
        if data_changed:
            with self._lock:
                found = self._db.execute("SELECT path FROM holds WHERE row = ?", (row,)).fetchone()
            if found is None:
                raise KeyError(row)
            durable.fsync_file(found[0])
        if not fields:
            return
        with self._lock, self._txn(full=True) as db:
            cur = db.execute(f"UPDATE holds SET {', '.join(fields)} WHERE row = ?", (*values, row))
            if cur.rowcount != 1:
                raise KeyError(row)

    def release_hold(self, row: int, *, keep_file: bool = False) -> None:
        """The hold is done with (uploaded, or its file unlinked): delete the row durably, then
        the data file unless `keep_file` (the caller has moved it, e.g. into the content cache)."""
        with self._lock, self._txn(full=True) as db:
            found = db.execute("SELECT path FROM holds WHERE row = ?", (row,)).fetchone()
            if found is None:
                raise KeyError(row)
            db.execute("DELETE FROM holds WHERE row = ?", (row,))
        if not keep_file:
            durable.unlink(found[0])

    def holds(self) -> list[Hold]:
        """This daemon's holds, oldest first (after recover(), the ones it took over too)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT row, path, display_name, replaces, mtime_ns, uploaded_id, created"
                " FROM holds WHERE owner = ? ORDER BY row", (self.instance,)).fetchall()
        return [_hold(r) for r in rows]

    def recover(self) -> list[Hold]:
        """Take over the holds of daemons that are gone and clean up after them; returns the holds
        taken over whose data is present (the caller uploads or releases each)."""
        with self._lock, self._txn(full=True) as db:
            # Under the write transaction no daemon can add a hold, so "dead" cannot go stale.
            owners = [o for (o,) in db.execute("SELECT DISTINCT owner FROM holds WHERE owner != ?",
                                               (self.instance,))]
            dead = [o for o in owners if not self._alive(o)]
            taken = []
            for owner in dead:
                taken += db.execute(
                    "SELECT row, path, display_name, replaces, mtime_ns, uploaded_id, created"
                    " FROM holds WHERE owner = ? ORDER BY row", (owner,)).fetchall()
                db.execute("UPDATE holds SET owner = ? WHERE owner = ?", (self.instance, owner))
            missing = [r for r in taken if not os.path.exists(r[1])]
            db.executemany("DELETE FROM holds WHERE row = ?", [(r[0],) for r in missing])
        for r in missing:
            log.warning("held file for %r is gone; dropping its journal entry", r[2])
        self._sweep()
        recovered = [_hold(r) for r in taken if r not in missing]
        if recovered:
            log.info("took over %d held files of a gemfs process that is gone", len(recovered))
        return sorted(recovered, key=lambda h: h.row)

    def _alive(self, owner: str) -> bool:
        """Whether the daemon owning `owner`'s held directory still holds its lock."""
        if os.sep in owner or owner in ("", ".", ".."):
            return False
        try:
            fd = os.open(os.path.join(self._held_root, owner, _LOCK), os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return True
            raise
        finally:
            os.close(fd)
        return False

    def _sweep(self) -> None:
        """Remove the data files no hold names from the directories of dead daemons, and those
        directories once empty."""
        with self._lock:
            named = {p for (p,) in self._db.execute("SELECT path FROM holds")}
        for name in os.listdir(self._held_root):
            d = os.path.join(self._held_root, name)
            if name == self.instance or not os.path.isdir(d):
                continue
            try:
                fd = os.open(os.path.join(d, _LOCK), os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                fd = -1  # dead before it took its lock, or a half-made directory: no data
            except OSError:
                continue
            try:
                if fd >= 0:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except OSError:
                        continue  # alive
                kept = 0
                for entry in os.listdir(d):
                    path = os.path.join(d, entry)
                    if entry == _LOCK:
                        continue
                    if path in named:
                        kept += 1
                    else:
                        log.info("removing unjournalled held file %s", path)
                        durable.unlink(path)
                if not kept:
                    shutil.rmtree(d, ignore_errors=True)
            finally:
                if fd >= 0:
                    os.close(fd)

    def close(self) -> None:
        """Close the database and give up this daemon's held directory; if holds remain in it,
        the next recover() takes them over."""
        with self._lock:
            if self._db is None:
                return
            remaining = self._db.execute("SELECT COUNT(*) FROM holds WHERE owner = ?",
                                         (self.instance,)).fetchone()[0]
            self._db.close()
            self._db = None
        if not remaining and len(os.listdir(self.held_dir)) == 1:
            shutil.rmtree(self.held_dir, ignore_errors=True)
        os.close(self._lock_fd)


def _hold(r) -> Hold:
    return Hold(row=r[0], path=r[1], display_name=r[2], replaces_ids=tuple(json.loads(r[3])),
                mtime_ns=r[4], uploaded_id=r[5], created=r[6])
