"""The per-project state store: mtimes across reopen, the held-files journal, its durability across
a crash (a subprocess that dies with os._exit), recovery that takes over only dead daemons' holds,
and the private modes of everything on disk."""

import errno
import os
import stat
import subprocess
import sys
import textwrap
import threading

import pytest

from gemfs import state as state_mod
from gemfs.staging import StagingArea
from gemfs.state import StateStore


class Clock:
    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t


def store_dir(tmp_path):
    return str(tmp_path / "state" / "projkey")


def staged(tmp_path, name, data):
    d = tmp_path / "staging"
    d.mkdir(exist_ok=True)
    p = d / name
    p.write_bytes(data)
    return str(p)


def run_and_die(tmp_path, body):
    """Run `body` in a subprocess with `store` open, then die without closing anything."""
    code = "import os\nfrom gemfs.state import StateStore\n" \
           f"store = StateStore({store_dir(tmp_path)!r})\n" + textwrap.dedent(body) + "\nos._exit(0)\n"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return out.stdout


def test_mtimes_set_get_forget_retain(tmp_path):
    s = StateStore(store_dir(tmp_path))
    assert s.get_mtime("files/a") is None
    s.set_mtime("files/a", 1_700_000_000_123_456_789)
    s.set_mtime("files/b", 5)
    s.set_mtime("files/b", 6)
    s.set_mtime("files/c", 7)
    assert s.get_mtime("files/a") == 1_700_000_000_123_456_789 and s.get_mtime("files/b") == 6
    s.forget("files/a")
    assert s.get_mtime("files/a") is None
    assert s.retain(["files/b", "files/other"]) == 1
    assert s.get_mtime("files/b") == 6 and s.get_mtime("files/c") is None
    s.close()
    reopened = StateStore(store_dir(tmp_path))
    assert reopened.get_mtime("files/b") == 6


def test_mtimes_survive_a_crash(tmp_path):
    run_and_die(tmp_path, 'store.set_mtime("files/x", 123456789)')
    assert StateStore(store_dir(tmp_path)).get_mtime("files/x") == 123456789


def test_hold_update_release(tmp_path):
    clock = Clock(50.0)
    s = StateStore(store_dir(tmp_path), clock=clock)
    src = staged(tmp_path, "a.part", b"held bytes")
    path = s.adopt_held(src)
    assert not os.path.exists(src) and os.path.dirname(path) == s.held_dir
    assert open(path, "rb").read() == b"held bytes"
    assert s.adopt_held(path) == path  # already held: no-op
    row = s.hold(path, ".notes.txt.AbC123", ["files/old1"], 99)
    (h,) = s.holds()
    assert (h.row, h.path, h.display_name, h.replaces_ids, h.mtime_ns, h.uploaded_id, h.created) == \
        (row, path, ".notes.txt.AbC123", ("files/old1",), 99, None, 50.0)
    s.update_hold(row, display_name="notes.txt", replaces_ids=["files/old1", "files/old2"])
    s.update_hold(row, uploaded_id="files/new")
    (h,) = s.holds()
    assert h.display_name == "notes.txt" and h.replaces_ids == ("files/old1", "files/old2")
    assert h.uploaded_id == "files/new" and h.mtime_ns == 99
    s.release_hold(row)
    assert s.holds() == [] and not os.path.exists(path)
    with pytest.raises(KeyError):
        s.release_hold(row)
    with pytest.raises(KeyError):
        s.update_hold(row, display_name="x")


def test_release_can_keep_the_file_for_the_content_cache(tmp_path):
    s = StateStore(store_dir(tmp_path))
    path = s.adopt_held(staged(tmp_path, "k.part", b"k"))
    row = s.hold(path, "k", [], None)
    s.release_hold(row, keep_file=True)
    assert s.holds() == [] and os.path.exists(path)


