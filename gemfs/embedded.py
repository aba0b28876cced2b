"""Start and stop the local Files API server that `gemfs mount --local` talks to.

It runs `gemfs serve` as a child process on 127.0.0.1, so the mount reaches it over HTTP through
the SDK exactly as it reaches the real service. The key is random, made once per data directory
and kept there in a 0600 file, so the same data is the same project at the next mount; it is
handed over as a file, never on a command line, where `ps` would show it. When it does not
start, the reason the server gave (its last stderr line) is the error, with the pid of the other
server when the data directory is in use.
"""

from __future__ import annotations

import logging
import os
import secrets
import select
import subprocess
import sys
import tempfile
import time

log = logging.getLogger(__name__)

READY_PREFIX = "gemfs serve: listening on "


class EmbeddedServer:
    def __init__(self, data_dir: str, *, extra_args: list[str] | None = None,
                 log_file: str | None = None) -> None:
        self.data_dir = data_dir
        self.extra_args = extra_args or []
        self.log_file = log_file
        self.key_file = os.path.join(data_dir, "embedded-api-key")
        self.api_key = ""
        self.url: str | None = None
        self.proc: subprocess.Popen | None = None
        self._stderr_file = None  # the server's stderr when there is no log file
        self._stderr_path: str | None = None
        self._stderr_start = 0

    def start(self, timeout: float = 30.0) -> str:
        os.makedirs(self.data_dir, mode=0o700, exist_ok=True)
        self.api_key = self._key()
        # Without a log file, stderr goes to an unlinked temporary file: the server writes only
        # warnings there, and its last line is the reason when it does not start.
        stderr = open(self.log_file, "ab") if self.log_file else tempfile.TemporaryFile()
        self._stderr_path = self.log_file
        self._stderr_file = None if self.log_file else stderr
        self._stderr_start = stderr.seek(0, os.SEEK_END)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gemfs", "serve", "--host", "127.0.0.1", "--port", "0",
                 "--data", self.data_dir, "--api-key-file", self.key_file, *self.extra_args],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr,
                text=True, start_new_session=True,
            )
        finally:
            if self.log_file:
                stderr.close()
        self.url = self._wait_ready(timeout)
        log.info("embedded Files API server at %s (data in %s)", self.url, self.data_dir)
        return self.url

    def _key(self) -> str:
        try:
            with open(self.key_file) as f:
                key = f.read().strip()
            if key:
                return key
        except FileNotFoundError:
            pass
        key = secrets.token_urlsafe(32)
        fd = os.open(self.key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key + "\n")
        return key

    def _wait_ready(self, timeout: float) -> str:
        assert self.proc and self.proc.stdout
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.1)
            if ready:
                line = self.proc.stdout.readline()
                if line.startswith(READY_PREFIX):
                    return line[len(READY_PREFIX):].strip().rstrip("/") + "/"
                if not line and self.proc.poll() is not None:
                    break
            elif self.proc.poll() is not None:
                break
        reason = self._why_not_started()
        self.stop()
        raise RuntimeError(reason)

    def _why_not_started(self) -> str:
        said = self._last_stderr_line()
        if "in use by another gemfs server" in said:
            holder = lock_holder(os.path.join(self.data_dir, "lock"))
            return (f"the data directory {self.data_dir} is in use by another gemfs server"
                    + (f" (pid {holder})" if holder else ""))
        reason = f": {said}" if said else ""
        return f"the local Files API server did not start (data dir {self.data_dir}){reason}"

    def _last_stderr_line(self) -> str:
        try:
            if self._stderr_file is not None:
                self._stderr_file.seek(self._stderr_start)
                data = self._stderr_file.read()
            else:
                with open(self._stderr_path, "rb") as f:
                    f.seek(self._stderr_start)
                    data = f.read()
        except (OSError, ValueError):
            return ""
        lines = [line.strip() for line in data.decode(errors="replace").splitlines() if line.strip()]
        return lines[-1] if lines else ""

    def stop(self, timeout: float = 30.0) -> None:
        if self._stderr_file is not None:
            self._stderr_file.close()
            self._stderr_file = None
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def lock_holder(path: str) -> int | None:
    """The pid holding a flock on `path`, from /proc/locks, or None."""
    try:
        st = os.stat(path)
        with open("/proc/locks") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    wanted = f":{st.st_ino}"
    for line in lines:
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF"; blocked waiters have "->" first.
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5].endswith(wanted):
            major, minor = (int(x, 16) for x in fields[5].split(":")[:2])
            if os.makedev(major, minor) == st.st_dev:
                return int(fields[4])
    return None
