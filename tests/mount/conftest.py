"""Real mounts for the tests: `gemfs mount` as a subprocess against a `gemfs serve` subprocess.

Each mount gets its own mount point, staging, state and log directories under tmp_path, and is
unmounted in a finally, whatever the test did.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ServerProcess, wait_for  # noqa: F401 (re-exported for the tests)

KEY = "key-a"
OTHER_KEY = "key-b"


def gemfs_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "gemfs", *args]


def isolated_env(root: Path) -> dict:
    env = dict(os.environ)
    for var in ("XDG_STATE_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME"):
        env[var] = str(root / var.lower())
    env.pop("GEMINI_API_KEY", None)
    env.pop("GOOGLE_API_KEY", None)
    return env


def in_mount_table(path: Path) -> bool:
    from gemfs.registry import in_mount_table as table_has

    return table_has(path)


class Mount:
    """One `gemfs mount` daemon on a fresh mount point."""

    def __init__(self, root: Path, server: ServerProcess | None, key: str = KEY, *,
                 extra: tuple[str, ...] = (), local: bool = False, name: str = "mnt") -> None:
        self.root = root
        self.path = root / name
        self.path.mkdir(parents=True, exist_ok=True)
        self.staging = root / f"{name}-staging"
        self.log = root / f"{name}.log"
        self.env = isolated_env(root)
        self.server = server
        self.key = key
        self.args = ["--staging-dir", str(self.staging), "--log-file", str(self.log),
                     "--list-ttl", "1", *extra]
        if local:
            self.args += ["--local", "--data", str(root / "local-data")]
        else:
            keyfile = root / f"{name}.key"
            keyfile.write_text(key + "\n")
            keyfile.chmod(0o600)
            self.args += ["--base-url", server.url, "--api-key-file", str(keyfile)]

    def start(self) -> "Mount":
        proc = subprocess.run(gemfs_cmd("mount", str(self.path), *self.args), env=self.env,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, f"mount failed: {proc.stderr}\n{self.read_log()}"
        assert in_mount_table(self.path)
        return self

    def stop(self) -> None:
        if in_mount_table(self.path):
            proc = subprocess.run(gemfs_cmd("unmount", str(self.path)), env=self.env,
                                  capture_output=True, text=True, timeout=120)
            assert proc.returncode == 0, proc.stderr
        assert not in_mount_table(self.path)

    def read_log(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def sh(self, command: str, *, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run a shell command inside the mount point, as a user would."""
        proc = subprocess.run(["bash", "-c", command], cwd=self.path, capture_output=True,
                              text=True, timeout=timeout, env=self.env)
        if check:
            assert proc.returncode == 0, f"{command!r} failed: {proc.stderr}\n{self.read_log()[-3000:]}"
        return proc

    def status(self) -> str:
        return subprocess.run(gemfs_cmd("status", str(self.path)), env=self.env,
                              capture_output=True, text=True, timeout=30).stdout


@pytest.fixture
def gemfs_server(tmp_path):
    with ServerProcess(tmp_path / "server-data", keys=[KEY, OTHER_KEY]) as server:
        yield server


@pytest.fixture
def admin(gemfs_server):
    return gemfs_server.admin


@pytest.fixture
def mount(tmp_path, gemfs_server):
    m = Mount(tmp_path, gemfs_server).start()
    try:
        yield m
    finally:
        m.stop()


@pytest.fixture
def sdk(gemfs_server):
    return gemfs_server.client(KEY)
