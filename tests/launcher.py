"""Runs `gemfs` commands for the tests from a warm interpreter instead of a fresh one.

A `gemfs mount` spends most of its start importing google-genai (about 1.5 s of CPU on the
2-core CI machine), and the suite starts a few hundred mounts and servers. Here a forkserver
(multiprocessing's, single-threaded, started once per test process) imports gemfs and the SDK
once, and each command is a fork of it that runs `gemfs.cli.main(argv)` with the test's
environment, working directory and stdout/stderr files. What runs is the same code as `python -m
gemfs ...`: the CLI, its daemon fork, the FUSE loop; only the interpreter start is shared.

What a fork cannot show stays with a real exec: a process's command line (a forked command's is
the forkserver's), its memory figures (it carries the preloaded modules), and `python -m gemfs`
itself (tests/unit/test_cli.py, tests/server/test_cli.py). Those call `exec_argv` or pass
`fork=False`. `GEMFS_TEST_EXEC=1` makes every command a real exec, to check that the suite does
not depend on the shortcut. What a fork does not take from `env`: the interpreter's own start-up
variables (PYTHONUNBUFFERED, PYTHONIOENCODING...), settled when the forkserver started; and at
its end it leaves by `os._exit`, without waiting for non-daemon threads as an interpreter would.
"""

from __future__ import annotations

import atexit
import gc
import itertools
import multiprocessing
import multiprocessing.util  # noqa: F401 (its exit hook is registered before ours)
import os
import signal
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

# What the forkserver imports before its first fork: everything `gemfs mount` and `gemfs serve`
# import on their way to work (mount.py imports most of it lazily, in _serve), and what their
# libraries import only once running: uvicorn when the server starts, the HTTP clients'
# transports (httpcore, httpcore2, h11) at their first client (found by listing sys.modules in
# a running daemon and server; each forked one imported them again: ~0.04 s of CPU per mount,
# ~0.1 s per server). A name a version no longer has is skipped (the forkserver ignores it).
PRELOAD = [
    "tests.launcher", "gemfs.cli", "gemfs.mount", "gemfs.fuse_plus", "gemfs.fs", "gemfs.remote",
    "gemfs.catalog", "gemfs.cache", "gemfs.state", "gemfs.staging", "gemfs.embedded",
    "gemfs.server.main", "gemfs.server.app",
    "uvicorn.main", "uvicorn.server", "uvicorn.config", "uvicorn.lifespan.on",
    "uvicorn.loops.asyncio", "uvicorn.protocols.http.h11_impl",
    "uvicorn.protocols.websockets.websockets_sansio_impl", "uvicorn.supervisors",
    "anyio._backends._asyncio", "anyio.streams.tls", "logging.config",
    "httpcore", "httpcore2", "h11", "truststore", "google.auth.aio.credentials", "encodings.idna",
]

_context = None
_runs = itertools.count()
_started: list = []  # every Forked of this process, for _kill_leftovers


atexit.register(lambda: _kill_leftovers())  # after multiprocessing's (imported above): runs first


def forking() -> bool:
    return os.environ.get("GEMFS_TEST_EXEC", "") in ("", "0")


def exec_argv(*args: str) -> list[str]:
    """The command line of a real `gemfs` process."""
    return [sys.executable, "-m", "gemfs", *args]


def _ctx():
    global _context
    if _context is None:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD)
        _context = ctx
    return _context


def warm_up() -> None:
    """Start the forkserver now without waiting for it: its preload then runs while the caller
    does other work, on the other core (the first `spawn` waits for it as usual)."""
    if forking():
        from multiprocessing import forkserver

        _ctx()
        forkserver.ensure_running()


