"""Where running mounts record themselves (pid, backend, live status) for `gemfs unmount` and
`gemfs status`: one JSON file per mount point under the user's state directory, mode 0600."""

from __future__ import annotations

import hashlib
import json
import os
import time


def state_dir() -> str:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    path = os.path.join(base, "gemfs")
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


def _entry_path(mountpoint: str) -> str:
    key = hashlib.sha1(canonical(mountpoint).encode()).hexdigest()[:16]
    folder = os.path.join(state_dir(), "mounts")
    os.makedirs(folder, mode=0o700, exist_ok=True)
    return os.path.join(folder, key + ".json")


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
