"""Load (issue 5, part 3): 8 writers and 4 listers at once on two mounts of the same project,
for a set number of rounds, with transient faults sprinkled in; then every byte is accounted for.

The load is a number of operations, not a time: a 12-second load ran 421 `cp` on an idle machine
and far fewer in a busy `make test`, taking its CPU from the tests beside it; a count covers the
same ground on any machine.

The guarantees: every `cp` that exited 0 is one whole File (sha256 through the SDK) and every
`rm` that exited 0 left no File; nothing else is listed; `ls -lR` never fails under load (except
for a file that a concurrent `rm` removed between readdir and stat, which is POSIX); each
mount shows the other's files and deletes after the listing TTL.
"""

from __future__ import annotations

import os
import random
import subprocess
import threading
import time
from typing import Callable

import pytest

from tests.reliability.conftest import (
    CHUNK,
    KEY,
    MiB,
    Mount,
    TALLY,
    delete_all,
    faults_hit,
    random_bytes,
    shq,
    verify_written,
    wait_for,
)

TTL = 1.0  # --list-ttl of both mounts
# How long to poll for what another mount did before calling it lost: a guard against a hang,
# not a latency claim (how soon it shows is told by the count of listings, below).
HANG_GUARD = 60.0
# An access to a snapshot older than the TTL starts one listing in the background; the first
# listing sent after a change has it, and an access while it runs may start one more.
LISTINGS_TO_SEE_A_CHANGE = 2
# Transient faults during the load: each is survived by a retry.
LOAD_FAULTS = (
    {"op": "upload_start", "action": "error", "status": 503, "times": 3, "skip": 2},
    {"op": "upload_finalize", "action": "reset", "times": 2, "skip": 5},
    {"op": "upload_chunk", "action": "error", "status": 429, "times": 1},
    {"op": "list", "action": "error", "status": 503, "times": 2, "skip": 1},
    {"op": "delete", "action": "error", "status": 500, "times": 1},
)


def two_mounts(root, server):
    extra = ("--list-ttl", str(TTL), "--retry-deadline", "30")
    a = Mount(root, server, name="a", extra=extra).start()
    try:
        b = Mount(root, server, name="b", extra=extra).start()
    except BaseException:
        a.stop()
        raise
    return a, b


def seen_by(mount: Mount, shown: Callable[[], bool], what: str) -> None:
    """Poll `mount` until `shown`, and check it took a listing of its own, and no more than a
    TTL-driven refresh costs: the change came through the listing, not a remount, and not late.
    The server counts the project's listings, so one more is allowed: the other mount's own
    command may have started a background refresh (its snapshot past the TTL) that lands in
    the window."""
    lists = mount.server.admin.stats()["list"]
    wait_for(shown, timeout=HANG_GUARD, what=what)
    made = mount.server.admin.stats()["list"] - lists
    assert 1 <= made <= LISTINGS_TO_SEE_A_CHANGE + 1, f"{what}: after {made} listings"


def files_in(mount: Mount) -> set[str]:
    out = subprocess.run(["find", ".", "-type", "f"], cwd=mount.path, capture_output=True,
                         text=True, timeout=60)
    return {line[2:] for line in out.stdout.splitlines()}


