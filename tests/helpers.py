"""Shared test helpers: `ServerProcess` runs `gemfs serve` as a subprocess and talks to it (the
SDK for the public API, httpx for the admin API); `InProcessServer` offers the same interface
over the server's ASGI app run in the test's own process (no socket, no process start);
`MountProcess` runs a `gemfs mount` daemon on a fresh mount point; `wait_for` polls a
condition with a deadline.

Other test folders and bench/run.py import these (`from tests.helpers import ServerProcess`).
"""

from __future__ import annotations

import functools
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx

from gemfs import registry
from tests import launcher

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parent.parent
LISTENING_RE = re.compile(r"^gemfs serve: listening on (http://\S+)$")
DEFAULT_KEYS = ("key-a", "key-b")
ADMIN = "/_gemfs/admin"

_create_default_context = ssl.create_default_context


@functools.cache
def _shared_context(purpose, cafile, capath, cadata):
    return _create_default_context(purpose, cafile=cafile, capath=capath, cadata=cadata)


def shared_default_context(purpose=ssl.Purpose.SERVER_AUTH, *, cafile=None, capath=None,
                           cadata=None):
    """`ssl.create_default_context`, made once per set of arguments and then shared. The test
    servers speak plain http, but every httpx client builds a TLS context unless given one, and
    every google-genai Client four, each reading certifi's CA bundle (~50 ms of CPU apiece): the
    admin API makes a client per call, the tests a few hundred SDK clients. ServerProcess.http
    passes it; tests/conftest.py installs it as `ssl.create_default_context` in the test
    processes (the gemfs processes they start build their own)."""
    try:
        return _shared_context(purpose, cafile, capath, cadata)
    except TypeError:  # unhashable cadata: as asked
        return _create_default_context(purpose, cafile=cafile, capath=capath, cadata=cadata)


class FakeTime:
    """A monotonic clock that moves only when the code under test sleeps (or a test moves
    `now`): pass `clock` and `sleep` to what takes them, and read `sleeps` afterwards."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def wait_for(
    condition: Callable[[], T], *, timeout: float = 10.0, interval: float = 0.02, what: str = ""
) -> T:
    """Polls `condition` until it returns something truthy and returns that; fails the test
    after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(interval)


def delete_all(sdk) -> None:
    """Deletes every File of the SDK client's project."""
    for f in list(sdk.files.list(config={"page_size": 100})):
        sdk.files.delete(name=f.name)


def as_new(server, *keys: str) -> None:
    """A server shared between tests as a new one looks to the next: no fault rules, no Files in
    the projects of `keys`, zeroed request counts."""
    server.admin.clear_faults()
    for key in keys:
        delete_all(server.client(key))
    server.admin.reset_stats()


class AdminClient:
    """The server's /_gemfs/admin/ API (needs `--admin`)."""

    def __init__(self, server: ServerProcess | InProcessServer) -> None:
        self._server = server

    def _call(self, method: str, path: str, *, key: str | None = None, **kwargs: Any) -> Any:
        headers = kwargs.pop("headers", {})
        if key is not None:
            headers["x-goog-api-key"] = key
        with self._server.http(timeout=60) as http:
            response = http.request(method, ADMIN + path, headers=headers, **kwargs)
        if response.status_code != 200:
            raise AssertionError(f"admin {method} {path}: {response.status_code} {response.text}")
        return response.json()

    def stats(self) -> dict[str, int]:
        return self._call("GET", "/stats")["requests"]

    def reset_stats(self) -> None:
        self._call("POST", "/stats/reset")

    def set_faults(self, *rules: dict[str, Any]) -> list[dict[str, Any]]:
        return self._call("POST", "/faults", json={"rules": list(rules)})["rules"]

    def faults(self) -> list[dict[str, Any]]:
        return self._call("GET", "/faults")["rules"]

    def clear_faults(self) -> None:
        self._call("DELETE", "/faults")

    def generated(
        self,
        key: str,
        data: bytes,
        *,
        display_name: str | None = None,
        mime_type: str = "application/octet-stream",
        name: str | None = None,
    ) -> dict[str, Any]:
        """Creates a GENERATED File holding `data`; returns its JSON."""
        params = {"mimeType": mime_type}
        if display_name is not None:
            params["displayName"] = display_name
        if name is not None:
            params["name"] = name
        return self._call("POST", "/generated", key=key, params=params, content=data)

    def seed(
        self,
        key: str,
        count: int,
        *,
        prefix: str = "seed/",
        size: int = 1024,
        mime_type: str = "text/plain",
    ) -> dict[str, Any]:
        body = {
            "count": count,
            "displayNamePrefix": prefix,
            "sizeBytes": size,
            "mimeType": mime_type,
        }
        return self._call("POST", "/seed", key=key, json=body)

    def fail(
        self, key: str, name: str, *, code: int | None = None, message: str | None = None
    ) -> dict[str, Any]:
        """Makes the File `name` FAILED from now on (with a google.rpc.Status); returns it."""
        body: dict[str, Any] = {"name": name}
        if code is not None:
            body["code"] = code
        if message is not None:
            body["message"] = message
        return self._call("POST", "/fail", key=key, json=body)

    def advance_clock(self, seconds: float) -> dict[str, Any]:
        """Moves the server's clock forward (and runs the sweep)."""
        return self._call("POST", "/clock", json={"advanceSeconds": seconds})


