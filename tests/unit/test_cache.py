"""The content cache: adoption by rename, LRU bound, expiry, listing reconciliation, persistence
across reopen and crash, the single-owner lock, permissions, and thread safety."""

import base64
import errno
import hashlib
import sqlite3
import os
import stat
import subprocess
import sys
import threading

import pytest

from gemfs import cache as cache_mod
from gemfs.cache import DEFAULT_MAX_BYTES, ContentCache, hex_from_api
from gemfs.staging import StagingArea


class Clock:
    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t

    def tick(self, dt=1.0):
        self.t += dt


def staged(tmp_path, name, data):
    d = tmp_path / "staging"
    d.mkdir(exist_ok=True)
    p = d / name
    p.write_bytes(data)
    return str(p)


def sha(data):
    return hashlib.sha256(data).hexdigest()


def put(c, tmp_path, file_id, data, expires_at=None):
    path = staged(tmp_path, file_id.replace("/", "_") + ".part", data)
    ok = c.adopt(file_id, path, size=len(data), sha256_hex=sha(data), expires_at=expires_at)
    return ok, path


def read_all(c, file_id):
    fd = c.open(file_id)
    if fd is None:
        return None
    try:
        return os.pread(fd, 1 << 20, 0)
    finally:
        os.close(fd)


def index_rows(root):
    db = sqlite3.connect(str(root / "index.db"))
    try:
        return {fid: data for fid, data in db.execute("SELECT file_id, data FROM entries")}
    finally:
        db.close()


def new_cache(tmp_path, max_bytes=1000, clock=None):
    return ContentCache(str(tmp_path / "cache" / "proj"), max_bytes, clock=clock or Clock())


def test_default_size_is_ten_gib():
    assert DEFAULT_MAX_BYTES == 10 * 1024**3


def test_adopt_moves_the_staged_file_and_open_reads_it(tmp_path):
    c = new_cache(tmp_path)
    ok, path = put(c, tmp_path, "files/a1", b"hello world")
    assert ok and not os.path.exists(path)  # renamed, not copied
    assert c.contains("files/a1") and c.size_of("files/a1") == 11
    assert read_all(c, "files/a1") == b"hello world"
    fd = c.open("files/a1")
    flags = __import__("fcntl").fcntl(fd, __import__("fcntl").F_GETFD)
    assert flags & __import__("fcntl").FD_CLOEXEC
    with pytest.raises(OSError) as info:
        os.write(fd, b"x")
    assert info.value.errno == errno.EBADF  # read-only
    os.close(fd)
    assert c.stats() == {"entries": 1, "bytes": 11, "max_bytes": 1000, "enabled": True}
    assert c.open("files/none") is None and c.size_of("files/none") is None
    assert not c.contains("files/none")


def test_an_fd_the_caller_still_holds_stays_valid_after_adoption(tmp_path):
    c = new_cache(tmp_path)
    path = staged(tmp_path, "x.part", b"abc")
    held = os.open(path, os.O_RDWR)
    assert c.adopt("files/x", path, size=3, sha256_hex=sha(b"abc"), expires_at=None)
    assert os.pread(held, 3, 0) == b"abc"
    os.close(held)
    assert read_all(c, "files/x") == b"abc"


def test_staged_file_handed_over_with_disown(tmp_path):
    area = StagingArea(str(tmp_path / "staging-area"), max_file_size=10_000, quota_left=lambda: 10_000)
    f = area.new_file()
    f.write(b"written through the mount", 0)
    assert area.staged_bytes == 25
    c = new_cache(tmp_path)
    assert c.adopt("files/w", f.path, size=f.size, sha256_hex=sha(b"written through the mount"),
                   expires_at=None)
    assert f.disown() == f.path
    assert area.staged_bytes == 0 and f.fd == -1
    f.discard()  # a no-op now
    assert read_all(c, "files/w") == b"written through the mount"


