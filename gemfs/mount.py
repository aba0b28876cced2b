"""Mount and unmount: checks before mounting, daemonizing with a readiness pipe, the FUSE loop,
the live status record, and a clean shutdown (uploads in flight finish, then unmount).

The parent process returns only once the mount is live (exit 0) or with one clear line on why
it is not. SIGINT/SIGTERM reach libfuse's own handlers, which stop taking requests and let the
ones being served (an upload in `flush`) finish before the file system is unmounted.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

from gemfs import registry

log = logging.getLogger(__name__)

GB = 1024**3  # the server and the mount count in binary units (docs/SERVER.md)


class MountError(Exception):
    """A reason not to mount, said in one line to the user."""


@dataclass
class MountOptions:
    mountpoint: str
    api_key: str | None = None
    base_url: str | None = None
    local: bool = False
    data_dir: str | None = None
    foreground: bool = False
    list_ttl: float = 30.0
    show_meta: bool = False
    staging_dir: str | None = None
    allow_other: bool = False
    read_only: bool = False
    log_file: str | None = None
    debug: bool = False
    quota: int = 20 * GB
    max_file_size: int = 2 * GB
    retry_deadline: float = 60.0
    request_timeout: float = 120.0
    attr_timeout: float = 1.0
    cache_size: int = 10 * GB
    cache_dir: str | None = None
    state_dir: str | None = None
    wait_active: bool = False
    server_args: tuple[str, ...] = ()


def check_mountpoint(path: str) -> str:
    """The absolute mount point, or a MountError saying what is wrong with it."""
    absolute = registry.canonical(path)
    try:
        st = os.stat(absolute)
    except FileNotFoundError:
        raise MountError(f"{path} does not exist")
    except OSError as e:
        if e.errno == errno.ENOTCONN:
            raise MountError(f"{path} is a stale mount: run gemfs unmount {path}")
        raise MountError(f"{path}: {e.strerror}")
    if not os.path.isdir(absolute):
        raise MountError(f"{path} is not a directory")
    if os.path.ismount(absolute) or _in_mount_table(absolute):
        raise MountError(f"{path} is already a mount point")
    if os.listdir(absolute):
        raise MountError(f"{path} is not an empty directory")
    del st
    return absolute


def _in_mount_table(path: str) -> bool:
    try:
        with open("/proc/self/mounts") as f:
            return any(line.split()[1].replace("\\040", " ") == path for line in f if line.strip())
    except OSError:
        return False


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
    for noisy in ("httpx", "httpx2", "httpcore", "google_genai", "google.genai"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run(opts: MountOptions) -> int:
    """`gemfs mount`: returns the process exit code."""
    try:
        opts.mountpoint = check_mountpoint(opts.mountpoint)
        if not opts.local and not opts.api_key:
            raise MountError("no API key: set GEMINI_API_KEY, or use --api-key-file FILE or --local")
    except MountError as e:
        print(f"gemfs: {e}", file=sys.stderr)
        return 1
    if opts.foreground:
        _configure_logging(opts, to_stderr=True)
        return _serve(opts, ready=lambda: print(f"gemfs: mounted at {opts.mountpoint}", file=sys.stderr),
                      fail=lambda msg: print(f"gemfs: {msg}", file=sys.stderr))
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid:
        os.close(write_fd)
        return _wait_for_child(read_fd, pid)
    # The child: its own session, no terminal, reports readiness through the pipe.
    os.close(read_fd)
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    _configure_logging(opts, to_stderr=False)
    reported = threading.Event()

    def report(line: str) -> None:
        if reported.is_set():
            return
        reported.set()
        try:
            os.write(write_fd, (line + "\n").encode())
            os.close(write_fd)
        except OSError:
            pass

    code = _serve(opts, ready=lambda: report("ok"), fail=lambda msg: report("error " + msg))
    os._exit(code)


def _wait_for_child(read_fd: int, pid: int) -> int:
    with os.fdopen(read_fd) as pipe:
        line = pipe.readline().strip()
    if line == "ok":
        return 0
    if line.startswith("error "):
        print(f"gemfs: {line[6:]}", file=sys.stderr)
    else:
        _, status = os.waitpid(pid, 0)
        print(f"gemfs: the mount daemon exited before the mount was ready (status {status})",
              file=sys.stderr)
    return 1


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


def _serve(opts: MountOptions, ready, fail) -> int:
    """Build everything, mount, and run the FUSE loop until unmount; returns the exit code."""
    from gemfs.fuse_plus import PlusFUSE as FUSE

    _one_malloc_arena()

    from gemfs.catalog import Catalog
    from gemfs.embedded import EmbeddedServer
    from gemfs.fs import GemFS
    from gemfs.remote import Remote
    from gemfs.staging import StagingArea
    from gemfs.cache import ContentCache
    from gemfs.state import StateStore

    server = None
    staging = None
    try:
        base_url, api_key = opts.base_url, opts.api_key
        if opts.local:
            data = opts.data_dir or os.path.join(registry.data_dir(), "local")
            server = EmbeddedServer(data, extra_args=list(opts.server_args), log_file=opts.log_file)
            base_url, api_key = server.start(), server.api_key
        remote = Remote(api_key, base_url, deadline=opts.retry_deadline,
                        request_timeout=opts.request_timeout)
        try:
            first, more = remote.list_page(deadline=min(opts.retry_deadline, 10.0))
        except Exception as e:
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
        staging_root = opts.staging_dir or os.path.join(registry.cache_dir(), "staging")
        staging = StagingArea(staging_root, max_file_size=opts.max_file_size,
                              quota_left=lambda: opts.quota - catalog.used_bytes())
        if staging.swept:
            log.info("swept %d stale staging directories", staging.swept)
        project = registry.project_key(
            f"local:{os.path.realpath(server.data_dir)}" if server else f"{remote.base_url}\0{api_key}")
        cache = ContentCache(os.path.join(opts.cache_dir or os.path.join(registry.cache_dir(), "cache"),
                                          project), opts.cache_size)
        state = StateStore(os.path.join(opts.state_dir or registry.state_dir(), project))
    except (MountError, RuntimeError, OSError) as e:
        fail(str(e))
        if server:
            server.stop()
        return 1

    backend = "local" if opts.local else remote.base_url
    entry = {"pid": os.getpid(), "mountpoint": opts.mountpoint, "backend": backend,
             "base_url": remote.base_url, "started": time.time(), "log_file": opts.log_file,
             "data_dir": server.data_dir if server else None}
    live = threading.Event()
    fs = None

    def on_ready() -> None:
        live.set()
        registry.write(opts.mountpoint, {**entry, "status": fs.status() if fs else {}})
        ready()

    fs = GemFS(remote, catalog, staging, quota=opts.quota, show_meta=opts.show_meta,
               read_only=opts.read_only, attr_timeout=opts.attr_timeout,
               cache=cache if cache.enabled else None, state=state,
               wait_active=opts.wait_active, on_ready=on_ready)
    fs.mountpoint = opts.mountpoint
    fs_ref.append(fs)
    recovered = fs.recover_held()
    if recovered:
        log.info("finished %d held file(s) left by a daemon that died", recovered)
    stop_status = threading.Event()
    threading.Thread(target=_status_loop, args=(opts.mountpoint, entry, fs, live, stop_status),
                     daemon=True, name="gemfs-status").start()
    fuse_options = {"fsname": "gemfs", "subtype": "gemfs", "default_permissions": True}
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
        stop_status.set()
        fs.drain()
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


def unmount(mountpoint: str, timeout: float = 600.0) -> int:
    """`gemfs unmount`: let the daemon finish its uploads and unmount; clean a stale mount."""
    absolute = registry.canonical(mountpoint)
    entry = registry.read(absolute)
    if entry and registry.pid_alive(int(entry["pid"])):
        pid = int(entry["pid"])
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        said = False
        while registry.pid_alive(pid) and time.monotonic() < deadline:
            uploads = ((registry.read(absolute) or {}).get("status") or {}).get("uploads") or []
            if uploads and not said:
                print(f"gemfs: waiting for {len(uploads)} upload(s) to finish", file=sys.stderr)
                said = True
            time.sleep(0.1)
            _reap(pid)
        if registry.pid_alive(pid):
            print(f"gemfs: the daemon (pid {pid}) did not stop within {timeout:.0f}s", file=sys.stderr)
            return 1
        if not _in_mount_table(absolute):
            return 0
    elif not _in_mount_table(absolute):
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
