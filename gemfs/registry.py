"""Where running mounts record themselves (pid, backend, live status) for `gemfs unmount` and
`gemfs status`: one JSON file per mount point under the user's state directory, mode 0600; and
the one reading of the kernel's mount table."""

from __future__ import annotations

import hashlib
import json
import os
import re
import time


def default_state_dir(environ: dict | None = None) -> str:
    """Where the records live for a process with this environment (the current one by default)."""
    env = os.environ if environ is None else environ
    home = env.get("HOME") or os.path.expanduser("~")
    base = env.get("XDG_STATE_HOME") or os.path.join(home, ".local", "state")
    return os.path.join(base, "gemfs")


def state_dir() -> str:
    # Always the XDG place, whatever `gemfs mount --state-dir` says (that one is the daemon's own
    # working state): `gemfs status` and `gemfs unmount` must find every mount's record.
    path = default_state_dir()
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


def data_dir() -> str:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "gemfs")


def cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "gemfs")


def project_key(identity: str) -> str:
    """A file-name-safe key for one project's local state and cache. `identity` holds the API key
    (or the embedded server's data dir); only a hash of it is ever written anywhere."""
    return hashlib.sha256(identity.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def canonical(mountpoint: str) -> str:
    """The mount point with symlinks resolved in its parent only: touching the mount point itself
    from inside the daemon (e.g. during FUSE init) would wait on the mount being set up."""
    absolute = os.path.abspath(mountpoint)
    return os.path.join(os.path.realpath(os.path.dirname(absolute)), os.path.basename(absolute))


def record_key(mountpoint: str) -> str:
    """The record's file name (without `.json`) for a mount point: the one place it is computed."""
    return hashlib.sha1(canonical(mountpoint).encode()).hexdigest()[:16]


def record_file(mountpoint: str, state: str | None = None) -> str:
    """The record's path under the state directory `state` (default: this process's)."""
    return os.path.join(state or state_dir(), "mounts", record_key(mountpoint) + ".json")


def _entry_path(mountpoint: str) -> str:
    path = record_file(mountpoint)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    return path


def unescape_mount_field(field: str) -> str:
    """A /proc/self/mounts field as the path it names: the kernel writes space, tab, newline and
    backslash as octal escapes (\\040, \\011, \\012, \\134)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mount_table_entry(path: str) -> tuple[str, str] | None:
    """(source, type) of the last mount on exactly `path` in /proc/self/mounts, or None."""
    found = None
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 3 and unescape_mount_field(fields[1]) == str(path):
                    found = (unescape_mount_field(fields[0]), fields[2])
    except OSError:
        return None
    return found


def in_mount_table(path) -> bool:
    """Whether something is mounted on exactly `path` (a str or Path, absolute)."""
    return mount_table_entry(str(path)) is not None


def write(mountpoint: str, entry: dict) -> None:
    """Replace the mount's record atomically, so a reader never sees half of it."""
    path = _entry_path(mountpoint)
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({**entry, "written": time.time()}, f)
    os.replace(tmp, path)


def read(mountpoint: str) -> dict | None:
    try:
        with open(_entry_path(mountpoint)) as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def remove(mountpoint: str) -> None:
    try:
        os.unlink(_entry_path(mountpoint))
    except FileNotFoundError:
        pass


def all_entries() -> list[dict]:
    folder = os.path.join(state_dir(), "mounts")
    entries = []
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if name.endswith(".json"):
            try:
                with open(os.path.join(folder, name)) as f:
                    entries.append(json.load(f))
            except (OSError, json.JSONDecodeError):
                continue
    return entries


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A daemon that has exited stays a zombie until its parent (init, for a detached daemon)
    # reaps it; kill(0) still succeeds then, and `gemfs unmount` waited ~1 s more for nothing.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except (OSError, IndexError):
        return True