def test_lru_eviction_keeps_the_total_under_max_bytes(tmp_path):
    clock = Clock()
    c = new_cache(tmp_path, max_bytes=300, clock=clock)
    for name in ("a", "b", "c"):
        assert put(c, tmp_path, f"files/{name}", name.encode() * 100)[0]
        clock.tick()
    assert c.open("files/a") is not None  # a is now the most recent; b the least
    clock.tick()
    assert put(c, tmp_path, "files/d", b"d" * 150)[0]
    assert not c.contains("files/b") and not c.contains("files/c")
    assert c.contains("files/a") and c.contains("files/d")
    assert c.stats()["bytes"] == 250
    data_dir = tmp_path / "cache" / "proj" / "data"
    assert len(os.listdir(data_dir)) == 2  # evicted data files are unlinked


def test_an_entry_evicted_while_open_stays_readable_through_the_fd(tmp_path):
    c = new_cache(tmp_path, max_bytes=100)
    put(c, tmp_path, "files/old", b"o" * 100)
    fd = c.open("files/old")
    put(c, tmp_path, "files/new", b"n" * 100)
    assert not c.contains("files/old")
    assert os.pread(fd, 200, 0) == b"o" * 100
    os.close(fd)


def test_bigger_than_the_cache_is_refused_and_left_to_the_caller(tmp_path):
    c = new_cache(tmp_path, max_bytes=10)
    ok, path = put(c, tmp_path, "files/big", b"x" * 11)
    assert not ok and os.path.exists(path)
    assert c.stats()["entries"] == 0


def test_size_mismatch_is_refused(tmp_path):
    c = new_cache(tmp_path)
    path = staged(tmp_path, "m.part", b"12345")
    assert not c.adopt("files/m", path, size=4, sha256_hex=sha(b"1234"), expires_at=None)
    assert os.path.exists(path) and not c.contains("files/m")


def test_zero_max_bytes_turns_the_cache_off(tmp_path):
    c = new_cache(tmp_path, max_bytes=0)
    ok, path = put(c, tmp_path, "files/a", b"abc")
    assert not ok and os.path.exists(path)
    assert c.open("files/a") is None and not c.contains("files/a")
    assert c.drop("files/a") is False and c.expire() == 0 and c.retain({}) == 0
    assert c.stats() == {"entries": 0, "bytes": 0, "max_bytes": 0, "enabled": False}
    assert not (tmp_path / "cache" / "proj").exists()
    c.close()


def test_negative_size_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="cache size"):
        new_cache(tmp_path, max_bytes=-1)


def test_readopting_a_file_id_replaces_its_bytes(tmp_path):
    c = new_cache(tmp_path)
    put(c, tmp_path, "files/r", b"first")
    put(c, tmp_path, "files/r", b"second!")
    assert read_all(c, "files/r") == b"second!"
    assert c.stats()["bytes"] == 7
    assert len(os.listdir(tmp_path / "cache" / "proj" / "data")) == 1


def test_drop(tmp_path):
    c = new_cache(tmp_path)
    put(c, tmp_path, "files/d", b"bytes")
    assert c.drop("files/d") is True
    assert c.drop("files/d") is False
    assert c.open("files/d") is None and c.stats()["bytes"] == 0
    assert os.listdir(tmp_path / "cache" / "proj" / "data") == []


def test_expire_drops_entries_whose_time_has_passed(tmp_path):
    clock = Clock(1000)
    c = new_cache(tmp_path, clock=clock)
    put(c, tmp_path, "files/soon", b"s", expires_at=1010)
    put(c, tmp_path, "files/later", b"l", expires_at=2000)
    put(c, tmp_path, "files/never", b"n", expires_at=None)
    assert c.expire() == 0
    clock.t = 1010
    assert c.expire() == 1
    assert not c.contains("files/soon") and c.contains("files/later") and c.contains("files/never")
    clock.t = 5000
    assert c.expire() == 1
    assert c.contains("files/never")


