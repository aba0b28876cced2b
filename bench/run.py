"""`make bench`: time gemfs against the google-genai SDK on the same local `gemfs serve`, and report
medians, ratios and targets as a table on stdout and as JSON under bench/results/.

Cases (the README's "Performance" section says what each one means):
  big_upload   `cp` of a 1 GiB file into the mount vs `files.upload` of it; peak RSS of the
               mount daemon and of the server while it runs
  small_files  `cp -r` of 500 files of 64 KiB vs an SDK upload loop, server at --latency-ms 20;
               the same files by 8 parallel `cp` processes (`xargs -P 8`)
  listing      5,000 Files seeded into the server (a benchmark fixture: metadata only, through
               the admin API): the first `ls -l` after mount, a second one, one after the
               listing TTL, vs iterating `files.list(page_size=100)`; API requests counted by
               the server
  probes       10,000 `stat` calls of names that do not exist: time and API requests

Each case (each run, where a run needs a fresh mount) starts its own server on a fresh data
directory under a temporary directory and its own mount, and takes both down in a `finally`,
Ctrl-C included. They are real `python -m gemfs` processes, since they are measured; `--quick`
(a smoke test, whose figures are not compared) forks them from one warm interpreter instead, as
the tests do (tests/launcher.py), which saves each the interpreter start and the SDK's imports. Request counts come from the server's admin API (/_gemfs/admin/stats), so they
count what reached the wire, whichever client sent it.

    python -m bench.run                  # every case, 3 runs each, medians
    python -m bench.run --quick          # tiny sizes, 1 run: development and the smoke test
    python -m bench.run --case listing --runs 5
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import math
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tests import launcher
from tests.helpers import MountProcess, ServerProcess, in_mount_table, wait_for

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "bench" / "results"
# A key for the benchmark's own throwaway servers (GEMFS_BENCH_KEY lets the smoke test check
# that it never shows): it still never goes on a command line or into the output; the mount
# reads it from a 0600 file, the server from --api-key-file.
KEY = os.environ.get("GEMFS_BENCH_KEY") or "bench-" + hashlib.sha256(os.urandom(16)).hexdigest()[:16]
MiB = 1024**2
GiB = 1024**3
MB = 1000**2
CASES = ("big_upload", "small_files", "listing", "probes", "resume")
# Ops that name one File: a listing must need none of them (the "per-file calls").
PER_FILE_OPS = ("get", "download")


@dataclass(frozen=True)
class Sizes:
    big_bytes: int
    small_count: int
    small_bytes: int
    parallel: int
    latency_ms: int  # small_files, listing and probes: a WAN-like round trip for both sides
    list_count: int
    list_ttl: float
    probe_count: int


FULL = Sizes(big_bytes=GiB, small_count=500, small_bytes=64 * 1024, parallel=8, latency_ms=20,
             list_count=5000, list_ttl=2.0, probe_count=10_000)
# Small enough for the smoke test (< 30 s for all four cases on a busy 2-core machine), big
# enough that every code path (several list pages, several upload chunks) still runs.
QUICK = Sizes(big_bytes=20 * MiB, small_count=16, small_bytes=64 * 1024, parallel=8,
              latency_ms=20, list_count=250, list_ttl=1.0, probe_count=500)


# -- output --------------------------------------------------------------------------------------


class Progress:
    """One line per step on stderr, with the time since the start; long steps tick."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self._lock = threading.Lock()

    def say(self, text: str) -> None:
        with self._lock:
            print(f"[bench {time.monotonic() - self.t0:7.1f}s] {text}", file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def ticking(self, what: str, detail: Callable[[], str] | None = None,
                every: float = 5.0) -> Iterator[None]:
        """Say `what`, then every `every` seconds how long it has run (and `detail()`)."""
        self.say(what + " ...")
        stop = threading.Event()
        started = time.monotonic()

        def tick() -> None:
            while not stop.wait(every):
                extra = ""
                if detail is not None:
                    try:
                        extra = ", " + detail()
                    except Exception:  # a progress line must never break the measurement
                        extra = ""
                self.say(f"  ... {what}: {time.monotonic() - started:.0f}s{extra}")

        thread = threading.Thread(target=tick, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()


@dataclass
class Row:
    """One line of the table: a measure of gemfs, the SDK's counterpart, and its target."""

    case: str
    measure: str
    unit: str
    gemfs: float | None
    sdk: float | None
    target: str
    passed: bool | None  # None: shown for information, no target
    ratio: float | None = None
    requests: dict[str, dict[str, int]] = field(default_factory=dict)
    samples: dict[str, list[float]] = field(default_factory=dict)
    note: str = ""


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def short_requests(counts: dict[str, int] | None) -> str:
    if counts is None:
        return ""
    names = {"upload_start": "start", "upload_chunk": "chunk", "upload_finalize": "final"}
    parts = [f"{names.get(op, op)} {n}" for op, n in counts.items() if n]
    return ", ".join(parts) or "0"


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "MB":
        return f"{value:.0f} MB"
    if unit == "x":
        return f"{value:.2f}x"
    if unit == "pages":
        return f"{value:g} page{'' if value == 1 else 's'}"
    if unit == "s" and value < 0.1:
        return f"{value * 1000:.1f} ms"
    return f"{value:.2f} s" if unit == "s" else f"{value:g} {unit}"


def table_lines(rows: list[Row], markdown: bool = False) -> list[str]:
    header = ["case", "measure", "gemfs", "SDK", "ratio", "target", "result",
              "requests: gemfs", "requests: SDK"]
    body = []
    for r in rows:
        result = "info" if r.passed is None else ("PASS" if r.passed else "MISS")
        body.append([r.case, r.measure.strip(), fmt(r.gemfs, r.unit), fmt(r.sdk, r.unit),
                     "-" if r.ratio is None else f"{r.ratio:.2f}", r.target or "-", result,
                     short_requests(r.requests.get("gemfs")) or "-",
                     short_requests(r.requests.get("sdk")) or "-"])
    if markdown:
        out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        out += ["| " + " | ".join(cells) + " |" for cells in body]
        return out
    widths = [max(len(row[i]) for row in [header] + body) for i in range(len(header))]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return [line(header), line(["-" * w for w in widths])] + [line(b) for b in body]


def show(path: Path) -> int:
    """Print the tables of a saved run again (for the README), without measuring anything."""
    data = json.loads(path.read_text())
    rows = [Row(**row) for case in data["cases"].values() for row in case]
    print(f"{data['command']} ({data['started']}); {describe_machine(data['machine'])}")
    print("\n".join(table_lines(rows)))
    print()
    print("\n".join(table_lines(rows, markdown=True)))
    return 0


# -- machine -------------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    """What the figures were measured on (goes into the JSON and the README)."""
    from importlib import metadata

    cpu = ""
    with contextlib.suppress(OSError):
        m = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu = m.group(1).strip() if m else platform.processor()
    ram = 0
    with contextlib.suppress(OSError, AttributeError):
        ram = int(re.search(r"^MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text(),
                            re.M).group(1)) * 1024
    libfuse = ""
    with contextlib.suppress(Exception):
        import mfusepy

        libfuse = f"{mfusepy.fuse_version_major}.{mfusepy.fuse_version_minor}"
    fusermount = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        fusermount = subprocess.run(["fusermount3", "-V"], capture_output=True, text=True,
                                    timeout=5).stdout.strip()

    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return ""

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_bytes": ram,
        "kernel": platform.release(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "mfusepy": version("mfusepy"),
        "libfuse": libfuse,
        "fusermount3": fusermount,
        "google_genai": version("google-genai"),
        "loadavg_start": os.getloadavg(),
    }


def describe_machine(info: dict[str, Any]) -> str:
    return (f"{info['cpu']}, {info['cores']} cores, {info['ram_bytes'] / GiB:.1f} GiB RAM, "
            f"Linux {info['kernel']}, Python {info['python']}, mfusepy {info['mfusepy']}, "
            f"libfuse {info['libfuse']}, google-genai {info['google_genai']}")


# -- processes -----------------------------------------------------------------------------------


def peak_rss(pid: int) -> int:
    """VmHWM: the most resident memory the process has had (since start or the last reset)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmHWM:\s+(\d+) kB", status, re.M).group(1)) * 1024


def reset_peak_rss(pid: int) -> bool:
    """Resets VmHWM (Linux >= 4.0), so each run measures its own peak, not an earlier one's."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


@contextlib.contextmanager
def sigint_deferred() -> Iterator[None]:
    """Hold Ctrl-C back while starting or taking down a mount, then raise it: a mount started
    halfway, or an unmount cut short, would be left behind."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if pending:
            raise KeyboardInterrupt


class BenchServer(ServerProcess):
    """`gemfs serve --admin` with the benchmark's one key (tests/helpers.py does the work), as a
    real `python -m gemfs serve` process, since the benchmark measures it; with `fork` (--quick
    only) forked from the warm interpreter of tests/launcher.py, as the tests' servers are."""

    def __init__(self, data_dir: Path, latency_ms: int = 0, *, fork: bool = False) -> None:
        args = ["--latency-ms", str(latency_ms)] if latency_ms else []
        super().__init__(data_dir, keys=[KEY], args=args, fork=fork)

    def requests(self) -> dict[str, int]:
        return self.admin.stats()

    def sdk(self):
        return self.client(KEY)


class BenchMount(MountProcess):
    """The tests' mount (tests/helpers.py) with the benchmark's key, no forced listing TTL, and
    `gemfs mount`/`unmount` kept safe from Ctrl-C. Its commands are real `python -m gemfs`
    processes, since the benchmark measures the daemon; with `fork` (--quick only) forked from
    the warm interpreter of tests/launcher.py, as the tests' mounts are."""

    mount_timeout = 120.0

    def __init__(self, root: Path, server: ServerProcess, *, list_ttl: float | None = None,
                 name: str = "mnt", fork: bool = False) -> None:
        super().__init__(root, server, KEY, name=name, list_ttl=list_ttl, fork=fork)
        self.pid = 0

    def gemfs(self, *args: str, timeout: float) -> subprocess.CompletedProcess:
        # Its own session: a Ctrl-C in the terminal must not kill `gemfs mount` after it forked
        # the daemon (which would then mount unseen), nor `gemfs unmount` halfway.
        with sigint_deferred():
            return launcher.run(list(args), env=self.env, timeout=timeout, cwd=REPO_ROOT,
                                scratch=self.root / f"{self.path.name}-cli", fork=self.fork,
                                new_session=True)

    def start(self) -> BenchMount:
        proc = self.gemfs("mount", str(self.path), *self.args, timeout=self.mount_timeout)
        if proc.returncode != 0 or not in_mount_table(self.path):
            raise RuntimeError(f"gemfs mount failed: {proc.stderr.strip()}\n{self.log_tail()}")
        self.pid = int(self.record()["pid"])
        return self

    def status(self) -> dict[str, Any]:
        """The daemon's live status record (uploads in flight, listing age), as `gemfs status`."""
        try:
            return self.record().get("status") or {}
        except (OSError, ValueError):
            return {}

    def stop(self) -> None:
        if not in_mount_table(self.path):
            return
        proc = self.gemfs("unmount", "--timeout", "300", str(self.path), timeout=330)
        if proc.returncode != 0 or in_mount_table(self.path):
            # Last resort, so no mount of ours is left behind whatever happened.
            subprocess.run(["fusermount3", "-u", "-z", str(self.path)], capture_output=True)
            raise RuntimeError(f"gemfs unmount failed: {proc.stderr.strip()}")

    def log_tail(self, n: int = 3000) -> str:
        return self.read_log()[-n:]


def sh(command: list[str] | str, *, cwd: Path | None = None, capture: bool = False,
       timeout: float = 1800) -> subprocess.CompletedProcess:
    """Run a user tool (cp, ls, xargs); fail loudly with its stderr."""
    proc = subprocess.run(command, cwd=cwd, shell=isinstance(command, str), text=True,
                          stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
                          stderr=subprocess.PIPE, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{command!r} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def timed(server: BenchServer, fn: Callable[[], Any]) -> tuple[float, dict[str, int], Any]:
    """Seconds `fn` took, the API requests the server saw meanwhile, and what `fn` returned."""
    server.admin.reset_stats()
    t0 = time.perf_counter()
    result = fn()
    elapsed = time.perf_counter() - t0
    return elapsed, server.requests(), result


def nonzero(counts: dict[str, int]) -> dict[str, int]:
    return {op: n for op, n in counts.items() if n}


# -- the cases -----------------------------------------------------------------------------------


class Bench:
    def __init__(self, sizes: Sizes, runs: int, progress: Progress, *, fork: bool = False) -> None:
        self.sizes = sizes
        self.runs = runs
        self.p = progress
        # --quick: servers and mounts forked from one warm interpreter (tests/launcher.py), which
        # saves each a start of Python and google-genai's imports (~1.5 s of CPU); the full
        # bench keeps real execs, because it measures those processes (peak RSS above all).
        self.fork = fork
        self.extra: dict[str, dict[str, Any]] = {}

    @contextlib.contextmanager
    def scope(self, case: str) -> Iterator[tuple[contextlib.ExitStack, Path]]:
        """A temp dir and an ExitStack for the case's servers and mounts, unwound (in reverse:
        mounts, servers, then the temp dir) even on Ctrl-C."""
        root = Path(tempfile.mkdtemp(prefix=f"gemfs-bench-{case}-"))
        with self.cleanup() as stack:
            stack.callback(self._remove_tree, root)
            yield stack, root

    @contextlib.contextmanager
    def cleanup(self) -> Iterator[contextlib.ExitStack]:
        """An ExitStack closed with Ctrl-C held back (and raised once it is closed), so a second
        Ctrl-C cannot leave a mount or a server behind."""
        stack = contextlib.ExitStack()
        try:
            yield stack
        finally:
            with sigint_deferred():
                stack.close()

    def _remove_tree(self, root: Path) -> None:
        with open("/proc/self/mounts") as f:
            left = [line.split()[1] for line in f if line.split()[1].startswith(str(root))]
        if left:  # never recurse into a live mount: that would delete remote Files
            self.p.say(f"WARNING: still mounted, not removing {root}: {left}")
            return
        shutil.rmtree(root, ignore_errors=True)

    def server(self, stack: contextlib.ExitStack, root: Path, name: str,
               latency_ms: int = 0) -> BenchServer:
        server = BenchServer(root / name, latency_ms, fork=self.fork)
        stack.callback(lambda: server.stop(check=False))  # before start: Ctrl-C may come then
        server.start()
        self.p.say(f"  server up at {server.url} (latency {latency_ms} ms, data {root / name})")
        return server

    def mount(self, stack: contextlib.ExitStack, root: Path, server: BenchServer,
              name: str = "mnt", list_ttl: float | None = None) -> BenchMount:
        mount = BenchMount(root, server, list_ttl=list_ttl, name=name, fork=self.fork)
        stack.callback(mount.stop)  # a no-op unless it got mounted
        mount.start()
        self.p.say(f"  mounted {mount.path} (daemon pid {mount.pid})")
        return mount

    resume = lambda self: __import__("bench.resume", fromlist=["case"]).case(self)  # noqa: E731

    # -- 1. big upload ---------------------------------------------------------------------------

    def big_upload(self) -> list[Row]:
        size = self.sizes.big_bytes
        with self.scope("big") as (stack, root):
            src = root / "big.bin"
            with self.p.ticking(f"big_upload: writing the {size / MiB:.0f} MiB source file",
                                lambda: f"{src.stat().st_size / MiB:.0f} MiB"):
                write_random_file(src, size)
            server = self.server(stack, root, "server")
            mount = self.mount(stack, root, server)
            sdk = server.sdk()
            times: dict[str, list[float]] = {"gemfs": [], "sdk": [], "stage": [], "upload": [],
                                             "far_gemfs": [], "far_sdk": []}
            reqs: dict[str, dict[str, int]] = {}
            rss = {"daemon": [], "server_gemfs": [], "server_sdk": [], "sdk_client": []}

            def received(srv: BenchServer) -> Callable[[], str]:
                def detail() -> str:
                    c = srv.requests()
                    return f"{(c['upload_chunk'] + c['upload_finalize']) * 8} MiB received"
                return detail

            for run in range(self.runs):
                # Alternate which side goes first, so neither always gets the warmer caches.
                order = ("gemfs", "sdk") if run % 2 == 0 else ("sdk", "gemfs")
                for side in order:
                    label = f"big_upload run {run + 1}/{self.runs}"
                    if side == "gemfs":
                        dest = mount.path / f"big-{run}.bin"
                        reset_peak_rss(mount.pid)
                        reset_peak_rss(server.pid)
                        with self.p.ticking(f"{label}: cp {size / MiB:.0f} MiB into the mount",
                                            received(server)):
                            secs, counts, _ = timed(server, lambda: sh(["cp", str(src), str(dest)]))
                        rss["daemon"].append(peak_rss(mount.pid))
                        rss["server_gemfs"].append(peak_rss(server.pid))
                        os.unlink(dest)  # files.delete: keeps the server's disk use flat
                    else:
                        reset_peak_rss(server.pid)
                        reset_peak_rss(os.getpid())
                        with self.p.ticking(f"{label}: SDK files.upload of {size / MiB:.0f} MiB",
                                            received(server)):
                            secs, counts, f = timed(server, lambda: sdk.files.upload(
                                file=str(src), config={"display_name": f"sdk-big-{run}.bin",
                                                       "mime_type": "application/octet-stream"}))
                        rss["server_sdk"].append(peak_rss(server.pid))
                        rss["sdk_client"].append(peak_rss(os.getpid()))
                        sdk.files.delete(name=f.name)
                    times[side].append(secs)
                    reqs[side] = nonzero(counts)
                    self.p.say(f"  {side}: {secs:.2f} s ({size / MB / secs:.0f} MB/s)")
                    if side == "gemfs":
                        self.halves(server, mount, src, run, times)
            del sdk
            # The same pair against a server --latency-ms away (information): staging costs
            # gemfs the same local seconds wherever the server is, the upload gets slower.
            far = self.server(stack, root, "server-far", self.sizes.latency_ms)
            far_mount = self.mount(stack, root, far, name="mnt-far")
            far_sdk = far.sdk()
            for run in range(self.runs):
                label = f"big_upload at {self.sizes.latency_ms} ms, run {run + 1}/{self.runs}"
                for side in (("gemfs", "sdk") if run % 2 == 0 else ("sdk", "gemfs")):
                    with self.p.ticking(f"{label}: {side}", received(far)):
                        if side == "gemfs":
                            dest = far_mount.path / f"big-{run}.bin"
                            secs, _, _ = timed(far, lambda: sh(["cp", str(src), str(dest)]))
                            os.unlink(dest)
                        else:
                            secs, _, f = timed(far, lambda: far_sdk.files.upload(
                                file=str(src), config={"display_name": f"sdk-big-{run}.bin",
                                                       "mime_type": "application/octet-stream"}))
                            far_sdk.files.delete(name=f.name)
                    times[f"far_{side}"].append(secs)
                    self.p.say(f"  {side}: {secs:.2f} s")
            del far_sdk
        g, s = median(times["gemfs"]), median(times["sdk"])
        mb = {k: [v / MB for v in vals] for k, vals in rss.items()}
        self.extra["big_upload"] = {"bytes": size, "rss_mb": mb,
                                    "throughput_MBps": {"gemfs": size / MB / g, "sdk": size / MB / s}}
        daemon, srv_g, srv_s = (max(mb["daemon"]), max(mb["server_gemfs"]), max(mb["server_sdk"]))
        return [
            Row("big_upload", f"cp {size / MiB:.0f} MiB vs files.upload", "s", g, s,
                "ratio <= 1.1", g / s <= 1.1, ratio=g / s, requests=reqs, samples=times),
            Row("big_upload", "  held temp name (GIO, rsync), 1: cp to it", "s",
                median(times["stage"]), None, "", None, samples={"gemfs": times["stage"]}),
            Row("big_upload", "  held temp name, 2: mv of it to NAME (its upload)", "s",
                median(times["upload"]), s, "", None, ratio=median(times["upload"]) / s,
                samples={"gemfs": times["upload"]}),
            Row("big_upload", f"  same, server at --latency-ms {self.sizes.latency_ms}", "s",
                median(times["far_gemfs"]), median(times["far_sdk"]), "ratio <= 1.05",
                median(times["far_gemfs"]) / median(times["far_sdk"]) <= 1.05,
                ratio=median(times["far_gemfs"]) / median(times["far_sdk"]),
                samples={"gemfs": times["far_gemfs"], "sdk": times["far_sdk"]}),
            Row("big_upload", "peak RSS: mount daemon (max of runs)", "MB", daemon, None,
                "<= 150 MB", daemon <= 150, samples={"gemfs": mb["daemon"]}),
            Row("big_upload", "peak RSS: server (max of runs)", "MB", srv_g, srv_s,
                "<= 150 MB", max(srv_g, srv_s) <= 150,
                samples={"gemfs": mb["server_gemfs"], "sdk": mb["server_sdk"]}),
            Row("big_upload", "peak RSS: the SDK's own process", "MB", None,
                max(mb["sdk_client"]), "", None, samples={"sdk": mb["sdk_client"]},
                note="the benchmark process itself, for comparison"),
        ]

    def halves(self, server: BenchServer, mount: BenchMount, src: Path, run: int,
               times: dict[str, list[float]]) -> None:
        """The same cp in its two halves: GIO's temp name `.goutputstream-XXXXXX` is held at
        close (gemfs/tempnames.py), so cp times the staging alone, and the rename to the final
        name (which uploads it) times the upload alone."""
        held = mount.path / f".goutputstream-BENCH{run % 10}"
        dest = mount.path / f"big-{run}.bin"
        with self.p.ticking("  gemfs in halves: cp to a held temp name, then mv to NAME"):
            stage, _, _ = timed(server, lambda: sh(["cp", str(src), str(held)]))
            upload, _, _ = timed(server, lambda: os.rename(held, dest))
        os.unlink(dest)
        times["stage"].append(stage)
        times["upload"].append(upload)
        self.p.say(f"  gemfs halves: staging {stage:.2f} s, upload {upload:.2f} s")

    # -- 2. many small files ---------------------------------------------------------------------

    def small_files(self) -> list[Row]:
        z = self.sizes
        times: dict[str, list[float]] = {"gemfs": [], "sdk": [], "gemfs_par": [], "sdk_par": []}
        reqs: dict[str, dict[str, int]] = {}
        with self.scope("small") as (stack, root):
            src = root / "small"
            src.mkdir()
            for i in range(z.small_count):
                write_random_file(src / f"f{i:04d}.bin", z.small_bytes)
            names = sorted(p.name for p in src.iterdir())
            self.p.say(f"small_files: {z.small_count} files of {z.small_bytes // 1024} KiB ready")
            for run in range(self.runs):
                # A fresh server and mount per run, so every run starts from an empty project
                # (a run uploads 4 x N Files; the next run's listing would otherwise carry them).
                with self.cleanup() as run_stack:
                    server = self.server(run_stack, root, f"server-{run}", z.latency_ms)
                    mount = self.mount(run_stack, root, server, name=f"mnt-{run}")
                    sdk = server.sdk()
                    label = f"small_files run {run + 1}/{self.runs}"

                    def done() -> str:
                        return f"{server.requests()['upload_finalize']}/{z.small_count} uploaded"

                    def gemfs_seq() -> None:
                        with self.p.ticking(f"{label}: cp -r {z.small_count} files", done):
                            secs, counts, _ = timed(
                                server, lambda: sh(["cp", "-r", str(src), str(mount.path / "seq")]))
                        times["gemfs"].append(secs)
                        reqs["gemfs"] = nonzero(counts)
                        self.p.say(f"  gemfs cp -r: {secs:.2f} s")

                    def sdk_seq() -> None:
                        def loop() -> None:
                            for name in names:
                                sdk.files.upload(file=str(src / name), config={
                                    "display_name": f"sdk-seq/{name}",
                                    "mime_type": "application/octet-stream"})
                        with self.p.ticking(f"{label}: SDK upload loop of {z.small_count} files",
                                            done):
                            secs, counts, _ = timed(server, loop)
                        times["sdk"].append(secs)
                        reqs["sdk"] = nonzero(counts)
                        self.p.say(f"  SDK loop: {secs:.2f} s")

                    for step in ((gemfs_seq, sdk_seq) if run % 2 == 0 else (sdk_seq, gemfs_seq)):
                        step()

                    dest = mount.path / "par"
                    dest.mkdir()
                    # xargs hands each cp a batch of names; -P keeps `parallel` cps running.
                    batch = max(1, math.ceil(z.small_count / (z.parallel * 4)))
                    command = (f"printf '%s\\n' * | xargs -P {z.parallel} -n {batch} "
                               f"cp -t {shlex_quote(str(dest))}")
                    with self.p.ticking(f"{label}: {z.parallel} parallel cp (xargs -P)", done):
                        secs, counts, _ = timed(server, lambda: sh(command, cwd=src))
                    times["gemfs_par"].append(secs)
                    reqs["gemfs_par"] = nonzero(counts)
                    self.p.say(f"  gemfs xargs -P {z.parallel}: {secs:.2f} s")

                    # The SDK with the same parallelism, to show what the server and this
                    # machine allow at all (information only).
                    from concurrent.futures import ThreadPoolExecutor

                    def sdk_par() -> None:
                        def one(name: str) -> None:
                            sdk.files.upload(file=str(src / name), config={
                                "display_name": f"sdk-par/{name}",
                                "mime_type": "application/octet-stream"})
                        with ThreadPoolExecutor(z.parallel) as pool:
                            list(pool.map(one, names))

                    with self.p.ticking(f"{label}: SDK with {z.parallel} threads", done):
                        secs, counts, _ = timed(server, sdk_par)
                    times["sdk_par"].append(secs)
                    reqs["sdk_par"] = nonzero(counts)
                    self.p.say(f"  SDK {z.parallel} threads: {secs:.2f} s")
                    listed = sum(1 for _ in sdk.files.list(config={"page_size": 100}))
                    if listed != 4 * z.small_count:
                        raise RuntimeError(f"expected {4 * z.small_count} Files, found {listed}")
                    del sdk
        g, s = median(times["gemfs"]), median(times["sdk"])
        gp, sp = median(times["gemfs_par"]), median(times["sdk_par"])
        speedup = g / gp
        self.extra["small_files"] = {"count": z.small_count, "bytes": z.small_bytes,
                                     "latency_ms": z.latency_ms, "parallel": z.parallel,
                                     "speedup_parallel": speedup,
                                     "files_per_s": {k: z.small_count / median(v)
                                                     for k, v in times.items()}}
        return [
            Row("small_files", f"cp -r {z.small_count} x {z.small_bytes // 1024} KiB vs SDK loop",
                "s", g, s, "ratio <= 1.2", g / s <= 1.2, ratio=g / s,
                requests={"gemfs": reqs["gemfs"], "sdk": reqs["sdk"]},
                samples={"gemfs": times["gemfs"], "sdk": times["sdk"]}),
            Row("small_files", f"{z.parallel} parallel cp vs SDK {z.parallel} threads", "s",
                gp, sp, "", None, ratio=gp / sp,
                requests={"gemfs": reqs["gemfs_par"], "sdk": reqs["sdk_par"]},
                samples={"gemfs": times["gemfs_par"], "sdk": times["sdk_par"]}),
            Row("small_files", f"speedup: sequential / {z.parallel} parallel cp", "x", speedup,
                None, ">= 3x", speedup >= 3),
        ]

    # -- 3. listing ------------------------------------------------------------------------------

    def listing(self) -> list[Row]:
        z = self.sizes
        pages = math.ceil(z.list_count / 100)
        t: dict[str, list[float]] = {"cold": [], "warm": [], "ttl": [], "sdk": [], "refresh": [],
                                     "seen": []}
        r: dict[str, dict[str, int]] = {}
        no_wait: list[bool] = []
        refresh_pages: list[int] = []
        mount_check: list[int] = []
        with self.scope("listing") as (stack, root):
            server = self.server(stack, root, "server", z.latency_ms)
            # The fixture: N Files seeded straight into the server's store (metadata only, one
            # transaction) through the admin API; uploading 5,000 Files would take minutes.
            server.admin.seed(KEY, z.list_count, prefix="bench-", size=1024)
            self.p.say(f"listing: seeded {z.list_count} Files (fixture, admin /seed)")
            sdk = server.sdk()
            for run in range(self.runs):
                label = f"listing run {run + 1}/{self.runs}"
                with self.cleanup() as run_stack:
                    server.admin.reset_stats()
                    # A fresh mount per run: the first ls -l after mount is the cold one.
                    mount = self.mount(run_stack, root, server, name=f"mnt-{run}",
                                       list_ttl=z.list_ttl)
                    mount_check.append(server.requests()["list"])

                    def ls() -> int:
                        out = sh(["ls", "-l", str(mount.path)], capture=True).stdout
                        return sum(1 for line in out.splitlines() if line.startswith("-"))

                    self.p.say(f"{label}: first ls -l after mount")
                    secs, counts, shown = timed(server, ls)
                    listed_at = time.monotonic()
                    if shown != z.list_count:
                        raise RuntimeError(f"ls -l showed {shown} files, expected {z.list_count}")
                    t["cold"].append(secs)
                    r["cold"] = counts
                    self.p.say(f"  cold: {secs:.3f} s, {counts['list']} list pages")

                    secs, counts, _ = timed(server, ls)
                    t["warm"].append(secs)
                    r["warm"] = counts
                    self.p.say(f"  second: {secs:.3f} s, {counts['list']} list pages")

                    # Past the TTL (counted from when the cold listing began): the next ls -l
                    # starts a refresh and must be answered from the old snapshot meanwhile.
                    time.sleep(max(0.0, listed_at + z.list_ttl + 0.5 - time.monotonic()))
                    server.admin.reset_stats()
                    t0 = time.perf_counter()
                    shown = ls()
                    secs = time.perf_counter() - t0
                    pages_at_return = server.requests()["list"]
                    if shown != z.list_count:
                        raise RuntimeError(f"ls -l showed {shown} files, expected {z.list_count}")
                    # The refresh is done once its last page is in; it must be exactly `pages`.
                    wait_for(lambda: server.requests()["list"] >= pages, timeout=120,
                             interval=0.01, what="the background refresh")
                    refresh_secs = time.perf_counter() - t0
                    time.sleep(0.3)  # nothing more may follow
                    counts = server.requests()
                    t["ttl"].append(secs)
                    t["refresh"].append(refresh_secs)
                    r["ttl"] = counts
                    refresh_pages.append(counts["list"])
                    # It did not wait if it returned while the refresh still had pages to fetch.
                    no_wait.append(pages_at_return < pages)
                    self.p.say(f"  after TTL: {secs:.3f} s ({pages_at_return} of {pages} pages "
                               f"in when it returned; refresh done after {refresh_secs:.3f} s, "
                               f"{counts['list']} pages)")

                    # Another client's File (SEMANTICS.md: it shows once a listing made after
                    # it is in): from the SDK's upload returning to `ls` showing it, looking
                    # every 50 ms. (The tests count the listings this takes, never the time.)
                    other = f"other-client-{run}.txt"
                    made = sdk.files.upload(file=io.BytesIO(b"from elsewhere\n"), config={
                        "display_name": other, "mime_type": "text/plain"})
                    t0 = time.perf_counter()
                    wait_for(lambda: other in os.listdir(mount.path), timeout=120,
                             interval=0.05, what="another client's File in the mount")
                    t["seen"].append(time.perf_counter() - t0)
                    sdk.files.delete(name=made.name)  # the next run's cold listing: N Files
                    self.p.say(f"  another client's File shown after {t['seen'][-1]:.3f} s")

                self.p.say(f"{label}: SDK files.list(page_size=100), all pages")
                secs, counts, n = timed(server, lambda: sum(
                    1 for _ in sdk.files.list(config={"page_size": 100})))
                if n != z.list_count:
                    raise RuntimeError(f"the SDK listed {n} Files, expected {z.list_count}")
                t["sdk"].append(secs)
                r["sdk"] = counts
                self.p.say(f"  SDK: {secs:.3f} s, {counts['list']} pages")
            del sdk
        cold, sdk_s = median(t["cold"]), median(t["sdk"])
        per_file = sum(r[k].get(op, 0) for k in ("cold", "warm", "ttl") for op in PER_FILE_OPS)
        self.extra["listing"] = {"files": z.list_count, "list_ttl": z.list_ttl,
                                 "latency_ms": z.latency_ms, "expected_pages": pages,
                                 "mount_check_pages": mount_check,
                                 "refresh_pages": refresh_pages, "no_wait": no_wait,
                                 "refresh_done_s": t["refresh"]}
        cold_ok = r["cold"]["list"] == pages and not any(r["cold"][op] for op in PER_FILE_OPS)
        return [
            Row("listing", f"first ls -l of {z.list_count} vs files.list all pages", "s", cold,
                sdk_s, "ratio <= 1.3", cold / sdk_s <= 1.3, ratio=cold / sdk_s,
                requests={"gemfs": nonzero(r["cold"]), "sdk": nonzero(r["sdk"])},
                samples={"gemfs": t["cold"], "sdk": t["sdk"]}),
            Row("listing", "requests of the first ls -l", "pages", r["cold"]["list"], r["sdk"]["list"],
                f"{pages} pages, 0 per-file", cold_ok,
                requests={"gemfs": nonzero(r["cold"])}),
            Row("listing", "second ls -l", "s", median(t["warm"]), None, "0 requests",
                sum(r["warm"].values()) == 0, requests={"gemfs": r["warm"]},
                samples={"gemfs": t["warm"]}),
            Row("listing", f"ls -l after the TTL ({z.list_ttl:g} s)", "s", median(t["ttl"]), None,
                "returns before the refresh", all(no_wait), samples={"gemfs": t["ttl"]},
                note=f"refresh done after {median(t['refresh']):.2f} s (median)"),
            Row("listing", "pages of that background refresh", "pages", median(refresh_pages),
                None, f"{pages} pages, 0 per-file",
                all(p == pages for p in refresh_pages) and per_file == 0,
                requests={"gemfs": nonzero(r["ttl"])}),
            Row("listing", "another client's File shown after", "s", median(t["seen"]), None,
                "<= TTL + refresh + 1 s",
                median(t["seen"]) <= z.list_ttl + median(t["refresh"]) + 1.0,
                samples={"gemfs": t["seen"]}),
            Row("listing", "mount's key check (files.list, 1 page)", "pages",
                median(mount_check), None, "", None),
        ]

    # -- 4. probes -------------------------------------------------------------------------------

    def probes(self) -> list[Row]:
        z = self.sizes
        times: list[float] = []
        reqs: list[dict[str, int]] = []
        with self.scope("probes") as (stack, root):
            # The same WAN-like latency as the other cases: a probe that did reach the API would
            # cost a round trip each, which is what file managers would feel.
            server = self.server(stack, root, "server", z.latency_ms)
            server.admin.seed(KEY, 100, prefix="bench-", size=1024)
            mount = self.mount(stack, root, server)
            sh(["ls", "-l", str(mount.path)])  # the first listing is in before the probes
            for run in range(self.runs):
                # Unique names per run: a repeated name would be answered by the kernel's
                # negative-lookup cache without reaching gemfs at all.
                names = [str(mount.path / f".probe-{run}-{i:05d}") for i in range(z.probe_count)]

                def probe() -> int:
                    missing = 0
                    for name in names:
                        try:
                            os.stat(name)
                        except FileNotFoundError:
                            missing += 1
                    return missing

                self.p.say(f"probes run {run + 1}/{self.runs}: {z.probe_count} stat() of missing names")
                secs, counts, missing = timed(server, probe)
                if missing != z.probe_count:
                    raise RuntimeError(f"{z.probe_count - missing} probes found a file")
                times.append(secs)
                reqs.append(counts)
                self.p.say(f"  {secs:.3f} s ({secs / z.probe_count * 1e6:.0f} us each), "
                           f"{sum(counts.values())} API requests")
        total = {op: sum(c[op] for c in reqs) for op in reqs[0]}
        self.extra["probes"] = {"count": z.probe_count,
                                "us_per_stat": median(times) / z.probe_count * 1e6}
        return [Row("probes", f"{z.probe_count} stat() of missing names", "s", median(times), None,
                    "0 API requests", sum(total.values()) == 0, requests={"gemfs": total},
                    samples={"gemfs": times})]


def shlex_quote(text: str) -> str:
    import shlex

    return shlex.quote(text)


def write_random_file(path: Path, size: int) -> None:
    """`size` bytes of incompressible data (nothing on the path compresses, but be honest)."""
    block = os.urandom(min(size, 4 * MiB)) if size else b""
    with open(path, "wb") as f:
        left = size
        while left > 0:
            f.write(block[:left])
            left -= len(block[:left])


# -- main ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes and 1 run each (development, smoke test)")
    parser.add_argument("--runs", type=int, default=None,
                        help="runs per case; the table shows medians (default 3, 1 with --quick)")
    parser.add_argument("--case", choices=CASES, action="append",
                        help="run only this case (repeatable)")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR,
                        help="where the JSON goes (default bench/results)")
    parser.add_argument("--show", type=Path, metavar="JSON",
                        help="print the tables of a saved run (text and markdown) and exit")
    args = parser.parse_args(argv)
    if args.show:
        return show(args.show)
    sizes = QUICK if args.quick else FULL
    runs = args.runs or (1 if args.quick else 3)
    cases = args.case or list(CASES)
    progress = Progress()
    machine = machine_info()
    started = datetime.now(timezone.utc)
    progress.say(f"gemfs bench: {', '.join(cases)}; {runs} run(s) each"
                 f"{' (quick sizes)' if args.quick else ''}")
    progress.say(f"machine: {describe_machine(machine)}; load average {machine['loadavg_start']}")
    bench = Bench(sizes, runs, progress, fork=args.quick)
    if bench.fork and launcher.forking():
        # The forkserver's preload (gemfs and google-genai) on one core while this process
        # imports the SDK, which its SDK side needs anyway, on the other.
        launcher.warm_up()
        import google.genai  # noqa: F401
    rows: list[Row] = []
    for case in cases:
        t0 = time.monotonic()
        rows += getattr(bench, case)()
        progress.say(f"{case}: done in {time.monotonic() - t0:.1f} s")
    machine["loadavg_end"] = os.getloadavg()

    lines = table_lines(rows)
    result = {
        "started": started.isoformat(),
        "command": "python -m bench.run " + " ".join(sys.argv[1:] if argv is None else argv),
        "quick": args.quick,
        "runs": runs,
        "sizes": asdict(sizes),
        "machine": machine,
        "cases": {case: [asdict(r) for r in rows if r.case == case] for case in cases},
        "details": bench.extra,
        "table": lines,
        "table_markdown": table_lines(rows, markdown=True),
    }
    args.results_dir.mkdir(parents=True, exist_ok=True)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    path = args.results_dir / f"{stamp}{'-quick' if args.quick else ''}.json"
    text = json.dumps(result, indent=2) + "\n"
    path.write_text(text)
    if not args.quick:  # latest.json is what the README quotes: full sizes only
        (args.results_dir / "latest.json").write_text(text)
    print()
    print(f"gemfs bench, {runs} run(s) per case, medians; {describe_machine(machine)}")
    print("\n".join(lines))
    print(f"\nresults: {path}")
    # A MISS is a finding, not a failure of the benchmark: the exit status says whether it ran.
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ngemfs bench: interrupted; mounts and servers were cleaned up", file=sys.stderr)
        sys.exit(130)
