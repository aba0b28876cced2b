"""Mount and unmount: the mount options and their defaults (the one place they are written),
checks before mounting, daemonizing with a readiness pipe, telling systemd (sd_notify), the FUSE
loop, the live status record and status socket, and a clean shutdown (uploads in flight finish,
then unmount).

The parent process returns only once the mount is live (exit 0) or with one clear line on why
it is not; waits of more than a moment (an unreachable server) are said on stderr while they
last. SIGINT/SIGTERM reach libfuse's own handlers, which stop taking requests and let the ones
being served (an upload in `flush`) finish before the file system is unmounted.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

from gemfs import registry

log = logging.getLogger(__name__)

MiB = 1024**2  # the server and the mount count in binary units (docs/SERVER.md)
GiB = 1024**3

# libfuse 3.14 warns "Ignoring invalid max threads value 4294967295" on every mount unless the
# idle-thread limit is given; 10 is what libfuse used before the option existed.
MAX_IDLE_THREADS = 10
CHECK_DEADLINE = 10.0  # the key check at mount retries an unreachable server this long at most


class MountError(Exception):
    """A reason not to mount, said in one line to the user."""


@dataclass
class MountOptions:
    """Everything `gemfs mount` takes; the defaults here are the only copy (cli.py reads them).
    Directories left None are the XDG defaults, filled in by `resolve_dirs`."""

    mountpoint: str
    api_key: str | None = None
    base_url: str | None = None
    local: bool = False
    data_dir: str | None = None
    foreground: bool = False
    list_ttl: float = 30.0
    show_meta: bool = False
    staging_dir: str | None = None  # default ~/.cache/gemfs/staging
    cache_dir: str | None = None  # default ~/.cache/gemfs/cache
    state_dir: str | None = None  # default ~/.local/state/gemfs
    cache_size: int = 10 * GiB  # 0: no cache
    wait_active: bool = False
    allow_other: bool = False
    read_only: bool = False
    log_file: str | None = None
    debug: bool = False
    quota: int = 20 * GiB
    max_file_size: int = 2 * GiB
    # A file written under its own name starts uploading while it is still written once it holds
    # this much, one chunk (gemfs/streaming.py): its close then waits for the last chunk only.
    # Smaller files go up whole at the close, their size declared at the start as the SDK does.
    # 0: every file goes up at its close.
    stream_from: int = 8 * MiB
    retry_deadline: float = 60.0
    request_timeout: float = 120.0
    attr_timeout: float = 1.0
    server_args: tuple[str, ...] = ()

    def resolve_dirs(self) -> None:
        """Fill in the default directories (for this process's HOME and XDG variables)."""
        cache = registry.cache_dir()
        self.staging_dir = _absolute(self.staging_dir) or os.path.join(cache, "staging")
        self.cache_dir = _absolute(self.cache_dir) or os.path.join(cache, "cache")
        self.state_dir = _absolute(self.state_dir) or registry.default_state_dir()
        if self.local:
            self.data_dir = _absolute(self.data_dir) or os.path.join(registry.data_dir(), "local")


DEFAULTS = MountOptions(mountpoint="")


def _absolute(path: str | None) -> str | None:
    return os.path.abspath(os.path.expanduser(path)) if path else None


def check_mountpoint(path: str) -> str:
    """The absolute mount point, or a MountError saying what is wrong with it."""
    absolute = registry.canonical(path)
    on_top = registry.mount_table_entry(absolute)
    if on_top and on_top[1] == "autofs":
        # systemd's automount point (x-systemd.automount): the first access to it started this
        # mount, which goes on top of it. Listing it would wait for this very mount.
        return absolute
    try:
        os.stat(absolute)
    except FileNotFoundError:
        raise MountError(f"{path} does not exist")
    except OSError as e:
        if e.errno == errno.ENOTCONN:
            raise MountError(f"{path} is a stale mount: run gemfs unmount {path}")
        raise MountError(f"{path}: {e.strerror}")
    if not os.path.isdir(absolute):
        raise MountError(f"{path} is not a directory")
    if os.path.ismount(absolute) or registry.in_mount_table(absolute):
        raise MountError(f"{path} is already a mount point")
    try:
        if os.listdir(absolute):
            raise MountError(f"{path} is not an empty directory")
    except PermissionError:
        raise MountError(f"{path}: permission denied")
    return absolute


def _configure_logging(opts: MountOptions, to_stderr: bool) -> None:
    level = logging.DEBUG if opts.debug else logging.INFO
    handlers: list[logging.Handler] = []
    if opts.log_file:
        handlers.append(logging.FileHandler(opts.log_file))
    if to_stderr:
        handlers.append(logging.StreamHandler(sys.stderr))
    if not handlers:
        handlers.append(logging.NullHandler())
    logging.basicConfig(level=level, handlers=handlers, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The HTTP clients log URLs (upload URLs carry a session token) and, at debug, connection
    # internals; gemfs logs each API call itself, so they stay quiet even with --debug.
    # mfusepy ("fuse") logs every refused operation with a traceback at debug; gemfs's own
    # fuse_op logs each one in a line, so an expected EACCES or ENOENT is never a traceback.
    for noisy in ("httpx", "httpx2", "httpcore", "google_genai", "google.genai", "fuse"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run(opts: MountOptions) -> int:
    """`gemfs mount`: returns the process exit code."""
    try:
        opts.mountpoint = check_mountpoint(opts.mountpoint)
        if not opts.local and not opts.api_key:
            raise MountError("no API key: set GEMINI_API_KEY, or use --api-key-file FILE or --local")
        opts.resolve_dirs()
    except MountError as e:
        print(f"gemfs: {e}", file=sys.stderr)
        return 1
    if opts.foreground:
        _configure_logging(opts, to_stderr=True)
        return _serve(opts, ready=lambda: print(f"gemfs: mounted at {opts.mountpoint}", file=sys.stderr),
                      fail=lambda msg: print(f"gemfs: {msg}", file=sys.stderr),
                      say=lambda msg: print(f"gemfs: {msg}", file=sys.stderr))
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid:
        os.close(write_fd)
        return _wait_for_child(read_fd, pid)
    # The child: its own session, no terminal, reports through the pipe: "wait ..." lines while
    # it waits for the server, then one "ok" or "error ..." line.
    os.close(read_fd)
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    _configure_logging(opts, to_stderr=False)
    reported = threading.Event()
    pipe_lock = threading.Lock()  # guards write_fd: one line at a time, none after the last

    def send(line: str, last: bool) -> None:
        with pipe_lock:
            if reported.is_set():
                return
            try:
                os.write(write_fd, (line.replace("\n", " ") + "\n").encode())
                if last:
                    reported.set()
                    os.close(write_fd)
            except OSError:
                reported.set()

    code = _serve(opts, ready=lambda: send("ok", True), fail=lambda msg: send("error " + msg, True),
                  say=lambda msg: send("wait " + msg, False))
    os._exit(code)


def _wait_for_child(read_fd: int, pid: int) -> int:
    with os.fdopen(read_fd) as pipe:
        for raw in pipe:
            line = raw.strip()
            if line.startswith("wait "):
                print(f"gemfs: {line[5:]}", file=sys.stderr, flush=True)
                continue
            if line == "ok":
                return 0
            if line.startswith("error "):
                print(f"gemfs: {line[6:]}", file=sys.stderr)
                return 1
            break
    _, status = os.waitpid(pid, 0)
    print(f"gemfs: the mount daemon exited before the mount was ready (status {status})",
          file=sys.stderr)
    return 1


def sd_notify(message: str) -> bool:
    """Tell systemd (Type=notify units) about the daemon, by hand over $NOTIFY_SOCKET, as
    sd_notify(3) does; False when not run by systemd or the socket is gone."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address or address[0] not in "/@":
        return False
    if address[0] == "@":  # the abstract namespace
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
        return True
    except OSError as e:
        log.warning("could not notify systemd: %s", e)
        return False


def _short_reason(failure) -> str:
    """`connection refused`, `503 UNAVAILABLE`: what a waiting line says about a failure."""
    if failure.code:
        return f"{failure.code} {failure.status}".strip()
    text = re.sub(r"^\w+: ", "", failure.message)
    text = re.sub(r"\[Errno -?\d+\] ", "", text).strip()
    return (text[:1].lower() + text[1:]) or "no answer"


def _check_key(remote, budget: float, say) -> tuple[list, bool]:
    """The first `files.list` page: checks the key and the server. An unreachable or failing
    server is retried for `budget` seconds, and the wait is said once through `say`."""
    from gemfs.errors import GemfsError

    end = None
    delay = 0.25
    while True:
        try:
            return remote.list_page(deadline=0)
        except GemfsError as e:
            failure = e.failure
            if failure is None or not failure.retryable:
                raise
            now = time.monotonic()
            if end is None:
                end = now + budget
                say(f"waiting for {remote.base_url}: {_short_reason(failure)} "
                    f"(retrying for {budget:.0f} s)")
            if now + delay >= end:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


def _describe_check_failure(exc: Exception, base_url: str) -> str:
    failure = getattr(exc, "failure", None)
    if failure is None:
        return f"the Files API check failed: {exc}"
    if failure.reason == "API_KEY_INVALID":
        return "API key not valid"
    if failure.code == 0:
        return f"cannot reach {base_url} ({failure.message})"
    if failure.code in (401, 403):
        return f"the API key was refused: {failure.code} {failure.status} {failure.message}"
    return f"the Files API check failed: {failure}"


# glibc's M_ARENA_MAX (malloc.h): how many malloc arenas threads may spread over.
_M_ARENA_MAX = -8


def _one_malloc_arena() -> None:
    """Keep the SDK's 8 MiB upload chunk buffers from piling up in per-thread malloc arenas.

    Each FUSE worker thread that ran an upload got its own arena, and each arena kept its freed
    chunk buffers: the daemon grew by about 20 MB per 1 GiB upload (58 MB idle, 121 MB after
    three; bench/run.py big_upload). With one arena the same buffer is reused by every upload
    and the peak stays at ~82 MB. (A fixed 4 MiB mmap threshold kept it flat too, but paid
    ~0.3 s per GiB in page faults for a fresh mapping per chunk.) Python's own small objects
    come from its allocator, so one arena costs little contention.
    """
    try:
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
        libc.mallopt(_M_ARENA_MAX, 1)
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


def _serve(opts: MountOptions, ready, fail, say=lambda msg: None) -> int:
    """Build everything, mount, and run the FUSE loop until unmount; returns the exit code."""
    from gemfs.fuse_plus import LIBFUSE_VERSION, PlusFUSE as FUSE

    # Which FUSE features a later version could use (passthrough needs 3.16), in every log.
    log.info("libfuse %d.%d", *LIBFUSE_VERSION)

    _one_malloc_arena()

    from gemfs.catalog import Catalog
    from gemfs.embedded import EmbeddedServer
    from gemfs.errors import GemfsError
    from gemfs.fs import GemFS
    from gemfs.remote import Remote
    from gemfs.staging import StagingArea
    from gemfs.cache import ContentCache
    from gemfs.state import StateStore

    server = None
    staging = None
    remote = None
    try:
        base_url, api_key = opts.base_url, opts.api_key
        if opts.local:
            server = EmbeddedServer(opts.data_dir, extra_args=list(opts.server_args),
                                    log_file=opts.log_file)
            base_url, api_key = server.start(), server.api_key
        remote = Remote(api_key, base_url, deadline=opts.retry_deadline,
                        request_timeout=opts.request_timeout)
        try:
            first, more = _check_key(remote, min(opts.retry_deadline, CHECK_DEADLINE), say)
        except GemfsError as e:
            raise MountError(_describe_check_failure(e, remote.base_url)) from e
        fs_ref: list = []

        def listing():
            # A full listing also tells the cache and state store which Files are gone.
            started = time.time()
            records = remote.list_all()
            if fs_ref:
                fs_ref[0].reconcile(records, started)
            return records

        catalog = Catalog(listing, ttl=opts.list_ttl)
        if not more:
            catalog.install(first, time.time())
        staging = StagingArea(opts.staging_dir, max_file_size=opts.max_file_size,
                              quota_left=lambda: opts.quota - catalog.used_bytes())
        if staging.swept:
            log.info("swept %d stale staging directories", staging.swept)
        project = registry.project_key(
            f"local:{os.path.realpath(server.data_dir)}" if server else f"{remote.base_url}\0{api_key}")
        cache = ContentCache(os.path.join(opts.cache_dir, project), opts.cache_size)
        state = StateStore(os.path.join(opts.state_dir, project))
    except (MountError, RuntimeError, OSError) as e:
        fail(str(e))
        if server:
            server.stop()
        if remote:
            remote.close()
        return 1

    backend = "local" if opts.local else remote.base_url
    live = threading.Event()
    fs = None
    control = StatusSocket(lambda: fs.status() if fs and live.is_set() else None)
    entry = {"pid": os.getpid(), "mountpoint": opts.mountpoint, "backend": backend,
             "base_url": remote.base_url, "started": time.time(), "log_file": opts.log_file,
             "data_dir": server.data_dir if server else None, "control": control.name}

    def on_ready() -> None:
        live.set()
        registry.write(opts.mountpoint, {**entry, "status": fs.status() if fs else {}})
        sd_notify(f"READY=1\nMAINPID={os.getpid()}\nSTATUS=mounted at {opts.mountpoint}")
        ready()

    fs = GemFS(remote, catalog, staging, quota=opts.quota, show_meta=opts.show_meta,
               read_only=opts.read_only, attr_timeout=opts.attr_timeout,
               cache=cache if cache.enabled else None, state=state,
               wait_active=opts.wait_active, on_ready=on_ready,
               stream_from=opts.stream_from or None)
    fs.mountpoint = opts.mountpoint
    fs_ref.append(fs)
    recovered = fs.recover_held()
    if recovered:
        log.info("finished %d held file(s) left by a daemon that died", recovered)
    stop_status = threading.Event()
    threading.Thread(target=_status_loop, args=(opts.mountpoint, entry, fs, live, stop_status),
                     daemon=True, name="gemfs-status").start()
    control.start()
    fuse_options = {"fsname": "gemfs", "subtype": "gemfs", "default_permissions": True,
                    "max_idle_threads": MAX_IDLE_THREADS}
    if opts.allow_other:
        fuse_options["allow_other"] = True
    if opts.read_only:
        fuse_options["ro"] = True
    code = 0
    try:
        FUSE(fs, opts.mountpoint, foreground=True, nothreads=False, debug=False, **fuse_options)
    except RuntimeError as e:
        if not live.is_set():
            fail(f"could not mount {opts.mountpoint} ({e}); is FUSE available (/dev/fuse, fuse3)?")
            code = 1
        # else: libfuse stopped on a signal after unmounting, which is a clean stop.
    finally:
        if live.is_set():
            sd_notify("STOPPING=1")
        stop_status.set()
        control.close()
        fs.drain()
        fs.cancel_streams()
        fs.upload_held()
        staging.close()
        cache.close()
        state.close()
        registry.remove(opts.mountpoint)
        if server:
            server.stop()
        remote.close()
    log.info("unmounted %s", opts.mountpoint)
    return code


def _status_loop(mountpoint: str, entry: dict, fs, live: threading.Event, stop: threading.Event) -> None:
    last = None
    while not stop.wait(0.5):
        if not live.is_set():
            continue
        status = fs.status()
        if status != last:
            try:
                registry.write(mountpoint, {**entry, "status": status})
            except OSError as e:
                log.debug("could not write status: %s", e)
            last = status


class StatusSocket:
    """The daemon's live status, answered on a unix socket in the abstract namespace, so
    `gemfs status` shows counts as they are now, not as the record last written (up to 0.5 s
    old, so a `gemfs status` right after an `rm` showed the old count).

    Each connection gets one JSON line of `fs.status()` and is closed. Only the user who runs the
    daemon (and root) is answered: the abstract namespace has no file permissions, so the peer's
    uid is checked (SO_PEERCRED).
    """

    def __init__(self, status) -> None:
        self._status = status
        self.name = f"gemfs-status-{os.getpid()}-{os.urandom(6).hex()}"
        self._sock: socket.socket | None = None

    def start(self) -> None:
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            sock.bind("\0" + self.name)
            sock.listen(8)
        except OSError as e:  # `gemfs status` falls back to the record
            log.warning("no live status socket: %s", e)
            return
        self._sock = sock
        threading.Thread(target=self._serve, daemon=True, name="gemfs-status-socket").start()

    def _serve(self) -> None:
        while self._sock is not None:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with conn:
                try:
                    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                            struct.calcsize("3i"))
                    _, uid, _ = struct.unpack("3i", creds)
                    if uid not in (os.getuid(), 0):
                        continue
                    status = self._status()
                    if status is not None:
                        conn.settimeout(2.0)
                        conn.sendall(json.dumps(status).encode() + b"\n")
                except OSError as e:
                    log.debug("status socket: %s", e)

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


def live_status(name: str, timeout: float = 2.0) -> dict | None:
    """Ask a daemon's status socket (its record's `control`) for its status now; None if it
    does not answer (an older daemon, one that is stopping, or not ours)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(timeout)
            sock.connect("\0" + name)
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        return json.loads(data) if data else None
    except (OSError, ValueError):
        return None


def unmount(mountpoint: str, timeout: float = 600.0) -> int:
    """`gemfs unmount`: let the daemon finish its uploads and unmount; clean a stale mount."""
    absolute = registry.canonical(mountpoint)
    entry = registry.read(absolute)
    if entry and registry.pid_alive(int(entry["pid"])):
        pid = int(entry["pid"])
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        quiet_until = time.monotonic() + 3.0  # a wait longer than this is said
        said = False
        while registry.pid_alive(pid) and time.monotonic() < deadline:
            uploads = ((registry.read(absolute) or {}).get("status") or {}).get("uploads") or []
            # A file still being written is not closed: the unmount cancels its stream.
            uploads = [u for u in uploads if not u.get("writing")]
            if uploads and not said:
                print(f"gemfs: waiting for {len(uploads)} upload(s) to finish", file=sys.stderr)
                said = True
            elif not said and time.monotonic() > quiet_until:
                print(f"gemfs: waiting for the daemon (pid {pid}) to finish and unmount "
                      f"(up to {timeout:.0f} s)", file=sys.stderr)
                said = True
            time.sleep(0.1)
            _reap(pid)
        if registry.pid_alive(pid):
            print(f"gemfs: the daemon (pid {pid}) did not stop within {timeout:.0f}s", file=sys.stderr)
            return 1
        if not registry.in_mount_table(absolute):
            return 0
    elif not registry.in_mount_table(absolute):
        registry.remove(absolute)
        print(f"gemfs: {mountpoint} is not mounted", file=sys.stderr)
        return 1
    # No daemon (killed) or it left the mount behind: a stale mount to take down.
    registry.remove(absolute)
    fusermount = shutil.which("fusermount3") or shutil.which("fusermount")
    for cmd in ([fusermount, "-u", absolute], [fusermount, "-u", "-z", absolute], ["umount", "-l", absolute]):
        if cmd[0] and subprocess.run(cmd, capture_output=True).returncode == 0:
            return 0
    print(f"gemfs: could not unmount {mountpoint}", file=sys.stderr)
    return 1


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
