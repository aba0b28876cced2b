"""The mount's view of the project: one `files.list` snapshot plus this mount's own uploads,
deletes and directories, shown as a tree of local names.

Pure data: no FUSE and no HTTP. The listing itself comes from an injected `fetch` callable and
time from an injected clock, so the naming rules, collisions, expiry and refresh are tested
without a server.

Naming rules (docs/SEMANTICS.md, "Names"):
- a display name is split on '/'; empty components are dropped; '.' and '..' become '%2E' and
  '%2E%2E'; control characters and lone surrogates become '%XX' (per UTF-8 byte); a component
  over 255 bytes is cut and given '~' + 8 hex digits of its SHA-1, so the same name always
  maps to the same local name;
- a File without a display name (or with one that has no component left) is `<id><ext>`, the
  extension from its MIME type;
- when several Files want the same path, the oldest (createTime, then id) keeps it and each
  other one is `<stem>~<id><ext>`; a File whose path is also a directory, or whose name is the
  sidecar name of a File beside it, gets the suffix too.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable

from gemfs import mime, sidecar
from gemfs.model import FileRecord

log = logging.getLogger(__name__)

NAME_MAX = 255

Path = tuple[str, ...]


@dataclass(frozen=True)
class FileNode:
    record: FileRecord


@dataclass(frozen=True)
class DirNode:
    path: Path


Node = FileNode | DirNode


def split_path(path: str) -> Path:
    """'/a/b' -> ('a', 'b'); '/' -> ()."""
    return tuple(part for part in path.split("/") if part)


def _needs_escape(ch: str) -> bool:
    # Control characters, and lone surrogates: JSON can spell "\ud800", which no file name
    # can hold (encoding it fails), and one such name must not break the whole tree.
    return ord(ch) < 0x20 or ord(ch) == 0x7F or 0xD800 <= ord(ch) <= 0xDFFF


def _escape(component: str) -> str:
    if component in (".", ".."):
        return "%2E" * len(component)
    if any(_needs_escape(ch) for ch in component):
        component = "".join(
            "".join(f"%{b:02X}" for b in ch.encode("utf-8", "surrogatepass"))
            if _needs_escape(ch)
            else ch
            for ch in component
        )
    return component


def _fit(stem: str, tail: str, *, original: str) -> str:
    """`stem + tail` cut to NAME_MAX bytes, marked with a hash of `original` when cut."""
    if len((stem + tail).encode("utf-8", "surrogateescape")) <= NAME_MAX:
        return stem + tail
    mark = "~" + hashlib.sha1(original.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    budget = NAME_MAX - len((mark + tail).encode("utf-8", "surrogateescape"))
    cut = stem.encode("utf-8", "surrogateescape")[: max(budget, 0)]
    return cut.decode("utf-8", "ignore") + mark + tail


def _component(raw: str, *, leaf: bool) -> str:
    escaped = _escape(raw)
    stem, ext = _split_ext(escaped) if leaf else (escaped, "")
    return _fit(stem, ext, original=raw)


def _split_ext(name: str) -> tuple[str, str]:
    stem, ext = os.path.splitext(name)
    # A long "extension" is part of the name, not a type.
    if len(ext) > 16 or not stem:
        return name, ""
    return stem, ext


def wanted_path(record: FileRecord) -> Path:
    """The local path a File asks for before collisions are settled."""
    parts = [p for p in (record.display_name or "").split("/") if p]
    if not parts:
        return (record.id + mime.extension_for(record.mime_type),)
    return tuple(_component(p, leaf=i == len(parts) - 1) for i, p in enumerate(parts))


def suffixed(name: str, file_id: str) -> str:
    """`song.mp3` -> `song~<id>.mp3`, still within NAME_MAX bytes."""
    stem, ext = _split_ext(name)
    return _fit(stem, f"~{file_id}{ext}", original=name)


class Tree:
    """Directory path -> {local name: Node}, built from a set of Files and local directories."""

    def __init__(self, records: Iterable[FileRecord], local_dirs: Iterable[Path]) -> None:
        self.dirs: dict[Path, dict[str, Node]] = {(): {}}
        self.paths: dict[str, Path] = {}  # file id -> its local path
        self.used = 0  # the sizes of all its Files (the quota check reads it on every write)
        self.local_dirs = set(local_dirs)
        wanted: dict[Path, list[FileRecord]] = {}
        for record in records:
            wanted.setdefault(wanted_path(record), []).append(record)
            self.used += record.size
        for dpath in self.local_dirs:
            self._add_dir(dpath)
        for path in wanted:
            self._add_dir(path[:-1])
        plain: dict[Path, list[FileRecord]] = {}
        for path, group in wanted.items():
            group.sort(key=lambda r: (r.create_time, r.id))
            parent, name = path[:-1], path[-1]
            first = 0 if (parent + (name,)) not in self.dirs else None
            for i, record in enumerate(group):
                if i == first:
                    plain.setdefault(parent, []).append(record)
                else:
                    self._add_file(parent, suffixed(name, record.id), record)
        for parent, records_here in plain.items():
            names = {wanted_path(r)[-1] for r in records_here}
            for record in records_here:
                name = wanted_path(record)[-1]
                owner = sidecar.split(name)
                if owner is not None and owner in names:
                    name = suffixed(name, record.id)
                self._add_file(parent, name, record)

    def _add_dir(self, path: Path) -> None:
        for i in range(1, len(path) + 1):
            sub = path[:i]
            if sub not in self.dirs:
                self.dirs[sub] = {}
                self.dirs[path[: i - 1]][path[i - 1]] = DirNode(sub)

    def _add_file(self, parent: Path, name: str, record: FileRecord) -> None:
        entries = self.dirs[parent]
        if name in entries:  # a suffixed name met a plain one: the id keeps them apart
            name = suffixed(name, record.id)
        entries[name] = FileNode(record)
        self.paths[record.id] = parent + (name,)

    def lookup(self, path: Path) -> Node | None:
        if path in self.dirs:
            return DirNode(path)
        entries = self.dirs.get(path[:-1])
        return entries.get(path[-1]) if entries else None

    def try_add(self, record: FileRecord) -> bool:
        """Add one more File in place, when that gives exactly the tree a rebuild would: its
        wanted name is free, no File stands where its directories go, and no sidecar name is
        involved either way. Otherwise (False) the tree is unchanged and must be rebuilt.

        A rebuild costs O(all Files); doing one per upload made `cp -r` of N files O(N^2)
        and serialised parallel copies on the catalog lock (bench/run.py, small_files).
        """
        if record.id in self.paths:
            return False
        path = wanted_path(record)
        parent, name = path[:-1], path[-1]
        if sidecar.split(name) is not None:
            return False
        for depth in range(len(parent)):
            entries = self.dirs.get(parent[:depth])
            if entries is None:
                break  # this directory is new, and so are the ones below it
            if isinstance(entries.get(parent[depth]), FileNode):
                return False  # that File would take a suffix
        entries = self.dirs.get(parent)
        if entries is not None and (name in entries or name + sidecar.SUFFIX in entries):
            return False
        self._add_dir(parent)
        self.dirs[parent][name] = FileNode(record)
        self.paths[record.id] = path
        self.used += record.size
        return True

    def try_remove(self, file_id: str) -> bool:
        """Take one File out in place, when that gives exactly the tree a rebuild would: no
        other name was suffixed because of it (a duplicate, a sidecar-like neighbour, or a File
        that wanted a directory this removal empties). The check is by name prefix, so it may
        say False (rebuild) when a rebuild was not needed, never the other way round.

        Like try_add: a rebuild per delete made `rm -r` of N Files O(N^2).
        """
        path = self.paths.get(file_id)
        if path is None or not _no_suffix_owed(self.dirs[path[:-1]], path[-1]):
            return False
        empties = []  # the directories this removal leaves empty, deepest first
        parent = path[:-1]
        while parent and parent not in self.local_dirs and self.dirs[parent].keys() == {path[len(parent)]}:
            empties.append(parent)
            parent = parent[:-1]
        for gone in empties:
            if not _no_suffix_owed(self.dirs[gone[:-1]], gone[-1]):
                return False
        node = self.dirs[path[:-1]].pop(path[-1])
        for gone in empties:
            del self.dirs[gone]
            del self.dirs[gone[:-1]][gone[-1]]
        del self.paths[file_id]
        self.used -= node.record.size
        return True


def _no_suffix_owed(entries: dict[str, Node], name: str) -> bool:
    """Whether no neighbour in `entries` can carry a suffix because `name` holds its place:
    suffixed names start with the stem and '~', and a sidecar-like neighbour with `name.meta`.
    Names near NAME_MAX are cut when suffixed, so for those the answer is always no."""
    if len(name.encode("utf-8", "surrogateescape")) > NAME_MAX // 2:
        return False
    stem = _split_ext(name)[0] + "~"
    side = name + ".meta"
    return not any(other != name and (other.startswith(stem) or other.startswith(side))
                   for other in entries)


class Catalog:
    """The snapshot, the overlay of this mount's own changes, and the tree derived from both."""

    def __init__(
        self,
        fetch: Callable[[], list[FileRecord]],
        *,
        ttl: float,
        clock: Callable[[], float] = time.time,
        first_wait: float = 120.0,
    ) -> None:
        self._fetch = fetch
        self.ttl = ttl
        self._clock = clock
        self._first_wait = first_wait
        self._lock = threading.Lock()
        self._remote: dict[str, FileRecord] = {}  # guarded by _lock: the last snapshot
        self._fetched_at: float | None = None  # guarded by _lock: when that fetch began
        self._added: dict[str, tuple[FileRecord, float]] = {}  # guarded by _lock
        self._deleted: dict[str, float] = {}  # guarded by _lock: id -> when deleted
        self._local_dirs: set[Path] = set()  # guarded by _lock
        self._tree: Tree | None = None  # guarded by _lock: derived, None when stale
        self._tree_until = float("inf")  # guarded by _lock: next expiry in the tree
        self._refreshing = False  # guarded by _lock
        self._next_try = 0.0  # guarded by _lock: no refresh before this after a failure
        self._last_error: Exception | None = None  # guarded by _lock
        self._first = threading.Event()  # set once a snapshot (or a first failure) is in

    # -- the snapshot ---------------------------------------------------------------------------

    def install(self, records: list[FileRecord], fetched_at: float) -> None:
        """Swap in a listing whose fetch began at `fetched_at`; settle the overlay against it."""
        remote = {r.id: r for r in records}
        with self._lock:
            self._remote = remote
            self._fetched_at = fetched_at
            self._last_error = None
            for file_id, (_, at) in list(self._added.items()):
                if file_id in remote or at < fetched_at:
                    del self._added[file_id]
            for file_id, at in list(self._deleted.items()):
                if file_id not in remote and at < fetched_at:
                    del self._deleted[file_id]
            self._tree = None
        self._first.set()

    def refresh_now(self) -> None:
        """Fetch a listing in this thread and install it; raises what the fetch raised."""
        started = self._clock()
        try:
            records = self._fetch()
        except Exception as e:
            with self._lock:
                self._last_error = e
                self._next_try = self._clock() + min(self.ttl, 5.0)
            self._first.set()
            raise
        self.install(records, started)

    def _background_refresh(self) -> None:
        try:
            self.refresh_now()
        except Exception as e:  # the old snapshot keeps answering; the error is logged once
            log.warning("listing failed, serving the previous snapshot: %s", e)
        finally:
            with self._lock:
                self._refreshing = False

    def _ensure_fresh(self) -> None:
        if not self._first.is_set():
            self._start_refresh(force=True)
            if not self._first.wait(self._first_wait):
                raise TimeoutError("no listing yet")
        with self._lock:
            if self._fetched_at is None and self._last_error is not None:
                if not self._refreshing and self._clock() >= self._next_try:
                    self._refreshing = True
                    threading.Thread(target=self._background_refresh, daemon=True).start()
                raise self._last_error
        self._start_refresh(force=False)

    def _start_refresh(self, *, force: bool) -> None:
        with self._lock:
            if self._refreshing:
                return
            now = self._clock()
            stale = self._fetched_at is None or now - self._fetched_at >= self.ttl
            if not (force or stale) or now < self._next_try:
                return
            self._refreshing = True
        threading.Thread(target=self._background_refresh, daemon=True, name="gemfs-list").start()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no refresh is running (tests and benchmarks)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._refreshing:
                    return True
            time.sleep(0.01)
        return False

    # -- this mount's own changes ---------------------------------------------------------------

    def add_uploaded(self, record: FileRecord) -> None:
        with self._lock:
            now = self._clock()
            self._added[record.id] = (record, now)
            self._deleted.pop(record.id, None)
            expires = record.expiration_time or float("inf")
            if (self._tree is not None and record.id not in self._remote and expires > now
                    and self._tree.try_add(record)):
                self._tree_until = min(self._tree_until, expires)
            else:
                self._tree = None

    def mark_deleted(self, file_id: str) -> None:
        with self._lock:
            self._deleted[file_id] = self._clock()
            self._added.pop(file_id, None)
            if self._tree is not None and not self._tree.try_remove(file_id):
                self._tree = None

    def add_dir(self, path: Path) -> None:
        with self._lock:
            self._local_dirs.add(path)
            self._tree = None

    def remove_dir(self, path: Path) -> None:
        with self._lock:
            self._local_dirs.discard(path)
            self._tree = None

    def is_local_dir(self, path: Path) -> bool:
        with self._lock:
            return path in self._local_dirs

    # -- reading --------------------------------------------------------------------------------

    def _current(self) -> Tree:
        self._ensure_fresh()
        with self._lock:
            now = self._clock()
            if self._tree is None or now >= self._tree_until:
                live = self._live(now)
                self._tree = Tree(live, self._local_dirs)
                expiries = [r.expiration_time for r in live if r.expiration_time]
                self._tree_until = min(expiries, default=float("inf"))
            return self._tree

    def _live(self, now: float) -> list[FileRecord]:
        files = dict(self._remote)
        files.update({fid: rec for fid, (rec, _) in self._added.items()})
        return [
            r
            for fid, r in files.items()
            if fid not in self._deleted and not (r.expiration_time and r.expiration_time <= now)
        ]

    def lookup(self, path: Path) -> Node | None:
        return self._current().lookup(path)

    def listdir(self, path: Path) -> dict[str, Node] | None:
        entries = self._current().dirs.get(path)
        return dict(entries) if entries is not None else None

    def path_of(self, file_id: str) -> Path | None:
        return self._current().paths.get(file_id)

    def used_bytes(self) -> int:
        with self._lock:
            now = self._clock()
            if self._tree is not None and now < self._tree_until:
                return self._tree.used
            return sum(r.size for r in self._live(now))

    def stats(self) -> dict:
        with self._lock:
            now = self._clock()
            live = self._live(now)
            return {
                "files": len(live),
                "used_bytes": sum(r.size for r in live),
                "listing_age": None if self._fetched_at is None else now - self._fetched_at,
                "last_error": str(self._last_error) if self._last_error else None,
            }
