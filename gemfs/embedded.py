"""Start and stop the local Files API server that `gemfs mount --local` talks to.

It runs `gemfs serve` as a child process on 127.0.0.1, so the mount reaches it over HTTP through
the SDK exactly as it reaches the real service. The key is random, made once per data directory
and kept there in a 0600 file, so the same data is the same project at the next mount; it is
handed over as a file, never on a command line, where `ps` would show it.
"""

from __future__ import annotations

import logging
import os
import secrets
import select
import subprocess
import sys
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

    def start(self, timeout: float = 30.0) -> str:
        os.makedirs(self.data_dir, mode=0o700, exist_ok=True)
        self.api_key = self._key()
        stderr = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gemfs", "serve", "--host", "127.0.0.1", "--port", "0",
                 "--data", self.data_dir, "--api-key-file", self.key_file, *self.extra_args],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr,
                text=True, start_new_session=True,
            )
        finally:
            if stderr is not subprocess.DEVNULL:
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
        self.stop()
        raise RuntimeError(f"the local Files API server did not start (data dir {self.data_dir})")

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