def test_retain_drops_gone_files_and_hash_mismatches(tmp_path):
    c = new_cache(tmp_path)
    put(c, tmp_path, "files/kept", b"k")
    put(c, tmp_path, "files/gone", b"g")
    put(c, tmp_path, "files/changed", b"c")
    put(c, tmp_path, "files/unhashed", b"u")
    dropped = c.retain({"files/kept": sha(b"k").upper(), "files/changed": sha(b"other"),
                        "files/unhashed": None, "files/elsewhere": sha(b"e")})
    assert dropped == 2
    assert c.contains("files/kept") and c.contains("files/unhashed")
    assert not c.contains("files/gone") and not c.contains("files/changed")


def test_hex_from_api_reads_the_wire_format():
    digest = sha(b"data")
    assert hex_from_api(base64.b64encode(digest.encode()).decode()) == digest  # the real wire
    assert hex_from_api(base64.b64encode(bytes.fromhex(digest)).decode()) == digest  # raw bytes
    assert hex_from_api("") is None and hex_from_api(None) is None
    assert hex_from_api("not base64!") is None
    assert hex_from_api(base64.b64encode(b"short").decode()) is None


def test_verify_rehashes_and_drops_a_corrupt_entry(tmp_path):
    c = new_cache(tmp_path)
    put(c, tmp_path, "files/v", b"valid bytes")
    assert c.verify("files/v") is True
    data_dir = tmp_path / "cache" / "proj" / "data"
    (name,) = os.listdir(data_dir)
    with open(data_dir / name, "r+b") as f:
        f.write(b"V")  # same size, other bytes
    assert c.verify("files/v") is False
    assert not c.contains("files/v") and os.listdir(data_dir) == []
    assert c.verify("files/none") is False


def test_entries_survive_a_reopen_with_their_lru_order(tmp_path):
    clock = Clock()
    c = new_cache(tmp_path, max_bytes=300, clock=clock)
    for name in ("a", "b", "c"):
        put(c, tmp_path, f"files/{name}", name.encode() * 100)
        clock.tick()
    os.close(c.open("files/a"))
    c.close()
    c2 = new_cache(tmp_path, max_bytes=300, clock=clock)
    assert c2.stats()["entries"] == 3 and read_all(c2, "files/c") == b"c" * 100
    clock.tick()
    put(c2, tmp_path, "files/d", b"d" * 100)
    assert not c2.contains("files/b")  # b was least recently used before the reopen
    assert c2.contains("files/a")


def test_reopen_drops_broken_entries_and_stray_files(tmp_path):
    c = new_cache(tmp_path)
    put(c, tmp_path, "files/missing", b"m" * 10)
    put(c, tmp_path, "files/resized", b"r" * 10)
    put(c, tmp_path, "files/fine", b"f" * 10)
    c.close()
    root = tmp_path / "cache" / "proj"
    index = index_rows(root)
    os.unlink(root / "data" / index["files/missing"])
    with open(root / "data" / index["files/resized"], "ab") as f:
        f.write(b"more")
    (root / "data" / "stray").write_bytes(b"not in the index")
    (root / "data" / ".tmp-abc").write_bytes(b"half a copy")
    c2 = new_cache(tmp_path)
    assert c2.stats()["entries"] == 1 and read_all(c2, "files/fine") == b"f" * 10
    assert sorted(os.listdir(root / "data")) == [index["files/fine"]]
    c2.close()
    assert list(index_rows(root)) == ["files/fine"]


def test_reopen_applies_expiry_and_a_smaller_size(tmp_path):
    clock = Clock(1000)
    c = new_cache(tmp_path, max_bytes=1000, clock=clock)
    put(c, tmp_path, "files/exp", b"e" * 100, expires_at=1500)
    clock.tick()
    put(c, tmp_path, "files/one", b"1" * 100)
    clock.tick()
    put(c, tmp_path, "files/two", b"2" * 100)
    c.close()
    clock.t = 2000
    c2 = new_cache(tmp_path, max_bytes=150, clock=clock)
    assert not c2.contains("files/exp") and not c2.contains("files/one")
    assert c2.contains("files/two") and c2.stats()["bytes"] == 100


