"""The mount's view of the project: one `files.list` snapshot plus this mount's own uploads,
deletes and directories, shown as a tree of local names.

Pure data: no FUSE and no HTTP. The listing itself comes from an injected `fetch` callable and
time from an injected clock, so the naming rules, collisions, expiry and refresh are tested
without a server.

Naming rules (docs/SEMANTICS.md, "Names"):
- a display name is split on '/'; empty components are dropped; each component is escaped
  (escape_component) only where a Linux name cannot hold it: NUL, lone surrogates, the whole
  components '.' and '..', and a '%' that would otherwise read as one of those escapes. The
  mapping is exact both ways: a name created through the mount is uploaded as its decode
  (display_name) and shown again as the very name it was created under;
- a component over 255 bytes (only from other clients: the mount refuses to create one) is cut
  and given '~' + 8 hex digits of its SHA-1, so the same name always maps to the same local name;
- a File without a display name (or with one that has no component left) is `<id><ext>`, the
  extension from its MIME type;
- when several Files want the same path, the oldest (createTime, then id) keeps it and each
  other one is `<stem>~<id><ext>`; a File whose path is also a directory, or whose name is the
  sidecar name of a File beside it, gets the suffix too;
- a folder's time is the newest updateTime in it; a folder emptied by this mount's deletes
  stays, as a local directory, until it is rmdir'd.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

from gemfs import mime, sidecar
from gemfs.errors import GemfsError
from gemfs.model import FileRecord

log = logging.getLogger(__name__)

NAME_MAX = 255  # bytes in one local name (statfs says so)
DISPLAY_NAME_MAX = 512  # characters in a display name (reference §4; the server refuses more)

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


# Escapes (docs/SEMANTICS.md, "Names"). Only what a Linux name cannot hold is escaped: NUL, lone
# surrogates (JSON can spell "\ud800", no file name can hold it) and the whole components '.' and
# '..'. A '%' is escaped to '%25' exactly when, left as it is, decode would read it as the start
# of an escape; so the mapping is exact both ways and ordinary names with '%' stay as they are.
_CORE = re.compile(r"%(?:25)*(?:00|ED%[AB][0-9A-F]%[89AB][0-9A-F])")  # at any position
_WHOLE = re.compile(r"%(?:25)*2E(?:%2E)?")  # only as a whole component (fullmatch)
_SPECIAL = re.compile("[%\x00\ud800-\udfff]")  # a component without these is its own name


def escape_component(display: str) -> str:
    """The local name of one display-name component (no '/', not empty); the inverse of
    `decode_component`. Built right to left: whether a '%' needs escaping depends on what
    follows it in the output."""
    if display in (".", ".."):
        return "%2E" * len(display)
    if not _SPECIAL.search(display):
        return display  # nearly every name: no work per character
    tail = ""
    for i in range(len(display) - 1, -1, -1):
        ch = display[i]
        if ch == "\x00":
            piece = "%00"
        elif "\ud800" <= ch <= "\udfff":
            piece = "".join(f"%{b:02X}" for b in ch.encode("utf-8", "surrogatepass"))
        elif ch == "%":
            bare = "%" + tail
            starts = _CORE.match(bare) or (i == 0 and _WHOLE.fullmatch(bare))
            piece = "%25" if starts else "%"
        else:
            piece = ch
        tail = piece + tail
    return tail


def decode_component(local: str) -> str:
    """The display-name component a local name stands for: escape_component's inverse."""
    if local == "%2E":
        return "."
    if local == "%2E%2E":
        return ".."
    if "%" not in local:
        return local
    out = []
    i = 0
    while i < len(local):
        if local[i] == "%" and (_CORE.match(local, i) or (i == 0 and _WHOLE.fullmatch(local))):
            if local.startswith("%25", i):
                out.append("%")
                i += 3
            elif local.startswith("%00", i):
                out.append("\x00")
                i += 3
            else:
                hexes = local[i + 1 : i + 3] + local[i + 4 : i + 6] + local[i + 7 : i + 9]
                out.append(bytes.fromhex(hexes).decode("utf-8", "surrogatepass"))
                i += 9
        else:
            out.append(local[i])
            i += 1
    return "".join(out)


