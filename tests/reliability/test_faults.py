"""Faults between the mount and the server (issues 5 and 10), injected by the server's test-only
admin API: 503, 429, connection resets and garbage bodies on each upload step, on list and on
delete, each both ways: *before* the handler (instead of it: the server did nothing) and *after*
it (the server did the work and the answer was lost); stalls; a server restart mid-upload; a full
project.

The guarantee under every fault: `cp` either exits 0 and the File is listed whole (sha256
checked through the SDK) exactly once, or `cp` exits non-zero after a bounded number of retries
(counted: the waits before giving up sum under the retry deadline) and nothing is listed,
neither during nor after.
An upload sends at most one chunk again per fault before the handler, and nothing again when the
server had the bytes (counted by the server). `ls` keeps answering from the last snapshot while
listing fails. Every case records its faults, outcome, duplicates and bytes re-sent in the
suite's TALLY.
"""

from __future__ import annotations

import io
import os
import subprocess
import time

import httpx
import pytest

from tests.reliability.conftest import (
    CHUNK,
    KEY,
    MiB,
    Mount,
    ServerProcess,
    TALLY,
    faults_hit,
    random_bytes,
    sha_field,
    shq,
    upload_bytes,
    verify_written,
    wait_for,
)
from tests.reliability.support import PartialWatcher, sdk_names, staged_parts

DEADLINE = 5.0  # --retry-deadline of the module's mount


def most_failures(deadline: float = DEADLINE) -> int:
    """How many failed requests one operation meets at most before it gives up, whatever the
    machine's speed: after each failure gemfs waits at least half its backoff step (0.25 s
    doubling, times 0.5 to 1.5; the fault server asks for no wait of its own) and starts no
    retry whose wait would end past the deadline, so the waits before the last failure sum to
    less than the deadline. "Gave up" told from "kept retrying" by a count, not a clock; the
    deadline's own arithmetic is pinned with a fake clock in tests/unit/test_remote.py."""
    failures, waited, step = 1, 0.0, 0.25
    while waited + step / 2 < deadline:
        waited, step, failures = waited + step / 2, min(step * 2, 8.0), failures + 1
    return failures


# Each upload step with a file that reaches it: `skip` lets the first chunk through so that the
# upload_chunk fault lands on a middle chunk (chunk 2 of 3).
UPLOAD_STEPS = {
    "upload_start": (MiB + 123, 0),
    "upload_chunk": (2 * CHUNK + MiB + 7, 1),
    "upload_finalize": (CHUNK + MiB + 7, 0),
}
ACTIONS = {  # action name -> rule fields
    "503": {"action": "error", "status": 503},
    "429": {"action": "error", "status": 429},
    "reset": {"action": "reset"},
    "garbage": {"action": "garbage"},
}
TRANSIENT_TIMES = 2  # two faults in a row: the retry after the first one meets the second

# The cases kept in `make test`, by (when, mode): every op and every action at least once each
# way. The rest of the matrix costs 5-10 s a case and runs in `make test-long`.
FAST = {
    ("before", "persistent"): {
        ("upload_start", "garbage"), ("upload_chunk", "503"), ("upload_chunk", "reset"),
        ("upload_finalize", "reset"), ("list", "429"), ("list", "reset"),
        ("delete", "503"), ("delete", "garbage"),
    },
    ("before", "transient"): {
        *((op, a) for op in UPLOAD_STEPS for a in ACTIONS),
        ("list", "429"), ("list", "garbage"), *(("delete", a) for a in ACTIONS),
    },
    ("after", "persistent"): {
        ("upload_start", "reset"), ("upload_chunk", "garbage"), ("upload_finalize", "503"),
        ("upload_finalize", "reset"), ("list", "503"), ("delete", "reset"),
    },
    ("after", "transient"): {
        ("upload_start", "503"), ("upload_start", "garbage"), ("upload_chunk", "reset"),
        ("upload_chunk", "429"), ("upload_finalize", "reset"), ("upload_finalize", "garbage"),
        ("list", "reset"), ("delete", "503"), ("delete", "reset"),
    },
}


