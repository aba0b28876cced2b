"""Crashes (issue 5, part 2): the mount daemon killed with SIGKILL in the middle of an upload,
and a staging disk that fills up.

The guarantees: a killed daemon leaves no partial File, `gemfs unmount` cleans the dead mount,
and the next daemon on the same --staging-dir removes the dead one's staged bytes; a full
staging disk fails the write with ENOSPC ("No space left on device") before anything goes up.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from gemfs.registry import pid_alive
from tests.reliability.conftest import (
    CHUNK,
    KEY,
    MiB,
    Mount,
    TALLY,
    daemon_pid,
    faults_hit,
    in_mount_table,
    random_bytes,
    shq,
    verify_written,
    wait_for,
)
from tests.reliability.support import PartialWatcher, sdk_names, staged_parts

STALL = 4.0  # how long the server holds the chunk that is in flight when the daemon dies


def kill_during_uploads(tmp_path, server, sdk, sizes: list[int], holds: list[dict]) -> None:
    """Start one cp per size, hold the uploads in the server with the stall rules `holds` until
    each is held, SIGKILL the daemon, then check the whole recovery path."""
    m = Mount(tmp_path, server, extra=("--retry-deadline", "5")).start()
    killed = False
    try:
        expected = {}
        for i, size in enumerate(sizes):
            expected[f"big{i}.bin"] = data = random_bytes(size)
            (tmp_path / f"src{i}").write_bytes(data)
        server.admin.set_faults(*({"action": "stall", "seconds": STALL, "times": -1, **hold}
                                  for hold in holds))
        with PartialWatcher(server, expected) as watcher:
            cps = [subprocess.Popen(["cp", str(tmp_path / f"src{i}"), str(m.path / name)],
                                    stderr=subprocess.PIPE, text=True)
                   for i, name in enumerate(expected)]
            try:
                # An upload makes one request at a time: once as many are held as there are
                # uploads, every one of them is in flight and none can finish.
                wait_for(lambda: sum(r["hits"] for r in server.admin.faults()) >= len(sizes),
                         timeout=60, what="every upload to be held in flight")
                held_until = time.monotonic() + STALL + 1.0
                pid = daemon_pid(m)
                stale = staged_parts(m.staging)
                assert stale, "nothing staged: the kill would prove nothing"
                os.kill(pid, signal.SIGKILL)
                killed = True
                wait_for(lambda: not pid_alive(pid), timeout=10, what="the daemon to die")
                codes = [cp.wait(timeout=30) for cp in cps]
            finally:
                for cp in cps:
                    if cp.poll() is None:
                        cp.kill()
            # The held requests are served STALL s after they came in: keep watching the project
            # until then, so a File they might complete would be seen.
            time.sleep(max(held_until - time.monotonic(), 0.0))
        hits = faults_hit(server.admin)
        TALLY.add(faults_injected=1)  # the kill
        assert all(code != 0 for code in codes), "cp succeeded on a dead mount"
        assert watcher.partial == [] and sdk_names(sdk) == set(), "a partial File exists"
        assert hits >= 1
        TALLY.add(failed_cleanly=len(codes))

        # The dead mount: `gemfs unmount` takes it down and the directory is usable again.
        assert in_mount_table(m.path)
        proc = m.gemfs("unmount", str(m.path), timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert not in_mount_table(m.path)
        assert os.listdir(m.path) == []
        assert all(p.exists() for p in stale), "staged bytes vanished before any sweep"

        # The next mount on the same mount point and staging root sweeps the dead one's files.
        again = Mount(tmp_path, server).start()
        try:
            assert again.staging == m.staging
            assert not any(p.exists() for p in stale), "stale staging files were not swept"
            assert not stale[0].parent.exists()
            assert "swept 1 stale staging directories" in again.read_log()
            # And it works: the same files go up whole.
            for i, name in enumerate(expected):
                again.sh(f"cp {shq(tmp_path / f'src{i}')} {name}")
            verify_written(sdk, expected)
        finally:
            again.stop()
    finally:
        if not killed:
            m.stop()
        elif in_mount_table(m.path):
            subprocess.run(["fusermount3", "-u", "-z", str(m.path)])


def test_kill_9_during_an_upload(tmp_path, shared_server, sdk):
    """Killed while the middle chunk of three is in flight (the first one is stored)."""
    kill_during_uploads(tmp_path, shared_server, sdk, [2 * CHUNK + MiB],
                        [{"op": "upload_chunk", "skip": 1}])


@pytest.mark.long
def test_kill_9_during_concurrent_uploads(tmp_path, shared_server, sdk):
    """Five uploads, each held at its first chunk or its finalize."""
    kill_during_uploads(tmp_path, shared_server, sdk,
                        [2 * CHUNK + MiB, CHUNK + 3, 3 * CHUNK, 5 * MiB, CHUNK + MiB + 1],
                        [{"op": "upload_chunk"}, {"op": "upload_finalize"}])


def test_staging_disk_full(tmp_path, tmpfs, shared_server, sdk):
    """A 10 MiB cp into a mount staging on a 4 MiB tmpfs: ENOSPC, no upload, the space is given
    back, and a file that fits still goes up."""
    m = Mount(tmp_path, shared_server, extra=("--staging-dir", str(tmpfs))).start()
    try:
        (tmp_path / "big").write_bytes(random_bytes(10 * MiB))
        proc = m.sh(f"cp {shq(tmp_path / 'big')} big.bin", check=False)
        assert proc.returncode != 0
        assert "No space left on device" in proc.stderr, proc.stderr
        assert shared_server.admin.stats()["upload_start"] == 0, "a partial upload was started"
        assert sdk_names(sdk) == set()
        # The kernel sends RELEASE after cp's close() has returned, in the background; until
        # then the failed file is still an open one and listed as such.
        wait_for(lambda: "big.bin" not in m.sh("ls").stdout, timeout=30,
                 what="the failed big.bin gone once its handle is released")
        wait_for(lambda: not staged_parts(tmpfs), timeout=10, what="the staged copy removed")
        TALLY.add(failed_cleanly=1)
        small = random_bytes(300_000)
        (tmp_path / "small").write_bytes(small)
        m.sh(f"cp {shq(tmp_path / 'small')} small.bin")
        verify_written(sdk, {"small.bin": small})
        TALLY.add(survived=1)
    finally:
        m.stop()