def test_an_unreadable_index_starts_empty_and_cleans_up(tmp_path):
    c = new_cache(tmp_path)
    put(c, tmp_path, "files/a", b"a")
    c.close()
    root = tmp_path / "cache" / "proj"
    for suffix in ("-wal", "-shm"):
        if (root / f"index.db{suffix}").exists():
            os.unlink(root / f"index.db{suffix}")
    (root / "index.db").write_bytes(b"this is not a database" * 100)
    c2 = new_cache(tmp_path)
    assert c2.stats()["entries"] == 0 and os.listdir(root / "data") == []


def test_adoption_is_on_disk_when_adopt_returns(tmp_path):
    """A daemon that dies right after adopt (no close, no flush) leaves a usable entry."""
    root = tmp_path / "cache" / "proj"
    src = staged(tmp_path, "crash.part", b"survives the crash")
    code = f"""
import os, hashlib
from gemfs.cache import ContentCache
c = ContentCache({str(root)!r}, 1000)
data = b"survives the crash"
assert c.adopt("files/crash", {src!r}, size=len(data), sha256_hex=hashlib.sha256(data).hexdigest(),
               expires_at=None)
os._exit(0)
"""
    subprocess.run([sys.executable, "-c", code], check=True)
    c = ContentCache(str(root), 1000)
    assert read_all(c, "files/crash") == b"survives the crash"
    assert c.verify("files/crash")


def test_a_second_process_on_the_same_root_runs_without_a_cache(tmp_path, caplog):
    first = new_cache(tmp_path)
    put(first, tmp_path, "files/a", b"a")
    with caplog.at_level("WARNING", logger="gemfs.cache"):
        second = new_cache(tmp_path)
    assert not second.enabled
    assert [r for r in caplog.records if "in use by another gemfs process" in r.getMessage()]
    ok, path = put(second, tmp_path, "files/b", b"b")
    assert not ok and os.path.exists(path)
    assert second.open("files/a") is None
    second.close()
    assert read_all(first, "files/a") == b"a"  # the owner is untouched
    first.close()
    third = new_cache(tmp_path)  # the lock is free again
    assert third.enabled and third.contains("files/a")


def test_permissions_are_private(tmp_path):
    old = os.umask(0)
    try:
        c = new_cache(tmp_path)
        path = staged(tmp_path, "p.part", b"private")
        os.chmod(path, 0o666)
        assert c.adopt("files/p", path, size=7, sha256_hex=sha(b"private"), expires_at=None)
    finally:
        os.umask(old)
    root = tmp_path / "cache" / "proj"
    mode = lambda p: stat.S_IMODE(os.stat(p).st_mode)  # noqa: E731
    assert mode(root) == 0o700 and mode(root / "data") == 0o700
    assert mode(root / "lock") == 0o600
    for name in ("index.db", "index.db-wal", "index.db-shm"):
        assert mode(root / name) == 0o600, name
    for name in os.listdir(root / "data"):
        assert mode(root / "data" / name) == 0o600


def test_exdev_falls_back_to_a_copy(tmp_path, monkeypatch):
    c = new_cache(tmp_path, max_bytes=100_000)
    real_rename = os.rename

    def rename(src, dst):
        if "staging" in str(src):
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real_rename(src, dst)

    monkeypatch.setattr(cache_mod.os, "rename", rename)
    data = b"across file systems" * 1000
    ok, path = put(c, tmp_path, "files/x", data)
    assert ok and not os.path.exists(path)
    assert read_all(c, "files/x") == data and c.verify("files/x")
    assert not [n for n in os.listdir(tmp_path / "cache" / "proj" / "data") if n.startswith(".tmp")]


