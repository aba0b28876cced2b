"""What /proc says about the process behind a FUSE request: whether it is dying of a signal, its
command name, and whether it (or an ancestor that shares its descriptors) still holds a file open
for writing.

FLUSH comes on every close(2) of a descriptor, from the closing task; the kernel's RELEASE (the
last reference gone) comes later and its result is dropped. So the decisions that must be made
at close and returned to the caller — "is this the last writer?", "did this writer die half-way?"
— are made from what /proc shows while the closing task is still inside close(2): the kernel
waits for the FLUSH answer, so the task and its descriptor table are still there.

Reading /proc never calls into the mount (readlink of /proc/PID/fd/N is resolved by the kernel),
so it is safe from inside a FUSE handler.
"""

from __future__ import annotations

import os

# include/linux/sched.h
PF_EXITING = 0x00000004
PF_SIGNALED = 0x00000400

_ACCMODE = os.O_ACCMODE


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (field 3 onwards), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    # The command name is in parentheses and may itself hold spaces and parentheses.
    return raw[raw.rfind(b")") + 2 :].decode("ascii", "replace").split()


def dying_of_signal(pid: int) -> bool:
    """Whether task `pid` is exiting because a signal killed it (SIGTERM, SIGINT, SIGKILL, ...).

    The kernel sets PF_SIGNALED before it closes a killed task's files; PF_EXITING with a
    signal in the exit code says the same for a thread of a group that a signal took down.
    """
    fields = _stat_fields(pid)
    if not fields or len(fields) < 7:
        return False
    try:
        flags = int(fields[6])
    except ValueError:
        return False
    if flags & PF_SIGNALED:
        return True
    if flags & PF_EXITING and len(fields) >= 50:
        try:
            return int(fields[49]) & 0x7F != 0
        except ValueError:
            return False
    return False


def command(pid: int) -> str:
    """The task's command name (/proc/PID/comm), or '' when it is gone."""
    try:
        with open(f"/proc/{pid}/comm", "rb") as f:
            return f.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""


def _parent(pid: int) -> int:
    fields = _stat_fields(pid)
    try:
        return int(fields[1]) if fields else 0
    except ValueError:
        return 0


def process_of(pid: int) -> int:
    """The process (thread group) id of task `pid`: FUSE names the calling thread."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Tgid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return pid


def holds_for_writing(pid: int, target: str, *, max_depth: int = 16) -> bool:
    """Does task `pid`'s process, or one of its ancestors, hold `target` open for writing?

    This is how "the last writer is done" is told at close: a shell redirect opens the file once
    and every child it forks inherits the descriptor (`for ...; do date; done > f`), and `dd`
    or a shell dup2s and closes its first descriptor before writing. Descriptors pass between
    processes by fork far more than any other way, so the closing process and its ancestors are
    where the other holders are. Readers (thumbnailers, `tail -f`) do not count: their close
    never uploads, so waiting for them would upload nothing at all.
    """
    seen: set[int] = set()
    current = process_of(pid)
    for _ in range(max_depth):
        if current <= 1 or current in seen:
            return False
        seen.add(current)
        if _process_holds(current, target):
            return True
        current = _parent(current)
    return False


def _process_holds(pid: int, target: str) -> bool:
    return any(target == path and not reading
               for path, reading in _open_files(pid, lambda path: path == target))


def reads_named(pid: int, name: str, *, outside: str = "") -> bool:
    """Does task `pid` hold a file called `name` open for reading only, outside the folder
    `outside`? (A `cp` whose source is named like the copy it is making.)"""
    if pid <= 0:
        return False
    inside = outside.rstrip("/") + "/" if outside else None

    def wanted(path: str) -> bool:
        return os.path.basename(path) == name and not (inside and path.startswith(inside))

    return any(reading for _, reading in _open_files(process_of(pid), wanted))


def _open_files(pid: int, wanted):
    """(path, opened read-only) of the descriptors of process `pid` whose path `wanted` takes."""
    folder = f"/proc/{pid}/fd"
    try:
        fds = os.listdir(folder)
    except OSError:
        return
    for fd in fds:
        try:
            path = os.readlink(f"{folder}/{fd}")
            if not wanted(path):
                continue
            with open(f"/proc/{pid}/fdinfo/{fd}", "rb") as f:
                for line in f:
                    if line.startswith(b"flags:"):
                        yield path, int(line.split()[1], 8) & _ACCMODE == os.O_RDONLY
                        break
        except (OSError, ValueError, IndexError):
            continue