def display_name(parts: Path) -> str:
    """The display name a local path stands for: each component decoded, joined by '/'."""
    return "/".join(decode_component(p) for p in parts)


def display_name_for(parts: Path, *, directory: bool = False) -> str:
    """The display name a path about to be created through the mount uploads as.

    Refused (GemfsError) when no display name can stand for it: a component over NAME_MAX
    bytes (ENAMETOOLONG: FUSE lets up to 1024 through, and the tree would show a cut name the
    file could then not be reached by), a component standing for a lone surrogate (EINVAL: the
    API refuses it), or a display name over DISPLAY_NAME_MAX characters (ENAMETOOLONG; for a
    directory, with room left for '/' and one character of a file inside).
    """
    for part in parts:
        if len(part.encode("utf-8", "surrogatepass")) > NAME_MAX:
            raise GemfsError(errno.ENAMETOOLONG, f"a name is at most {NAME_MAX} bytes")
    display = display_name(parts)
    if any("\ud800" <= ch <= "\udfff" for ch in display):
        raise GemfsError(errno.EINVAL, "that name stands for a lone surrogate, which no display "
                                       "name can hold")
    limit = DISPLAY_NAME_MAX - (2 if directory else 0)
    if len(display) > limit:
        raise GemfsError(errno.ENAMETOOLONG,
                         f"a path in the mount is at most {DISPLAY_NAME_MAX} characters")
    return display