def test_a_failed_rename_leaves_the_staged_file(tmp_path, monkeypatch):
    c = new_cache(tmp_path)

    def rename(src, dst):
        raise OSError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(cache_mod.os, "rename", rename)
    ok, path = put(c, tmp_path, "files/x", b"keep me")
    assert not ok and open(path, "rb").read() == b"keep me"
    assert c.stats()["entries"] == 0


def test_flush_makes_the_lru_order_survive_a_crash(tmp_path):
    root = tmp_path / "cache" / "proj"
    for name in ("a", "b", "c"):
        staged(tmp_path, name + ".part", name.encode() * 100)
    code = f"""
import os, hashlib
from gemfs.cache import ContentCache
t = [1000.0]
c = ContentCache({str(root)!r}, 300, clock=lambda: t[0])
for name in "abc":
    data = name.encode() * 100
    assert c.adopt("files/" + name, {str(tmp_path / "staging")!r} + "/" + name + ".part", size=100,
                   sha256_hex=hashlib.sha256(data).hexdigest(), expires_at=None)
    t[0] += 1
os.close(c.open("files/a"))
c.flush()
os._exit(0)
"""
    subprocess.run([sys.executable, "-c", code], check=True)
    clock = Clock(2000)
    c = ContentCache(str(root), 300, clock=clock)
    put(c, tmp_path, "files/d", b"d" * 100)
    assert not c.contains("files/b") and c.contains("files/a") and c.contains("files/c")


def test_a_failing_index_write_is_logged_and_the_cache_goes_on(tmp_path, caplog):
    c = new_cache(tmp_path)
    put(c, tmp_path, "files/a", b"a")
    real = c._db

    class Broken:
        def execute(self, sql, *args):
            if sql.startswith("BEGIN"):
                raise sqlite3.OperationalError("disk I/O error")
            return real.execute(sql, *args)

    c._db = Broken()
    with caplog.at_level("WARNING", logger="gemfs.cache"):
        ok, _ = put(c, tmp_path, "files/b", b"b")
    assert ok and read_all(c, "files/b") == b"b"
    assert any("could not write the content cache index" in r.getMessage() for r in caplog.records)
    c._db = real
    c.close()
    reopened = new_cache(tmp_path)  # b was never recorded: its data file is a stray, removed
    assert reopened.contains("files/a") and not reopened.contains("files/b")
    assert len(os.listdir(tmp_path / "cache" / "proj" / "data")) == 1


def test_concurrent_adopt_open_drop_keep_the_books_straight(tmp_path):
    c = new_cache(tmp_path, max_bytes=50 * 64)
    errors = []

    def worker(n):
        try:
            for i in range(40):
                fid = f"files/t{n}-{i % 10}"
                data = bytes([n]) * 64
                path = staged(tmp_path, f"t{n}-{i}.part", data)
                if not c.adopt(fid, path, size=64, sha256_hex=sha(data), expires_at=None):
                    os.unlink(path)
                fd = c.open(fid)
                if fd is not None:
                    assert os.pread(fd, 100, 0) == data
                    os.close(fd)
                if i % 7 == 0:
                    c.drop(fid)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    s = c.stats()
    assert s["bytes"] == 64 * s["entries"] <= 50 * 64
    data_dir = tmp_path / "cache" / "proj" / "data"
    assert len(os.listdir(data_dir)) == s["entries"]
    c.close()
    reopened = new_cache(tmp_path, max_bytes=50 * 64)
    assert reopened.stats() == s


def test_a_failure_after_the_rename_gives_the_file_back(tmp_path, monkeypatch):
    c = new_cache(tmp_path)

    def broken_fsync(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(cache_mod.os, "fsync", broken_fsync)
    ok, path = put(c, tmp_path, "files/x", b"still mine")
    assert not ok and open(path, "rb").read() == b"still mine"
    assert c.stats()["entries"] == 0
    assert os.listdir(tmp_path / "cache" / "proj" / "data") == []
