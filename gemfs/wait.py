"""`gemfs wait PATH...`: wait until the Files behind paths on a gemfs mount are ACTIVE (a video
is PROCESSING for a while after its upload, and a prompt that uses it before then fails).

Each File's state is read from its `PATH.meta.json` sidecar, polled with backoff (0.2 s doubling
to 5 s). Exit 0 when every File is ACTIVE, 1 when one is FAILED (with the File's error message)
or a path is not a File on a gemfs mount, 2 on timeout. On a terminal, one progress line on
stderr is kept up to date.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable

from gemfs import registry
from gemfs.sidecar import SUFFIX

FIRST_DELAY = 0.2
MAX_DELAY = 5.0

ACTIVE, FAILED = "ACTIVE", "FAILED"


class WaitError(Exception):
    """A path that cannot be waited for; said in one line."""


def gemfs_mount_of(path: str) -> str | None:
    """The gemfs mount point that `path` is under, or None."""
    absolute = os.path.realpath(path)
    best = None
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                fields = line.split()
                if len(fields) < 3 or fields[2] != "fuse.gemfs":
                    continue
                point = registry.unescape_mount_field(fields[1])
                inside = absolute == point or absolute.startswith(point.rstrip("/") + "/")
                if inside and (best is None or len(point) > len(best)):
                    best = point
    except OSError:
        return None
    return best


def check_path(path: str) -> None:
    if gemfs_mount_of(path) is None:
        raise WaitError(f"{path}: not on a gemfs mount")
    if not os.path.lexists(path):
        raise WaitError(f"{path}: no such file")
    if os.path.isdir(path):
        raise WaitError(f"{path}: is a directory, not a File")


def read_state(path: str) -> tuple[str | None, str]:
    """(state, error message) from the sidecar; state None while it cannot be read yet (a file
    still being uploaded has no File, so no state)."""
    try:
        with open(path + SUFFIX, "rb") as f:
            meta = json.loads(f.read())
    except FileNotFoundError:
        if not os.path.lexists(path):
            raise WaitError(f"{path}: no such file (deleted while waiting?)") from None
        return None, ""
    except (OSError, ValueError):
        return None, ""
    error = meta.get("error") or {}
    message = error.get("message", "") if isinstance(error, dict) else str(error)
    return meta.get("state"), message


def wait_all(paths: list[str], *, timeout: float, state_of: Callable[[str], tuple[str | None, str]],
             clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
             progress: Callable[[str], None] | None = None) -> tuple[int, str]:
    """Poll until every path is ACTIVE (0, ""), one is FAILED (1, its line), or `timeout`
    passes (2, the line naming what was still waiting)."""
    start = clock()
    waiting = list(dict.fromkeys(paths))
    states: dict[str, str | None] = {}
    delay = FIRST_DELAY
    while True:
        for path in list(waiting):
            state, message = state_of(path)
            states[path] = state
            if state == ACTIVE:
                waiting.remove(path)
            elif state == FAILED:
                return 1, f"{path}: FAILED" + (f": {message}" if message else "")
        if not waiting:
            return 0, ""
        elapsed = clock() - start
        if elapsed >= timeout:
            still = ", ".join(f"{p} ({states.get(p) or 'no state yet'})" for p in waiting)
            return 2, f"timed out after {timeout:g} s waiting for {still}"
        if progress:
            first = waiting[0]
            progress(f"{len(paths) - len(waiting)} of {len(paths)} ACTIVE; "
                     f"{first}: {states.get(first) or 'no state yet'} ({elapsed:.0f} s)")
        sleep(min(delay, max(timeout - elapsed, 0.0)))
        delay = min(delay * 2, MAX_DELAY)


def run(paths: list[str], timeout: float) -> int:
    try:
        for path in paths:
            check_path(path)
    except WaitError as e:
        print(f"gemfs: {e}", file=sys.stderr)
        return 1
    tty = sys.stderr.isatty()
    shown = [0]

    def progress(line: str) -> None:
        text = "gemfs: waiting: " + line
        pad = max(shown[0] - len(text), 0)
        sys.stderr.write("\r" + text + " " * pad)
        sys.stderr.flush()
        shown[0] = len(text)

    try:
        code, line = wait_all(paths, timeout=timeout, state_of=read_state,
                              progress=progress if tty else None)
    except WaitError as e:
        code, line = 1, str(e)
    finally:
        if shown[0]:
            sys.stderr.write("\r" + " " * shown[0] + "\r")
    if line:
        print(f"gemfs: {line}", file=sys.stderr)
    return code