def _fit(stem: str, tail: str, *, original: str) -> str:
    """`stem + tail` cut to NAME_MAX bytes, marked with a hash of `original` when cut."""
    if len((stem + tail).encode("utf-8", "surrogateescape")) <= NAME_MAX:
        return stem + tail
    mark = "~" + hashlib.sha1(original.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    budget = NAME_MAX - len((mark + tail).encode("utf-8", "surrogateescape"))
    cut = stem.encode("utf-8", "surrogateescape")[: max(budget, 0)]
    return cut.decode("utf-8", "ignore") + mark + tail


def _component(raw: str, *, leaf: bool) -> str:
    escaped = escape_component(raw)
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
    """Directory path -> {local name: Node}, built from a set of Files and local directories
    (path -> the time it was made or emptied here; a plain iterable of paths means time 0).

    Not thread-safe: the Catalog reads and edits its tree only under its lock."""

    def __init__(self, records: Iterable[FileRecord],
                 local_dirs: Mapping[Path, float] | Iterable[Path],
                 superseded: frozenset[str] = frozenset()) -> None:
        """`superseded`: Files this mount replaced but could not delete; a name they share
        goes to the File that replaced them, not to the oldest."""
        self.dirs: dict[Path, dict[str, Node]] = {(): {}}
        self.paths: dict[str, Path] = {}  # file id -> its local path
        self.used = 0  # the sizes of all its Files (the quota check reads it on every write)
        self.local_dirs: dict[Path, float] = (
            dict(local_dirs) if isinstance(local_dirs, Mapping) else dict.fromkeys(local_dirs, 0.0))
        # directory -> the newest updateTime (or local directory time) in it, recursively; a
        # directory missing here is worked out on demand (dir_mtime) from its entries.
        self._mtime: dict[Path, float] = {}
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
            group.sort(key=lambda r: (r.id in superseded, r.create_time, r.id))
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
        # Every directory's time, at once: cheaper here than one walk per stat later.
        times = [(d, t) for d, t in self.local_dirs.items()]
        times += [(path[:-1], r.update_time) for path, group in wanted.items() for r in group]
        for dpath, t in times:
            for i in range(len(dpath) + 1):
                sub = dpath[:i]
                self._mtime[sub] = max(self._mtime.get(sub, 0.0), t)

    def dir_mtime(self, dpath: Path) -> float:
        """The newest updateTime of any File under `dpath` (or its local directories' times);
        0 when there is none."""
        t = self._mtime.get(dpath)
        if t is None:
            t = self.local_dirs.get(dpath, 0.0)
            for node in self.dirs[dpath].values():
                t = max(t, node.record.update_time if isinstance(node, FileNode)
                        else self.dir_mtime(node.path))
            self._mtime[dpath] = t
        return t

    def _forget_mtime(self, dpath: Path, t: float) -> None:
        """Something as new as `t` left `dpath`: the directories whose time it may have set are
        worked out again on demand."""
        for i in range(len(dpath) + 1):
            sub = dpath[:i]
            if self._mtime.get(sub, 0.0) <= t:
                self._mtime.pop(sub, None)

    def set_local_dir(self, dpath: Path, t: float) -> bool:
        """Keep an existing directory as a local one from time `t` on, in place (what a rebuild
        with it among the local directories gives). False: it is not a directory here."""
        if dpath not in self.dirs:
            return False
        self.local_dirs[dpath] = max(self.local_dirs.get(dpath, 0.0), t)
        for i in range(len(dpath) + 1):
            sub = dpath[:i]
            if sub in self._mtime:
                self._mtime[sub] = max(self._mtime[sub], t)
        return True

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
        if not entries:
            return None
        node = entries.get(path[-1])
        return node if node is not None else self._by_old_suffix(path)

    def claimant(self, path: Path) -> FileRecord | None:
        """The File whose display name asks for exactly `path`, even when it is shown under a
        suffixed name (the oldest, if several): what a new file created at `path` replaces."""
        entries = self.dirs.get(path[:-1], {})
        found = [n.record for n in entries.values()
                 if isinstance(n, FileNode) and wanted_path(n.record) == path]
        return min(found, key=lambda r: (r.create_time, r.id), default=None)

    def _by_old_suffix(self, path: Path) -> FileNode | None:
        """A File by the suffixed name `<stem>~<id><ext>` it was shown under, after the
        collision that suffixed it went away (its plain name came free): `rm -rf` lists a
        directory, deletes a folder, then the File that shared the folder's name, by the name
        the listing gave. Only that exact name of that File, in its own directory, resolves."""
        name = path[-1]
        cut = name.rfind("~")
        if cut < 0:
            return None
        file_id = name[cut + 1 :].split(".", 1)[0]
        where = self.paths.get(file_id)
        if where is None or where[:-1] != path[:-1]:
            return None
        node = self.dirs[where[:-1]][where[-1]]
        if suffixed(wanted_path(node.record)[-1], file_id) != name:
            return None
        return node

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
        for i in range(len(parent) + 1):
            if parent[:i] in self._mtime:
                self._mtime[parent[:i]] = max(self._mtime[parent[:i]], record.update_time)
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
            self._mtime.pop(gone, None)
        del self.paths[file_id]
        self.used -= node.record.size
        self._forget_mtime(path[:-1], node.record.update_time)
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
    """The snapshot, the overlay of this mount's own changes, and the tree derived from both.

    Lock (`_lock`, a leaf: nothing else is taken under it, no network call is made under it):
    guards every field below and the tree itself. A reader never sees a tree change under it:
    it reads the tree (lookup, a copy of a directory's entries) only under the lock, and the
    in-place edits (Tree.try_add/try_remove/set_local_dir) also run only under it. A full
    rebuild, O(all Files), runs outside the lock and is swapped in only when nothing changed
    while it was built (`_gen`); meanwhile readers keep being answered from the current tree.
    `_build_lock` (taken before `_lock`, never under it) lets one thread at a time rebuild, so
    the readers that all find the tree stale after a listing wait for one build, not make one
    each.
    """

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
        self._build_lock = threading.Lock()  # one rebuild at a time; taken before _lock
        self._remote: dict[str, FileRecord] = {}  # guarded by _lock: the last snapshot
        self._fetched_at: float | None = None  # guarded by _lock: when that fetch began
        self._added: dict[str, tuple[FileRecord, float]] = {}  # guarded by _lock
        self._deleted: dict[str, float] = {}  # guarded by _lock: id -> when deleted
        # guarded by _lock: directories made here, or emptied by this mount's deletes (kept
        # until rmdir, so `rm -r` can finish), -> when that happened
        self._local_dirs: dict[Path, float] = {}
        self._tree: Tree | None = None  # guarded by _lock: derived, None when stale
        self._tree_until = float("inf")  # guarded by _lock: next expiry in the tree
        self._gen = 0  # guarded by _lock: bumped by every change to what the tree derives from
        self._superseded: set[str] = set()  # guarded by _lock: see mark_superseded
        self._refreshing = False  # guarded by _lock
        self._next_try = 0.0  # guarded by _lock: no refresh before this after a failure
        self._last_error: Exception | None = None  # guarded by _lock
        self._first = threading.Event()  # set once a snapshot (or a first failure) is in

    # -- the snapshot ---------------------------------------------------------------------------

    def install(self, records: list[FileRecord], fetched_at: float) -> None:
        """Swap in a listing whose fetch began at `fetched_at`; settle the overlay against it.
        A listing identical to the last one, settling nothing, keeps the tree as it is."""
        remote = {r.id: r for r in records}
        with self._lock:
            same = (self._fetched_at is not None and len(remote) == len(self._remote)
                    and all(self._remote.get(i) == r and self._remote[i].api == r.api
                            for i, r in remote.items()))
            self._remote = remote
            self._fetched_at = fetched_at
            self._last_error = None
            for file_id, (_, at) in list(self._added.items()):
                if file_id in remote or at < fetched_at:
                    del self._added[file_id]
                    same = False
            for file_id, at in list(self._deleted.items()):
                if file_id not in remote and at < fetched_at:
                    del self._deleted[file_id]  # gone from the listing too: nothing changes
            if not same:
                self._tree = None
                self._gen += 1
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
            self._gen += 1
            self._added[record.id] = (record, now)
            self._deleted.pop(record.id, None)
            expires = record.expiration_time or float("inf")
            if (self._tree is not None and record.id not in self._remote and expires > now
                    and self._tree.try_add(record)):
                self._tree_until = min(self._tree_until, expires)
            else:
                self._tree = None

    def mark_deleted(self, file_id: str) -> None:
        """This mount deleted a File. A folder left empty by it stays, as a local directory,
        until it is rmdir'd: `rm -r` deletes the Files, then removes the folder."""
        with self._lock:
            now = self._clock()
            self._gen += 1
            parent = self._parent_of(file_id, now)
            if parent and not self._holds_other(parent, now, file_id=file_id):
                self._keep_dir(parent, now)
            self._deleted[file_id] = now
            self._added.pop(file_id, None)
            if self._tree is not None and not self._tree.try_remove(file_id):
                self._tree = None

    def mark_superseded(self, file_id: str) -> None:
        """A File this mount replaced (an overwrite) but could not delete: it stays listed, under
        `NAME~id`, and the name shows the File that replaced it."""
        with self._lock:
            self._gen += 1
            self._superseded.add(file_id)
            self._tree = None

    def add_dir(self, path: Path) -> None:
        with self._lock:
            self._gen += 1
            self._local_dirs[path] = self._clock()
            self._tree = None

    def remove_dir(self, path: Path) -> None:
        """rmdir of an empty directory; a folder it leaves empty stays, as mark_deleted says."""
        with self._lock:
            now = self._clock()
            self._gen += 1
            parent = path[:-1]
            if parent and not self._holds_other(parent, now, dir_path=path):
                self._local_dirs[parent] = now
            self._local_dirs.pop(path, None)
            self._tree = None

    def is_local_dir(self, path: Path) -> bool:
        with self._lock:
            return path in self._local_dirs

    def local_dirs(self) -> dict[Path, float]:
        with self._lock:
            return dict(self._local_dirs)

    def _keep_dir(self, path: Path, now: float) -> None:  # under _lock
        self._local_dirs[path] = now
        if self._tree is not None and not self._tree.set_local_dir(path, now):
            self._tree = None

    def _fresh_tree(self, now: float) -> Tree | None:  # under _lock
        return self._tree if self._tree is not None and now < self._tree_until else None

    def _parent_of(self, file_id: str, now: float) -> Path | None:  # under _lock
        tree = self._fresh_tree(now)
        if tree is not None:
            path = tree.paths.get(file_id)
            return path[:-1] if path else None
        record = self._added[file_id][0] if file_id in self._added else self._remote.get(file_id)
        return wanted_path(record)[:-1] if record else None  # folders never take a suffix

    def _holds_other(self, parent: Path, now: float, *, file_id: str | None = None,
                     dir_path: Path | None = None) -> bool:  # under _lock
        """Whether directory `parent` holds anything besides File `file_id` / folder
        `dir_path`. From the tree when there is one; else (rare: right after a listing) by a
        scan of the Files, not a rebuild under the lock."""
        tree = self._fresh_tree(now)
        if tree is not None:
            entries = tree.dirs.get(parent, {})
            mine = tree.paths.get(file_id) if file_id else dir_path
            return any(parent + (name,) != mine for name in entries)
        n = len(parent)
        if any(d != dir_path and len(d) > n and d[:n] == parent for d in self._local_dirs):
            return True
        for r in self._live(now):
            if r.id != file_id:
                wanted = wanted_path(r)
                if len(wanted) > n and wanted[:n] == parent:
                    return True
        return False

    # -- reading --------------------------------------------------------------------------------

    def _read(self, read: Callable[[Tree], object]):
        """`read(tree)` under the lock, on a tree no older than this call."""
        self._ensure_fresh()
        with self._lock:
            now = self._clock()
            tree = self._fresh_tree(now)
            if tree is not None:
                return read(tree)
        with self._build_lock:
            with self._lock:  # another thread may have built it while this one waited
                now = self._clock()
                tree = self._fresh_tree(now)
                if tree is not None:
                    return read(tree)
                gen, live, local = self._gen, self._live(now), dict(self._local_dirs)
                superseded = frozenset(self._superseded)
            tree = Tree(live, local, superseded)  # O(all Files): outside _lock, readers of a tree go on
            until = min((r.expiration_time for r in live if r.expiration_time),
                        default=float("inf"))
            with self._lock:
                if self._gen == gen and self._fresh_tree(self._clock()) is None:
                    self._tree, self._tree_until = tree, until
                # Otherwise something changed while it was built: this tree still answers
                # this call (the state when the call began), and the next call builds anew.
                return read(tree)

    def _live(self, now: float) -> list[FileRecord]:
        files = dict(self._remote)
        files.update({fid: rec for fid, (rec, _) in self._added.items()})
        return [
            r
            for fid, r in files.items()
            if fid not in self._deleted and not (r.expiration_time and r.expiration_time <= now)
        ]

    def lookup(self, path: Path) -> Node | None:
        return self._read(lambda tree: tree.lookup(path))

    def listdir(self, path: Path) -> dict[str, Node] | None:
        return self._read(lambda tree: dict(tree.dirs[path]) if path in tree.dirs else None)

    def path_of(self, file_id: str) -> Path | None:
        return self._read(lambda tree: tree.paths.get(file_id))

    def claimant(self, path: Path) -> FileRecord | None:
        return self._read(lambda tree: tree.claimant(path))

    def dir_mtime(self, path: Path) -> float:
        """The newest updateTime under folder `path`, recursively (or when it was made or
        emptied here, if that is newer); 0 when it holds nothing and is not local."""
        return self._read(lambda tree: tree.dir_mtime(path) if path in tree.dirs else 0.0)

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