def test_disowned_staged_file_becomes_a_hold(tmp_path):
    area = StagingArea(str(tmp_path / "staging-area"), max_file_size=1000, quota_left=lambda: 1000)
    f = area.new_file()
    f.write(b"rsync temp file", 0)
    s = StateStore(store_dir(tmp_path))
    path = s.adopt_held(f.disown())
    s.hold(path, "d/.file.txt.Xy12Ab", [], None)
    assert area.staged_bytes == 0
    area.close()  # the staging directory goes; the held file does not
    assert open(path, "rb").read() == b"rsync temp file"


def test_hold_fsyncs_the_data_and_its_directory_first(tmp_path, monkeypatch):
    s = StateStore(store_dir(tmp_path))
    path = s.adopt_held(staged(tmp_path, "f.part", b"f"))
    synced = []
    real = os.fsync

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real(fd)

    monkeypatch.setattr(state_mod.os, "fsync", fsync)
    s.hold(path, "f", [], None)
    assert synced[:2] == [path, s.held_dir]
    synced.clear()
    (h,) = s.holds()
    s.update_hold(h.row, data_changed=True)
    assert synced == [path]


def test_held_files_survive_a_crash_and_are_taken_over(tmp_path):
    src = staged(tmp_path, "crash.part", b"closed with success")
    out = run_and_die(tmp_path, f"""
        p = store.adopt_held({src!r})
        row = store.hold(p, "dir/.report.pdf.Ab12Cd", ["files/prev"], 1234)
        store.update_hold(row, display_name="dir/report.pdf")
        print(p)
        """)
    held_path = out.strip()
    s = StateStore(store_dir(tmp_path))
    assert s.holds() == []  # not ours until recovered
    (h,) = s.recover()
    assert h.path == held_path and h.display_name == "dir/report.pdf"
    assert h.replaces_ids == ("files/prev",) and h.mtime_ns == 1234
    assert open(h.path, "rb").read() == b"closed with success"
    assert s.holds() == [h]
    assert s.recover() == []  # taken over once
    s.release_hold(h.row)
    s.close()
    s2 = StateStore(store_dir(tmp_path))
    assert s2.recover() == []
    # The dead daemon's directory is gone once nothing in it is journalled.
    assert os.listdir(os.path.join(store_dir(tmp_path), "held")) == [s2.instance]


def test_recover_cleans_unjournalled_files_and_dead_directories(tmp_path):
    src = staged(tmp_path, "a.part", b"a")
    run_and_die(tmp_path, f"""
        store.adopt_held({src!r})          # crashed before hold(): close never returned
        """)
    held_root = os.path.join(store_dir(tmp_path), "held")
    os.makedirs(os.path.join(held_root, ".new-1-abcd"))  # a half-made directory of a dead daemon
    s = StateStore(store_dir(tmp_path))
    assert s.recover() == []
    assert os.listdir(held_root) == [s.instance]


def test_recover_drops_holds_whose_file_is_gone(tmp_path, caplog):
    src = staged(tmp_path, "g.part", b"g")
    out = run_and_die(tmp_path, f"""
        p = store.adopt_held({src!r})
        store.hold(p, "gone.txt", [], None)
        print(p)
        """)
    os.unlink(out.strip())
    s = StateStore(store_dir(tmp_path))
    with caplog.at_level("WARNING", logger="gemfs.state"):
        assert s.recover() == []
    assert any("gone.txt" in r.getMessage() for r in caplog.records)
    assert s.holds() == []


def test_holds_of_a_live_daemon_are_never_taken(tmp_path):
    live = StateStore(store_dir(tmp_path))
    path = live.adopt_held(staged(tmp_path, "l.part", b"live"))
    row = live.hold(path, "live.txt", [], None)
    other = StateStore(store_dir(tmp_path))  # a second mount of the project, same process
    assert other.recover() == []
    assert [h.row for h in live.holds()] == [row] and os.path.exists(path)
    assert os.path.isdir(live.held_dir)
    live.close()  # live goes away with a hold left: the next recover takes it over
    (h,) = other.recover()
    assert h.row == row and h.display_name == "live.txt"