def only_vanished_files(stderr: str) -> bool:
    """ls -lR may lose a race with a concurrent rm (readdir, then lstat of a deleted name)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    return all("No such file or directory" in line for line in lines)


def run_load(root, server, sdk, *, rounds: int, max_size: int, big_every: int,
             writers_within: float) -> None:
    """Each writer copies `rounds` files and removes every fourth; the listers `ls -lR` until
    the last writer is done. A writer not done within `writers_within` seconds (below the
    test's own timeout, so that this says so and not the timeout) fails the test."""
    a, b = two_mounts(root, server)
    mounts = (a, b)
    lock = threading.Lock()
    written: dict[str, bytes] = {}
    failures: list[str] = []
    counts = {"cp": 0, "rm": 0, "ls": 0}
    writing = threading.Event()
    writing.set()

    def writer(i: int) -> None:
        try:
            write(i)
        except Exception as e:  # noqa: BLE001 (a cp that timed out, a full disk: the test's failure)
            with lock:
                failures.append(f"writer {i}: {e!r}")

    def write(i: int) -> None:
        m, rng = mounts[i % 2], random.Random(i)
        mine: list[str] = []
        (m.path / f"w{i}").mkdir()
        for j in range(rounds):
            big = big_every and j % big_every == big_every - 1
            size = rng.randint(CHUNK + 1, CHUNK + 2 * MiB) if big else rng.choice(
                [0, rng.randint(1, 4096), rng.randint(4096, max_size)])
            data = random_bytes(size)
            src = root / f"src-{i}-{j}"
            src.write_bytes(data)
            name = f"w{i}/f{j}.bin"
            proc = subprocess.run(["cp", str(src), str(m.path / name)], capture_output=True,
                                  text=True, timeout=180)
            src.unlink()
            with lock:
                if proc.returncode == 0:
                    written[name] = data
                    counts["cp"] += 1
                    mine.append(name)
                else:
                    failures.append(f"cp {name}: {proc.stderr.strip()}")
            if j % 4 == 3 and mine:
                victim = mine.pop(rng.randrange(len(mine)))
                proc = subprocess.run(["rm", str(m.path / victim)], capture_output=True,
                                      text=True, timeout=120)
                with lock:
                    if proc.returncode == 0:
                        del written[victim]
                        counts["rm"] += 1
                    else:
                        failures.append(f"rm {victim}: {proc.stderr.strip()}")

    def lister(k: int) -> None:
        m = mounts[k % 2]
        while writing.is_set():
            proc = subprocess.run(["ls", "-lR", "."], cwd=m.path, capture_output=True, text=True,
                                  timeout=60)
            with lock:
                counts["ls"] += 1
                if proc.returncode != 0 and not only_vanished_files(proc.stderr):
                    failures.append(f"ls -lR: {proc.stderr.strip()}")

    server.admin.set_faults(*LOAD_FAULTS)
    try:
        # Daemon threads: a test stopped by its timeout in the middle leaves none running.
        writers = [threading.Thread(target=writer, args=(i,), daemon=True) for i in range(8)]
        listers = [threading.Thread(target=lister, args=(k,), daemon=True) for k in range(4)]
        for t in writers + listers:
            t.start()
        deadline = time.monotonic() + writers_within
        for t in writers:
            t.join(max(deadline - time.monotonic(), 0))
        writing.clear()
        for t in listers:
            t.join(HANG_GUARD)
        assert not any(t.is_alive() for t in writers + listers), "a writer or lister hangs"
        hits = faults_hit(server.admin)
        assert failures == [], failures
        assert counts["cp"] == 8 * rounds and counts["ls"] >= 4, counts
        assert hits >= 5, "the load did not meet its faults"
        # Both mounts converge on the same tree, which is exactly what was written.
        for m in mounts:
            wait_for(lambda m=m: files_in(m) == set(written), timeout=HANG_GUARD,
                     what=f"{m.path.name} to show every file")
        verify_written(sdk, written)
        TALLY.add(survived=counts["cp"] + counts["rm"] + counts["ls"])
        print(f"load: {rounds} rounds, {counts['cp']} cp, {counts['rm']} rm, {counts['ls']} ls -lR, "
              f"{hits} faults, {sum(map(len, written.values()))} bytes kept and verified")
    finally:
        writing.clear()  # whatever ended the test (its timeout too), the listers stop
        server.admin.clear_faults()
        for m in mounts:
            m.stop()
        delete_all(sdk)  # the long run writes gigabytes; pytest keeps its tmp_path around


@pytest.mark.heavy(10)
def test_load_8_writers_4_listers(tmp_path, shared_server, sdk):
    run_load(tmp_path, shared_server, sdk, rounds=16, max_size=2 * MiB, big_every=0,
             writers_within=80)  # pyproject's timeout is 120 s


@pytest.mark.long
@pytest.mark.timeout(1800)  # 254 s alone on the idle 2-core machine
def test_load_8_writers_4_listers_long(tmp_path, shared_server, sdk):
    run_load(tmp_path, shared_server, sdk, rounds=400, max_size=4 * MiB, big_every=6,
             writers_within=1500)


def test_two_mounts_see_each_others_files_and_deletes(tmp_path, shared_server, sdk):
    a, b = two_mounts(tmp_path, shared_server)
    try:
        x, y = random_bytes(70_000), random_bytes(90_000)
        (tmp_path / "x.bin").write_bytes(x)
        (tmp_path / "y.bin").write_bytes(y)
        for here, there, name in ((a, b, "x.bin"), (b, a, "y.bin")):
            here.sh(f"cp {shq(tmp_path / name)} ./")
            seen_by(there, lambda: name in os.listdir(there.path), f"{name} in the other mount")
            meta = (there.path / f"{name}.meta.json").read_text()
            assert '"sizeBytes": "%d"' % len(x if name == "x.bin" else y) in meta
        b.sh("rm x.bin")
        seen_by(a, lambda: "x.bin" not in os.listdir(a.path), "the delete in the other mount")
        verify_written(sdk, {"y.bin": y})
        TALLY.add(survived=3)
    finally:
        a.stop()
        b.stop()