def _child(argv: list[str], env: dict, cwd: str, stdout: str, stderr: str,
           new_session: bool = False) -> None:
    """The forked command: the environment, directory, session and file descriptors `subprocess`
    would give it, then the CLI; never returns into multiprocessing (its exit code is the CLI's)."""
    code = 1
    # The forkserver's preloaded modules are never garbage: frozen, a full collection in the
    # command does not walk them (nor copy the pages it would touch). ~4% of a mount test's CPU.
    gc.freeze()
    try:
        if new_session:  # as Popen(start_new_session=True): out of the terminal's Ctrl-C
            os.setsid()
        os.environ.clear()
        os.environ.update(env)
        os.chdir(cwd)
        for fd, path, flags in ((0, os.devnull, os.O_RDONLY),
                                (1, stdout, os.O_WRONLY | os.O_CREAT | os.O_APPEND),
                                (2, stderr, os.O_WRONLY | os.O_CREAT | os.O_APPEND)):
            opened = os.open(path, flags, 0o600)
            os.dup2(opened, fd)
            os.close(opened)
        # Nothing else of the forkserver's: its pipes to the test process and to multiprocessing's
        # resource tracker would otherwise live on in a mount daemon, and keep those alive.
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))
        # As a fresh interpreter has them: Ctrl-C is KeyboardInterrupt (cli.main says
        # "interrupted", 130), SIGTERM ends the process.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        sys.argv = ["gemfs", *argv]
        from gemfs.cli import main

        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            if not isinstance(e.code, int) and e.code is not None:
                print(e.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001 (a crash is the command's exit status 1, as python's)
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001
                pass
        os._exit(code if isinstance(code, int) else 1)


class Forked:
    """A forked `gemfs` command, with the part of `subprocess.Popen` the tests use."""

    def __init__(self, process) -> None:
        self._process = process
        self.pid = process.pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None and not self._process.is_alive():
            self._process.join()
            self.returncode = self._process.exitcode
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if self.poll() is None:
            raise subprocess.TimeoutExpired(["gemfs"], timeout or 0)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def spawn(argv: list[str], *, env: dict, stdout: Path, stderr: Path, cwd: Path = REPO_ROOT,
          fork: bool = True, new_session: bool = False):
    """Start `gemfs ARGV` with stdout and stderr appended to files: a `Forked`, or a `Popen` of
    a real exec without `fork` (or with GEMFS_TEST_EXEC=1). `new_session`: in a session of its
    own, as `Popen(start_new_session=True)`."""
    if not (fork and forking()):
        with open(stdout, "ab") as out, open(stderr, "ab") as err:
            return subprocess.Popen(exec_argv(*argv), stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=err, cwd=cwd, env=env, start_new_session=new_session)
    process = _ctx().Process(target=_child, args=(list(argv), dict(env), str(cwd), str(stdout),
                                                  str(stderr), new_session), daemon=True)
    process.start()
    forked = Forked(process)
    _started.append(forked)
    return forked


def _kill_leftovers() -> None:
    """At the test process's exit, before multiprocessing's own exit hook (atexit runs the last
    registered first), which SIGTERMs daemonic children and joins them with no timeout: a
    command a test left running (a server, `mount -f`) is SIGKILLed, so the join cannot hang."""
    for forked in _started:
        try:
            forked.kill()
        except (OSError, ValueError):
            pass


def run(argv: list[str], *, env: dict, timeout: float, scratch: Path, cwd: Path = REPO_ROOT,
        fork: bool = True, new_session: bool = False) -> subprocess.CompletedProcess:
    """`subprocess.run(gemfs ARGV, capture_output=True, text=True)`, forked from the warm
    interpreter (output goes through files under `scratch`), or a real exec without `fork`.
    `new_session` as in `spawn`."""
    if not (fork and forking()):
        return subprocess.run(exec_argv(*argv), env=env, capture_output=True, text=True,
                              timeout=timeout, cwd=cwd, start_new_session=new_session)
    scratch.mkdir(parents=True, exist_ok=True)
    n = next(_runs)
    out, err = scratch / f"out-{os.getpid()}-{n}", scratch / f"err-{os.getpid()}-{n}"
    for path in (out, err):
        path.write_bytes(b"")
    proc = spawn(argv, env=env, stdout=out, stderr=err, cwd=cwd, new_session=new_session)
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
    try:
        return subprocess.CompletedProcess(argv, code, out.read_text(errors="replace"),
                                           err.read_text(errors="replace"))
    finally:
        out.unlink(missing_ok=True)
        err.unlink(missing_ok=True)