def test_a_clean_close_without_holds_leaves_nothing_behind(tmp_path):
    s = StateStore(store_dir(tmp_path))
    s.close()
    assert os.listdir(os.path.join(store_dir(tmp_path), "held")) == []


def test_adopt_held_copies_across_file_systems(tmp_path, monkeypatch):
    s = StateStore(store_dir(tmp_path))
    src = staged(tmp_path, "x.part", b"cross" * 1000)
    real = os.rename

    def rename(a, b):
        if "staging" in str(a):
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real(a, b)

    monkeypatch.setattr(state_mod.os, "rename", rename)
    path = s.adopt_held(src)
    assert not os.path.exists(src) and open(path, "rb").read() == b"cross" * 1000
    assert sorted(os.listdir(s.held_dir)) == sorted(["lock", os.path.basename(path)])


def test_everything_on_disk_is_private(tmp_path):
    old = os.umask(0)
    try:
        s = StateStore(store_dir(tmp_path))
        s.set_mtime("files/a", 1)
        path = s.adopt_held(staged(tmp_path, "p.part", b"p"))
        s.hold(path, "p", [], None)
    finally:
        os.umask(old)
    d = store_dir(tmp_path)
    mode = lambda p: stat.S_IMODE(os.stat(p).st_mode)  # noqa: E731
    assert mode(d) == 0o700 and mode(os.path.join(d, "held")) == 0o700 and mode(s.held_dir) == 0o700
    for name in ("state.db", "state.db-wal", "state.db-shm"):
        assert mode(os.path.join(d, name)) == 0o600, name
    assert mode(os.path.join(s.held_dir, "lock")) == 0o600


def test_concurrent_writers_share_one_connection(tmp_path):
    s = StateStore(store_dir(tmp_path))
    errors = []

    def worker(n):
        try:
            for i in range(50):
                s.set_mtime(f"files/{n}-{i}", i)
                assert s.get_mtime(f"files/{n}-{i}") == i
            p = s.adopt_held(staged(tmp_path, f"t{n}.part", bytes([n])))
            s.release_hold(s.hold(p, f"t{n}", [], None))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert s.retain([]) == 300 and s.holds() == []


def test_a_taken_over_hold_stays_safe_until_released(tmp_path):
    src = staged(tmp_path, "t.part", b"twice recovered")
    run_and_die(tmp_path, f"""
        store.hold(store.adopt_held({src!r}), "t.txt", [], None)
        """)
    b = StateStore(store_dir(tmp_path))
    (taken,) = b.recover()
    c = StateStore(store_dir(tmp_path))
    assert c.recover() == []  # b is alive and owns it now; the dead daemon's file is kept
    assert open(taken.path, "rb").read() == b"twice recovered"
    b.close()  # b goes away before uploading it
    (again,) = c.recover()
    assert (again.row, again.path) == (taken.row, taken.path)
    c.release_hold(again.row)
    c.close()
    d = StateStore(store_dir(tmp_path))
    d.recover()
    assert os.listdir(os.path.join(store_dir(tmp_path), "held")) == [d.instance]


def test_journal_writes_commit_with_full_sync_and_mtimes_with_normal(tmp_path):
    s = StateStore(store_dir(tmp_path))
    level = lambda: s._db.execute("PRAGMA synchronous").fetchone()[0]  # noqa: E731
    s.set_mtime("files/a", 1)
    assert level() == 1  # NORMAL: a daemon crash loses nothing, a power loss maybe the last mtimes
    path = s.adopt_held(staged(tmp_path, "s.part", b"s"))
    row = s.hold(path, "s", [], None)
    assert level() == 2  # FULL: the WAL is synced at commit
    s.set_mtime("files/b", 2)
    s.update_hold(row, display_name="t")
    assert level() == 2
    s.forget("files/b")
    s.release_hold(row)
    assert level() == 2