def matrix(ops):
    cases = []
    for when in ("before", "after"):
        for op in ops:
            for action in ACTIONS:
                for mode in ("transient", "persistent"):
                    fast = (op, action) in FAST[(when, mode)]
                    marks = () if fast else (pytest.mark.long,)
                    case_id = f"{op}-{action}-{mode}-{when}"
                    cases.append(pytest.param(op, action, mode, when, id=case_id, marks=marks))
    return cases


def rule(op: str, action: str, mode: str, when: str = "before", skip: int = 0) -> dict:
    times = TRANSIENT_TIMES if mode == "transient" else -1
    return {"op": op, **ACTIONS[action], "times": times, "skip": skip, "when": when}


@pytest.fixture(scope="module")
def fmount(rel_root, shared_server):
    m = Mount(rel_root, shared_server, name="faults",
              extra=("--retry-deadline", str(DEADLINE))).start()
    try:
        yield m
    finally:
        m.stop()


def cp_into(mount: Mount, src, name: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`cp SRC MNT/NAME` (`timeout` only guards against a hang)."""
    return subprocess.run(["cp", str(src), str(mount.path / name)], capture_output=True,
                          text=True, timeout=timeout)


def assert_nothing_left(mount: Mount, sdk, name: str) -> None:
    """A failed cp leaves no File (any File of the name would be one nobody asked for: a
    duplicate), no entry in the mount, and no staged copy."""
    left = [f for f in sdk.files.list(config={"page_size": 100}) if f.display_name == name]
    TALLY.add(duplicates=len(left))
    assert left == [], f"a failed cp left Files: {[(f.name, f.size_bytes) for f in left]}"
    wait_for(lambda: name not in mount.sh("ls -a", timeout=30).stdout.split(), timeout=10,
             what=f"{name} gone from the mount")
    wait_for(lambda: not staged_parts(mount.staging), timeout=10, what="staged copy removed")


def upload_expected_to_succeed(op: str, mode: str, when: str) -> bool:
    """Transient faults are retried through. Persistent ones fail the upload, except a finalize
    whose answer is always lost: the File exists, and the session's `query` (which the rule on
    `upload_finalize` does not match) hands it over."""
    return mode == "transient" or (when == "after" and op == "upload_finalize")


# --- uploads ----------------------------------------------------------------------------------


@pytest.mark.parametrize("op,action,mode,when", matrix(UPLOAD_STEPS))
def test_upload_fault(fmount, shared_server, sdk, tmp_path, op, action, mode, when):
    size, skip = UPLOAD_STEPS[op]
    data = random_bytes(size)
    name = f"{op}-{action}-{mode}-{when}.bin"
    (tmp_path / "src").write_bytes(data)
    shared_server.admin.set_faults(rule(op, action, mode, when, skip))
    with PartialWatcher(shared_server, {name: data}) as watcher:
        proc = cp_into(fmount, tmp_path / "src", name)
    hits = faults_hit(shared_server.admin)
    stats = shared_server.admin.stats()
    sent = upload_bytes(shared_server)
    assert hits >= 1, "the fault never fired: the case proves nothing"
    assert watcher.partial == [], f"a partial File was listed: {watcher.partial}"
    # Per fault before the handler at most the chunk it hit goes again; after it, nothing: the
    # server has those bytes and says so when asked.
    allowed = 0 if when == "after" else hits * CHUNK
    if upload_expected_to_succeed(op, mode, when):
        assert proc.returncode == 0, f"cp failed: {proc.stderr}\n{fmount.read_log()[-2000:]}"
        verify_written(sdk, {name: data})
        resent = sent - size
        assert 0 <= resent <= allowed, f"{resent} bytes re-sent after {hits} fault(s) {when}"
        if when == "before" and mode == "transient":
            # Exactly the chunk hit: a middle chunk once (the second fault lands on the query
            # after it), the last chunk twice (a query is not a finalize, the re-sent one is).
            expected = {"upload_start": 0, "upload_chunk": CHUNK,
                        "upload_finalize": 2 * (size - CHUNK)}[op]
            assert resent == expected, f"{resent} bytes re-sent, expected {expected}"
        if op == "upload_start":
            assert resent == 0  # no byte had gone out yet
            assert stats["upload_start"] == hits + 1
        else:
            assert stats["upload_start"] == 1, "a new session instead of resuming the old one"
        if when == "after" and op == "upload_finalize":
            # The committed finalize is never sent again: the File comes from `query`.
            assert hits == 1 and stats["upload_finalize"] == 1, (hits, stats)
        elif mode == "transient":
            assert hits == TRANSIENT_TIMES, "a fault met no retry"
        TALLY.resent(when, resent, hits)
        TALLY.add(survived=1)
    else:
        assert proc.returncode != 0, "cp succeeded although every attempt failed"
        assert "Input/output error" in proc.stderr, proc.stderr
        # A chunk is retried by querying its session (counted as upload_chunk, which the rule
        # hits too), not by starting a new one: count the faulted requests. Retried, then given
        # up (RELIABILITY.md #2: fails in a bounded time): the count says which, at any speed.
        assert 2 <= hits <= most_failures(), f"{hits} faulted requests: gave up or kept retrying?"
        assert sent <= size + allowed, f"{sent} bytes sent for {size} after {hits} faults {when}"
        assert_nothing_left(fmount, sdk, name)
        TALLY.add(failed_cleanly=1)


@pytest.mark.parametrize("action,when", [("reset", "before"), ("503", "after"),
                                         ("garbage", "after")])
def test_a_stream_whose_start_fails_goes_up_whole_at_the_close(fmount, shared_server, sdk,
                                                              tmp_path, action, when):
    """A file big enough to stream (SEMANTICS.md: over --stream-from) whose unsized start fails,
    once for the stream and once more at the close: the close starts a session of its own and
    the File is whole and single; no chunk had gone out, so no byte goes twice. (Faults on a
    streamed file's chunks and finalize: test_upload_fault, whose files are over 8 MiB.)"""
    size = 2 * CHUNK + 5
    data = random_bytes(size)
    name = f"stream-start-{action}-{when}.bin"
    (tmp_path / "src").write_bytes(data)
    shared_server.admin.set_faults(rule("upload_start", action, "transient", when))
    with PartialWatcher(shared_server, {name: data}) as watcher:
        proc = cp_into(fmount, tmp_path / "src", name)
    assert faults_hit(shared_server.admin) == TRANSIENT_TIMES
    assert watcher.partial == []
    assert proc.returncode == 0, f"cp failed: {proc.stderr}\n{fmount.read_log()[-2000:]}"
    verify_written(sdk, {name: data})
    assert upload_bytes(shared_server) == size
    TALLY.resent(when, 0, TRANSIENT_TIMES)
    TALLY.add(survived=1)


@pytest.mark.parametrize("mode", ["transient", "persistent"])
def test_overwrite_under_upload_faults(fmount, shared_server, sdk, tmp_path, mode):
    """`cp` over an existing File: the old File is deleted only once the new one is in. If the
    new upload fails, cp exits non-zero and the old File stays, whole, in the mount too."""
    name = f"overwrite-{mode}.bin"
    old, new = random_bytes(40_000), random_bytes(60_000)
    (tmp_path / "old").write_bytes(old)
    (tmp_path / "new").write_bytes(new)
    fmount.sh(f"cp {shq(tmp_path / 'old')} {name}")
    # Transient: two resets, retried. Persistent: a refusal that no retry can change.
    fault = ({"op": "upload_start", "action": "reset", "times": 2} if mode == "transient" else
             {"op": "upload_start", "action": "error", "status": 400, "times": -1})
    shared_server.admin.set_faults(fault)
    proc = cp_into(fmount, tmp_path / "new", name)
    assert faults_hit(shared_server.admin) >= 1
    if mode == "transient":
        assert proc.returncode == 0, proc.stderr
        verify_written(sdk, {name: new})
        TALLY.add(survived=1)
    else:
        assert proc.returncode != 0 and "Invalid argument" in proc.stderr, proc.stderr
        verify_written(sdk, {name: old})
        wait_for(lambda: fmount.sh("ls -l", timeout=30).stdout.count(name) == 1, timeout=10,
                 what="the old File shown again")
        assert f" {len(old)} " in fmount.sh(f"ls -l {name}").stdout
        TALLY.add(failed_cleanly=1)


def test_overwrite_when_the_old_file_cannot_be_deleted(fmount, shared_server, sdk, tmp_path):
    """The new File is in but deleting the old one fails for good: the new bytes are whole, so
    cp succeeds (SEMANTICS.md, overwrite) and the failure is logged; both Files are whole;
    nothing is lost, nothing partial, and no byte was uploaded twice. (The old File is an
    undeleted version, not a second upload: the mount shows both, one as `name~id`.)"""
    name = "overwrite-undeletable.bin"
    old, new = random_bytes(40_000), random_bytes(60_000)
    (tmp_path / "old").write_bytes(old)
    (tmp_path / "new").write_bytes(new)
    fmount.sh(f"cp {shq(tmp_path / 'old')} {name}")
    shared_server.admin.reset_stats()
    shared_server.admin.set_faults({"op": "delete", "action": "error", "status": 400,
                                    "times": -1})
    proc = cp_into(fmount, tmp_path / "new", name)
    assert faults_hit(shared_server.admin) >= 1
    assert proc.returncode == 0, f"cp failed although the new File is whole: {proc.stderr}"
    assert upload_bytes(shared_server) == len(new)
    files = [f for f in sdk.files.list() if f.display_name == name]
    assert sorted(f.sha256_hash for f in files) == sorted([sha_field(old), sha_field(new)])
    assert "could not delete the replaced File" in fmount.read_log()
    TALLY.add(survived=1, bytes_written=len(new), bytes_verified=len(new))
    wait_for(lambda: len([n for n in fmount.sh("ls", timeout=30).stdout.split()
                          if n.startswith("overwrite-undeletable")]) == 2, timeout=10,
             what="both Files in the mount")


@pytest.mark.parametrize("mode", ["transient", "persistent"])
def test_rsync_under_upload_faults(fmount, shared_server, sdk, tmp_path, mode):
    """rsync writes a temp file and renames it; the rename uploads it, and reports the upload's
    failure, so rsync exits non-zero and neither name is left behind."""
    data = random_bytes(3 * MiB + 5)
    src = tmp_path / "tree"
    src.mkdir()
    (src / "synced.bin").write_bytes(data)
    fault = ({"op": "upload_finalize", "action": "reset", "times": 2} if mode == "transient" else
             {"op": "upload_start", "action": "error", "status": 400, "times": -1})
    shared_server.admin.set_faults(fault)
    dest = f"rsynced-{mode}"
    proc = subprocess.run(["rsync", "-a", f"{src}/", f"{fmount.path}/{dest}/"],
                          capture_output=True, text=True, timeout=120)
    assert faults_hit(shared_server.admin) >= 1
    if mode == "transient":
        assert proc.returncode == 0, proc.stderr
        verify_written(sdk, {f"{dest}/synced.bin": data})
        TALLY.add(survived=1)
    else:
        assert proc.returncode != 0, "rsync succeeded although the upload was refused"
        assert sdk_names(sdk) == set()
        leftovers = fmount.sh(f"ls -aR {dest}", check=False, timeout=30).stdout
        assert "synced.bin" not in leftovers, leftovers
        wait_for(lambda: not staged_parts(fmount.staging), timeout=10, what="staged copy removed")
        TALLY.add(failed_cleanly=1)


@pytest.mark.long
@pytest.mark.parametrize("op", ["upload_chunk", "upload_finalize"])
def test_three_faults_in_a_row_resume_the_same_session(fmount, shared_server, sdk, tmp_path, op):
    """Three 503s in a row (on the chunk and the queries after it): gemfs resumes the same
    session once the server answers again, and the File still arrives whole, once."""
    size, skip = UPLOAD_STEPS[op]
    data = random_bytes(size)
    name = f"{op}-three-faults.bin"
    (tmp_path / "src").write_bytes(data)
    shared_server.admin.set_faults({"op": op, "action": "error", "status": 503, "times": 3,
                                    "skip": skip})
    with PartialWatcher(shared_server, {name: data}) as watcher:
        proc = cp_into(fmount, tmp_path / "src", name)
    attempts = shared_server.admin.stats()["upload_start"]
    resent = upload_bytes(shared_server) - size
    hits = faults_hit(shared_server.admin)
    assert hits == 3
    assert proc.returncode == 0, proc.stderr
    assert attempts == 1, "gemfs started the upload again instead of resuming it"
    assert watcher.partial == []
    verify_written(sdk, {name: data})
    assert 0 <= resent <= hits * CHUNK
    TALLY.resent("before", resent, hits)
    TALLY.add(survived=1)


# --- list --------------------------------------------------------------------------------------


@pytest.mark.parametrize("op,action,mode,when", matrix(["list"]))
def test_list_fault(fmount, shared_server, sdk, tmp_path, op, action, mode, when):
    """`ls` answers from the last snapshot while files.list fails, and catches up after. (A
    listing whose answer is lost after the handler changed nothing on the server: to the mount
    it is the same failure.)"""
    mine, theirs = f"before-{action}-{mode}-{when}.txt", f"theirs-{action}-{mode}-{when}.txt"
    # Known to the mount only through a listing (not through its own upload), so that only the
    # snapshot can keep showing it.
    sdk.files.upload(file=io.BytesIO(b"listed before the fault\n"),
                     config={"display_name": mine, "mime_type": "text/plain"})
    wait_for(lambda: mine in fmount.sh("ls", timeout=30).stdout, timeout=15, what="first listing")
    gave_up = fmount.read_log().count("list failed after")  # earlier cases' refreshes
    shared_server.admin.set_faults(rule(op, action, mode, when))
    # Another client adds a File: the mount can only learn of it through a listing.
    sdk.files.upload(file=io.BytesIO(b"uploaded elsewhere\n"),
                     config={"display_name": theirs, "mime_type": "text/plain"})
    # ls must not wait for the failing refresh. Told by the order of events, not a clock: some
    # look at the mount starts after the faulted listing did (its rule has a hit) and comes
    # back from the old snapshot before that listing ends: before it gives up (persistent: the
    # log says so) or succeeds (transient: it would show `theirs`). A mount that waited would
    # only answer once the listing had ended.
    window_end = time.monotonic() + 2.5  # past the list TTL (1 s): refreshes are attempted
    rounds = answered_meanwhile = 0
    while time.monotonic() < window_end or not answered_meanwhile:
        # A guard against a hang; the persistent listing gives up DEADLINE s after it starts.
        assert time.monotonic() < window_end + 30, "ls never answered while a listing failed"
        underway = shared_server.admin.faults()[0]["hits"] >= 1
        seen = os.listdir(fmount.path)  # in process: quick, so it lands inside the listing
        ended = fmount.read_log().count("list failed after") > gave_up or theirs in seen
        if underway and not ended:
            answered_meanwhile += 1
        assert mine in seen, "the last snapshot was lost"
        proc = fmount.sh("ls -l", check=False, timeout=30)
        assert proc.returncode == 0, f"ls failed while listing fails: {proc.stderr}"
        names = proc.stdout
        assert mine in names, "the last snapshot was lost"
        if mode == "persistent":
            assert theirs not in names  # only a listing could show it, and every listing fails
        rounds += 1
        time.sleep(0.1)
    hits = faults_hit(shared_server.admin)
    assert hits >= 1
    # Recovery: the next listing shows the other client's File.
    wait_for(lambda: theirs in fmount.sh("ls", timeout=30).stdout, timeout=DEADLINE + 15,
             what="the listing to recover")
    TALLY.add(survived=rounds)


# --- delete ------------------------------------------------------------------------------------


@pytest.mark.parametrize("op,action,mode,when", matrix(["delete"]))
def test_delete_fault(fmount, shared_server, sdk, tmp_path, op, action, mode, when):
    """`rm` either deletes the File or fails non-zero and the File is still there, whole. When
    the delete was done and only its answer lost, a retried delete finds the File gone (403)
    and `rm` succeeds; if every answer is lost, `rm` cannot know and fails, the File is gone,
    and the mount stops showing it at the next listing."""
    name = f"rm-{action}-{mode}-{when}.bin"
    data = random_bytes(50_000)
    (tmp_path / name).write_bytes(data)
    fmount.sh(f"cp {shq(tmp_path / name)} ./")
    shared_server.admin.set_faults(rule(op, action, mode, when))
    proc = fmount.sh(f"rm {name}", check=False, timeout=60)
    hits = faults_hit(shared_server.admin)
    assert hits >= 1
    if mode == "transient":
        assert proc.returncode == 0, proc.stderr
        assert name not in sdk_names(sdk), "rm succeeded but the File still exists"
        assert name not in fmount.sh("ls").stdout
        TALLY.add(survived=1)
    elif when == "after":
        assert proc.returncode != 0, "rm succeeded although no delete answer arrived"
        # Every delete request is faulted: retried, then given up (RELIABILITY.md #6).
        assert 2 <= hits <= most_failures(), f"{hits} deletes: gave up or kept retrying?"
        assert name not in sdk_names(sdk), "the server did the delete, yet the File is there"
        wait_for(lambda: name not in fmount.sh("ls", timeout=30).stdout.split(), timeout=15,
                 what="the deleted File gone from the mount")
        TALLY.add(failed_cleanly=1)
    else:
        assert proc.returncode != 0, "rm succeeded although every delete failed"
        assert 2 <= hits <= most_failures(), f"{hits} deletes: gave up or kept retrying?"
        verify_written(sdk, {name: data})
        assert name in fmount.sh("ls").stdout, "the mount hid a File that still exists"
        fmount.sh(f"rm {name}")  # and once the server recovers, rm works
        assert name not in sdk_names(sdk)
        TALLY.add(failed_cleanly=1)


# --- stalls and restarts -----------------------------------------------------------------------


def test_stall_shorter_than_the_request_timeout_succeeds(rel_root, shared_server, sdk, tmp_path):
    """A chunk held 3 s (longer than the 2 s retry deadline, shorter than the 10 s request
    timeout) is only slow; and a reset after it is still retried: the retry deadline counts from
    the first failure, not from the start of a long but healthy transfer."""
    m = Mount(rel_root, shared_server, name="stall-short",
              extra=("--retry-deadline", "2", "--request-timeout", "10")).start()
    try:
        data = random_bytes(2 * CHUNK + MiB)
        (tmp_path / "src").write_bytes(data)
        shared_server.admin.set_faults(
            {"op": "upload_chunk", "action": "stall", "seconds": 3, "skip": 1, "times": 1},
            {"op": "upload_finalize", "action": "reset", "times": 1},
        )
        with PartialWatcher(shared_server, {"slow.bin": data}) as watcher:
            proc = cp_into(m, tmp_path / "src", "slow.bin")
        assert faults_hit(shared_server.admin) == 2
        assert proc.returncode == 0, f"{proc.stderr}\n{m.read_log()[-2000:]}"
        assert watcher.partial == []
        verify_written(sdk, {"slow.bin": data})
        TALLY.add(survived=1)
    finally:
        m.stop()


def test_stall_longer_than_the_deadline_fails_cleanly(rel_root, shared_server, sdk, tmp_path):
    """A server that holds every chunk past the request timeout: cp fails after a few retries,
    nothing is listed, and the mount answers ls and stat the whole time."""
    deadline, timeout = 4.0, 2.0
    m = Mount(rel_root, shared_server, name="stall-long",
              extra=("--retry-deadline", str(deadline), "--request-timeout", str(timeout))).start()
    try:
        (tmp_path / "old.txt").write_bytes(b"already there\n")
        m.sh(f"cp {shq(tmp_path / 'old.txt')} ./")
        data = random_bytes(CHUNK + MiB)
        (tmp_path / "src").write_bytes(data)
        shared_server.admin.set_faults(
            {"op": "upload_chunk", "action": "stall", "seconds": 8, "times": -1})
        hang_guard = time.monotonic() + 120  # as cp_into's timeout: not a latency claim
        cp = subprocess.Popen(["cp", str(tmp_path / "src"), str(m.path / "stuck.bin")],
                              stderr=subprocess.PIPE, text=True)
        answered = 0
        try:
            while cp.poll() is None:
                out = m.sh("ls -l && stat old.txt", timeout=30).stdout
                assert "old.txt" in out
                # Told by order, not by a clock: an ls and stat that came back while cp was
                # still stuck did not wait for its upload (one that waited would come back
                # with the failed close, at most once).
                if cp.poll() is None:
                    answered += 1
                assert time.monotonic() < hang_guard, "cp hangs"
                time.sleep(0.2)
            stderr = cp.stderr.read()
        finally:
            if cp.poll() is None:
                cp.kill()
        assert cp.returncode != 0 and "Input/output error" in stderr, stderr
        assert answered >= 3, f"ls and stat answered {answered} times while cp was stuck"
        # Each timed-out chunk is one failure: retried, then given up (RELIABILITY.md #7),
        # counted (a stalled request ends at the request timeout, then the next can start).
        hits = faults_hit(shared_server.admin)
        assert 2 <= hits <= most_failures(deadline), f"{hits} stalled chunks"
        assert_nothing_left(m, sdk, "stuck.bin")
        TALLY.add(failed_cleanly=1, survived=answered)
    finally:
        m.stop()


def test_server_restart_mid_upload(rel_root, shared_server, sdk, tmp_path):
    """The server restarts (SIGTERM, same data and port) while a chunk is in flight: cp either
    succeeds with the whole File or fails cleanly; nothing partial is listed in between."""
    m = Mount(rel_root, shared_server, name="restart", extra=("--retry-deadline", "30")).start()
    try:
        data = random_bytes(3 * CHUNK + MiB)
        (tmp_path / "src").write_bytes(data)
        # Hold the second chunk a moment so the restart surely lands inside the upload.
        shared_server.admin.set_faults(
            {"op": "upload_chunk", "action": "stall", "seconds": 1.5, "skip": 1, "times": 1})
        watcher = PartialWatcher(shared_server, {"restart.bin": data})
        cp = subprocess.Popen(["cp", str(tmp_path / "src"), str(m.path / "restart.bin")],
                              stderr=subprocess.PIPE, text=True)
        try:
            with watcher:
                wait_for(lambda: shared_server.admin.stats()["upload_chunk"] >= 2, timeout=60,
                         what="the second chunk to arrive")
                hits = faults_hit(shared_server.admin)
                old_url = shared_server.url
                shared_server.restart()
                assert shared_server.url == old_url, "the port was taken; the mount cannot follow"
                code = cp.wait(timeout=120)
        finally:
            if cp.poll() is None:
                cp.kill()
        assert watcher.partial == [], watcher.partial
        TALLY.add(faults_injected=1)  # the restart itself
        assert hits == 1
        if code == 0:
            # Sessions outlive a server restart: the upload resumed its session, not a new one.
            assert shared_server.admin.stats()["upload_start"] == 0
            verify_written(sdk, {"restart.bin": data})
            TALLY.add(survived=1)
        else:
            assert_nothing_left(m, sdk, "restart.bin")
            TALLY.add(failed_cleanly=1)
        # Either way the mount works against the restarted server.
        (tmp_path / "after.txt").write_bytes(b"after the restart\n")
        m.sh(f"cp {shq(tmp_path / 'after.txt')} ./")
        assert sha_field(b"after the restart\n") in {
            f.sha256_hash for f in sdk.files.list() if f.display_name == "after.txt"}
    finally:
        m.stop()


# --- a full project ----------------------------------------------------------------------------

QUOTA = 3 * MiB  # the quota server's --project-quota


@pytest.fixture(scope="module")
def quota_server(rel_root):
    with ServerProcess(rel_root / "quota-data", keys=[KEY],
                       args=["--project-quota", str(QUOTA)]) as server:
        yield server


@pytest.fixture
def quota_mount(rel_root, quota_server):
    """A mount whose own --quota is the default (far above QUOTA), so only the server refuses."""
    client = quota_server.client(KEY)
    for f in list(client.files.list(config={"page_size": 100})):
        client.files.delete(name=f.name)
    m = Mount(rel_root, quota_server, name="quota",
              extra=("--retry-deadline", str(DEADLINE))).start()
    try:
        yield m, client
    finally:
        quota_server.admin.clear_faults()
        m.stop()


def start_upload_raw(server, size: int) -> httpx.Response:
    """A resumable `start` as the SDK sends it, for `size` bytes."""
    with server.http() as http:
        return http.post("/upload/v1beta/files", headers={
            "x-goog-api-key": KEY, "X-Goog-Upload-Protocol": "resumable",
            "X-Goog-Upload-Command": "start", "X-Goog-Upload-Header-Content-Length": str(size),
            "X-Goog-Upload-Header-Content-Type": "application/octet-stream",
        }, json={"file": {"display_name": "raw", "mime_type": "application/octet-stream",
                          "size_bytes": size}})


def test_a_full_project_fails_cp_at_once_with_edquot(quota_mount, quota_server, tmp_path):
    """The server answers a full project as the real API does (429 RESOURCE_EXHAUSTED with a
    QuotaFailure on FileStorageBytesPerProject): `cp` fails with "Disk quota exceeded" after one
    start request, with no retry, no query and no byte sent, and leaves nothing. Once there is
    room again, the same `cp` works: the refusal is not remembered."""
    mount, client = quota_mount
    filler = random_bytes(2 * MiB)
    client.files.upload(file=io.BytesIO(filler),  # another client fills the project
                        config={"display_name": "filler.bin", "mime_type": "text/plain"})
    # The answer gemfs meets has the real shape.
    raw = start_upload_raw(quota_server, 2 * MiB)
    assert raw.status_code == 429, raw.text
    error = raw.json()["error"]
    assert error["status"] == "RESOURCE_EXHAUSTED"
    assert error["message"] == ("Quota exceeded for metric: generativelanguage.googleapis.com/"
                                f"file_storage_bytes, limit: {QUOTA}")
    violations = [v for d in error["details"] if d["@type"].endswith("google.rpc.QuotaFailure")
                  for v in d["violations"]]
    assert [v["quotaId"] for v in violations] == ["FileStorageBytesPerProject"]

    data = random_bytes(2 * MiB)
    (tmp_path / "src").write_bytes(data)
    quota_server.admin.reset_stats()
    proc = cp_into(mount, tmp_path / "src", "over.bin")
    stats = quota_server.admin.stats()
    sent = upload_bytes(quota_server)
    assert proc.returncode != 0 and "Disk quota exceeded" in proc.stderr, proc.stderr
    assert stats["upload_start"] == 1, f"the quota answer was retried: {stats}"
    assert stats["upload_chunk"] == 0 and stats["upload_finalize"] == 0 and sent == 0, stats
    assert_nothing_left(mount, client, "over.bin")
    verify_written(client, {"filler.bin": filler})  # and the other client's File is untouched
    TALLY.add(failed_cleanly=1)

    client.files.delete(name=[f for f in client.files.list()][0].name)
    quota_server.admin.reset_stats()
    mount.sh(f"cp {shq(tmp_path / 'src')} over.bin")
    assert quota_server.admin.stats()["upload_start"] == 1
    verify_written(client, {"over.bin": data})


def test_an_overwrite_without_room_for_both_versions_keeps_the_old_file(
        quota_mount, quota_server, tmp_path):
    """An overwrite uploads the new version before it deletes the old one, so both must fit:
    when they do not, `cp` fails with EDQUOT after one start, the old File stays whole (and
    shown), and the log says why."""
    mount, client = quota_mount
    old, new = random_bytes(2 * MiB), random_bytes(2 * MiB)
    (tmp_path / "old").write_bytes(old)
    (tmp_path / "new").write_bytes(new)
    mount.sh(f"cp {shq(tmp_path / 'old')} doc.bin")
    quota_server.admin.reset_stats()
    proc = cp_into(mount, tmp_path / "new", "doc.bin")
    stats = quota_server.admin.stats()
    assert proc.returncode != 0 and "Disk quota exceeded" in proc.stderr, proc.stderr
    assert stats["upload_start"] == 1 and stats["delete"] == 0, stats
    verify_written(client, {"doc.bin": old})
    wait_for(lambda: f" {len(old)} " in mount.sh("ls -l doc.bin", check=False,
                                                 timeout=30).stdout,
             timeout=10, what="the old File shown again")
    assert "an overwrite needs both until it is done" in mount.read_log()
    TALLY.add(failed_cleanly=1)