class ServerProcess:
    """`python -m gemfs serve --port 0 --data DATA_DIR --admin ...` for one test.

    Keys go through `--api-key-file` (written next to the data directory), stderr to a log file
    next to it. Forked from a warm interpreter (tests/launcher.py) unless `fork=False`.
    `restart()` keeps the data directory and asks for the same port again; if that
    port was taken meanwhile the server comes back on a new one and `.url` changes.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        keys: Sequence[str] = DEFAULT_KEYS,
        args: Iterable[str] = (),
        admin: bool = True,
        startup_timeout: float = 30.0,
        fork: bool = True,
    ) -> None:
        self.data_dir = Path(data_dir)
        # forked from a warm interpreter (tests/launcher.py) unless told otherwise (bench/run.py's
        # full run: it measures the process)
        self.fork = launcher.forking() and fork
        self.keys = tuple(keys)
        self.args = list(args)
        self.admin_enabled = admin
        self.startup_timeout = startup_timeout
        self.key_file = self.data_dir.with_name(self.data_dir.name + ".keys")
        self.log_file = self.data_dir.with_name(self.data_dir.name + ".log")
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.port = 0
        self.admin = AdminClient(self)

    # --- lifecycle ----------------------------------------------------------------------------

    def command(self, port: int) -> list[str]:
        cmd = [
            sys.executable,
            "-m",
            "gemfs",
            "serve",
            "--port",
            str(port),
            "--data",
            str(self.data_dir),
        ]
        if self.admin_enabled:
            cmd.append("--admin")
        if self.keys:
            cmd += ["--api-key-file", str(self.key_file)]
        return cmd + self.args

    def start(self, port: int = 0) -> ServerProcess:
        assert self.proc is None, "already running"
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        if self.keys:
            self.key_file.write_text("".join(k + "\n" for k in self.keys))
        # Forked from a warm interpreter unless self.fork is off (tests/launcher.py); stdout goes
        # to a file the listening line is read from.
        out = self.log_file.with_suffix(".out")
        out.write_bytes(b"")
        self.proc = launcher.spawn(self.command(port)[3:], env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                   stdout=out, stderr=self.log_file, fork=self.fork)
        self.url = self._await_listening_in(out)
        self.port = int(self.url.rsplit(":", 1)[1])
        return self

    def _await_listening_in(self, out: Path) -> str:
        deadline = time.monotonic() + self.startup_timeout
        while True:
            for line in out.read_text(errors="replace").splitlines():
                m = LISTENING_RE.match(line)
                if m:
                    return m.group(1)
            if self.proc.poll() is not None:
                code, self.proc = self.proc.returncode, None
                raise AssertionError(
                    f"server exited with {code} before listening:\n{self.stderr_text()}")
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"server did not start in time:\n{self.stderr_text()}")
            time.sleep(0.01)

    def stop(self, timeout: float = 15.0, *, check: bool = True) -> int:
        """SIGTERM and wait; with `check`, asserts the clean exit status 0."""
        if self.proc is None:
            return 0
        proc, self.proc = self.proc, None
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError(f"server ignored SIGTERM for {timeout}s") from None
        if check:
            assert code == 0, f"server exited with {code}:\n{self.stderr_text()}"
        return code

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def restart(self) -> ServerProcess:
        port = self.port
        self.stop()
        log_size = len(self.stderr_text())
        try:
            return self.start(port)
        except AssertionError:
            if "cannot listen" not in self.stderr_text()[log_size:]:
                raise
            return self.start(0)

    def __enter__(self) -> ServerProcess:
        return self.start() if self.proc is None else self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.stop()
        else:
            self.stop(check=False)

    # --- introspection ------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stderr_text(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def peak_rss_bytes(self) -> int:
        """VmHWM of the server process."""
        status = Path(f"/proc/{self.pid}/status").read_text()
        kb = int(re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE).group(1))
        return kb * 1024

    # --- clients ------------------------------------------------------------------------------

    def client(self, key: str, **http_options: Any) -> Any:
        """A real `google.genai.Client` pointed at this server."""
        from google import genai
        from google.genai import types

        return genai.Client(
            api_key=key, http_options=types.HttpOptions(base_url=self.url, **http_options)
        )

    def http(self, **kwargs: Any) -> httpx.Client:
        """A plain httpx client with this server as base URL (for raw wire checks)."""
        kwargs.setdefault("verify", shared_default_context())
        return httpx.Client(base_url=self.url, timeout=kwargs.pop("timeout", 60), **kwargs)


class InProcessServer:
    """The server's ASGI app in this process, for tests that need no socket: the options are
    parsed as `gemfs serve` parses them, and requests go through Starlette's `TestClient`
    transport (the app runs on a portal thread with its lifespan). Offers what tests use of
    `ServerProcess`: `.url`, `.data_dir`, `.client(key)`, `.http()`, `.admin`, `.restart()`,
    `.stop()`, and `.store` for looking inside.

    What needs a real connection stays with `ServerProcess`: raw-socket wire checks, faults that
    reset or close the connection, the CLI, signals, restarts after a kill, memory figures, and
    clients that bring their own transport (the async SDK, node).
    """

    url = "http://testserver"

    def __init__(
        self,
        data_dir: Path,
        *,
        keys: Sequence[str] = DEFAULT_KEYS,
        args: Iterable[str] = (),
        admin: bool = True,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.keys = tuple(keys)
        self.args = list(args)
        self.admin_enabled = admin
        self.key_file = self.data_dir.with_name(self.data_dir.name + ".keys")
        self.admin = AdminClient(self)
        self.store: Any = None
        self._test_client: Any = None

    def start(self) -> InProcessServer:
        from starlette.testclient import TestClient

        from gemfs.cli import build_parser
        from gemfs.server import main as server_main
        from gemfs.server.app import create_app
        from gemfs.server.store import Clock, Store

        assert self._test_client is None, "already running"
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        argv = ["serve", "--data", str(self.data_dir)]
        if self.admin_enabled:
            argv.append("--admin")
        if self.keys:
            self.key_file.write_text("".join(k + "\n" for k in self.keys))
            argv += ["--api-key-file", str(self.key_file)]
        config = server_main.config_from_args(build_parser().parse_args(argv + self.args))
        self.store = Store(config.data_dir, limits=server_main.store_limits(config), clock=Clock())
        try:
            client = TestClient(
                create_app(config, self.store), base_url=self.url, raise_server_exceptions=True
            )
            client.__enter__()  # runs the lifespan (the sweep task)
        except BaseException:
            self.store.close()
            raise
        self._test_client = client
        return self

    def stop(self) -> None:
        if self._test_client is not None:
            client, self._test_client = self._test_client, None
            try:
                client.__exit__(None, None, None)
            finally:
                self.store.close()

    def restart(self) -> InProcessServer:
        self.stop()
        return self.start()

    def __enter__(self) -> InProcessServer:
        return self.start() if self._test_client is None else self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.stop()

    def client(self, key: str, **http_options: Any) -> Any:
        """A real `google.genai.Client` whose requests reach the app in process."""
        from google import genai
        from google.genai import types

        return genai.Client(
            api_key=key,
            http_options=types.HttpOptions(
                base_url=self.url, httpx_client=self.http(), **http_options
            ),
        )

    def http(self, **kwargs: Any) -> Any:
        """A plain httpx client whose requests reach the app in process: an `httpx2.Client`
        (the httpx fork Starlette's TestClient is built on) on the TestClient's transport."""
        import httpx2

        assert self._test_client is not None, "not running"
        return httpx2.Client(
            base_url=self.url,
            transport=self._test_client._transport,
            timeout=kwargs.pop("timeout", 60),
            **kwargs,
        )


def gemfs_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "gemfs", *args]


def isolated_env(root: Path) -> dict:
    """The environment with its own XDG state, cache and data dirs under `root`, and no API key:
    a mount's record and staging sweep never mix with the user's own mounts."""
    env = dict(os.environ)
    for var in ("XDG_STATE_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME"):
        env[var] = str(root / var.lower())
    env.pop("GEMINI_API_KEY", None)
    env.pop("GOOGLE_API_KEY", None)
    return env


def in_mount_table(path: Path) -> bool:
    return registry.in_mount_table(path)


class MountProcess:
    """One `gemfs mount` daemon on a fresh mount point, as a user starts it.

    Its mount point, staging dir, log and key file are under `root` (named after `name`), its
    XDG dirs too (`isolated_env`). `server` is a ServerProcess, or None with `local=True`.
    Its `gemfs` commands are forked from a warm interpreter (tests/launcher.py) unless
    `fork=False`: a real exec, for tests of what a process shows (its command line).
    """

    mount_timeout = 60.0  # how long `gemfs mount` may take to return

    def __init__(self, root: Path, server: ServerProcess | None, key: str = DEFAULT_KEYS[0], *,
                 extra: Iterable[str] = (), local: bool = False, name: str = "mnt",
                 list_ttl: float | None = 1.0, fork: bool = True) -> None:
        self.root = root
        self.fork = fork  # its gemfs commands forked from a warm interpreter (tests/launcher.py)
        self.path = root / name
        self.path.mkdir(parents=True, exist_ok=True)
        self.staging = root / f"{name}-staging"
        self.log = root / f"{name}.log"
        self.env = isolated_env(root)
        self.server = server
        self.key = key
        self.args = ["--staging-dir", str(self.staging), "--log-file", str(self.log)]
        if list_ttl is not None:
            self.args += ["--list-ttl", str(list_ttl)]
        self.args += list(extra)
        if local:
            self.args += ["--local", "--data", str(root / "local-data")]
        else:
            keyfile = root / f"{name}.key"
            keyfile.write_text(key + "\n")
            keyfile.chmod(0o600)
            self.args += ["--base-url", server.url, "--api-key-file", str(keyfile)]

    def gemfs(self, *args: str, timeout: float) -> subprocess.CompletedProcess:
        """Run a gemfs command with this mount's environment (forked from a warm interpreter:
        tests/launcher.py)."""
        return launcher.run(list(args), env=self.env, timeout=timeout,
                            scratch=self.root / f"{self.path.name}-cli", fork=self.fork)

    def start(self) -> MountProcess:
        proc = self.gemfs("mount", str(self.path), *self.args, timeout=self.mount_timeout)
        assert proc.returncode == 0, f"mount failed: {proc.stderr}\n{self.read_log()}"
        assert in_mount_table(self.path)
        return self

    def stop(self) -> None:
        if in_mount_table(self.path):
            proc = self.gemfs("unmount", str(self.path), timeout=120)
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
        """What `gemfs status MOUNTPOINT` prints."""
        return self.gemfs("status", str(self.path), timeout=30).stdout

    def record(self) -> dict:
        """The daemon's registry record (pid, backend, last status), as `gemfs status` reads it."""
        path = registry.record_file(str(self.path), registry.default_state_dir(self.env))
        return json.loads(Path(path).read_text())
