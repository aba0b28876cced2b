"""`gemfs serve`: command-line options, logging, and running the app on uvicorn until SIGINT or
SIGTERM (both exit 0).

Web frameworks are imported inside `run()` so that building the `gemfs` parser stays cheap.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import re
import signal
import socket
import struct
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode

from gemfs.server import wire
from gemfs.server.config import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    DEFAULT_SWEEP_INTERVAL_SECONDS,
    ServerConfig,
    default_data_dir,
    project_of_key,
)

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

    from gemfs.server.store import Limits

log = logging.getLogger(__name__)

# Query parameters that are secrets (API key, upload-session bearer token) and never logged.
_SECRET_PARAMS = frozenset({"key", "upload_id"})
_GRACEFUL_SHUTDOWN_SECONDS = 5

_SIZE_RE = re.compile(r"(\d+)\s*([kmgt]i?b?|b)?", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4}


class UsageError(Exception):
    pass


def byte_size(text: str) -> int:
    """`2147483648`, `2GiB` (binary) or `2GB` (decimal)."""
    m = _SIZE_RE.fullmatch(text.strip())
    if m is None:
        raise argparse.ArgumentTypeError(f"not a byte size: {text!r} (e.g. 1048576, 2GiB, 20GB)")
    number, unit = int(m.group(1)), (m.group(2) or "").lower()
    if "i" in unit:
        return number * 1024 ** " kmgt".index(unit[0])
    return number * _SIZE_UNITS[unit[:1]]


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {text!r}")
    return value


def processing_times(text: str) -> dict[str, float]:
    """`video=10,audio=2,pdf=1`: seconds a File stays PROCESSING, by class of MIME type."""
    out: dict[str, float] = {}
    for item in text.split(","):
        kind, sep, seconds = item.strip().partition("=")
        kind = kind.strip().lower()
        if not sep or kind not in wire.PROCESSING_CLASSES:
            raise argparse.ArgumentTypeError(
                f"not CLASS=SECONDS: {item.strip()!r} (classes: "
                f"{', '.join(wire.PROCESSING_CLASSES)}; e.g. video=10,audio=2)"
            )
        out[kind] = _non_negative_float(seconds.strip())
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--host", default=DEFAULT_HOST, help="address to listen on (default %(default)s)"
    )
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help="port; 0 picks a free one (default %(default)s)",
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        metavar="DIR",
        help=f"where Files and upload sessions are kept (default {default_data_dir()})",
    )
    parser.add_argument(
        "--api-key",
        action="append",
        default=[],
        metavar="KEY",
        help="accept this API key as its own project (repeatable; visible in `ps`: "
        "prefer --api-key-file)",
    )
    parser.add_argument(
        "--api-key-file",
        action="append",
        default=[],
        type=Path,
        metavar="FILE",
        help="accept the keys in FILE, one per line; blank lines and # comments ignored "
        "(repeatable)",
    )
    parser.add_argument(
        "--file-ttl",
        type=_non_negative_float,
        default=wire.DEFAULT_FILE_TTL_SECONDS,
        metavar="SECONDS",
        help="lifetime of a File (default %(default)s = 48 h)",
    )
    parser.add_argument(
        "--max-file-size",
        type=byte_size,
        default=wire.DEFAULT_MAX_FILE_SIZE,
        metavar="BYTES",
        help="largest File accepted (default %(default)s = 2 GiB)",
    )
    parser.add_argument(
        "--project-quota",
        type=byte_size,
        default=wire.DEFAULT_PROJECT_QUOTA,
        metavar="BYTES",
        help="storage per project, live Files plus open uploads (default %(default)s = 20 GiB)",
    )
    parser.add_argument(
        "--latency-ms",
        type=_non_negative_float,
        default=0.0,
        metavar="MS",
        help="delay added to every API request, to simulate a WAN (default 0)",
    )
    parser.add_argument(
        "--processing-seconds",
        type=processing_times,
        action="append",
        default=[],
        metavar="CLASS=S,...",
        help="how long Files stay PROCESSING after upload, by class: video (video/*), audio "
        "(audio/*), pdf (application/pdf); e.g. video=10,audio=2,pdf=1 (default "
        + ",".join(f"{k}={v:g}" for k, v in wire.DEFAULT_PROCESSING_SECONDS.items())
        + "; repeatable)",
    )
    parser.add_argument(
        "--video-processing-seconds",
        type=_non_negative_float,
        default=None,
        metavar="S",
        help="the same as --processing-seconds video=S "
        f"(default {wire.DEFAULT_VIDEO_PROCESSING_SECONDS:g})",
    )
    parser.add_argument(
        "--admin",
        action="store_true",
        help="enable the test/benchmark admin API under /_gemfs/admin/",
    )
    parser.add_argument(
        "--public-url",
        metavar="URL",
        help="base URL of upload session URLs (default: from the request's scheme and Host)",
    )
    parser.add_argument(
        "--sweep-interval",
        type=_non_negative_float,
        default=DEFAULT_SWEEP_INTERVAL_SECONDS,
        metavar="SECONDS",
        help="how often expired Files and stale uploads are removed (default %(default)s)",
    )
    parser.add_argument(
        "--log-level",
        default="warning",
        choices=["debug", "info", "warning", "error"],
        help="stderr log level (default %(default)s)",
    )
    parser.add_argument(
        "--access-log",
        action="store_true",
        help="log every request to stderr (API keys and upload ids are redacted)",
    )
    parser.add_argument(
        "--require-upload-size",
        action="store_true",
        help="refuse an upload start that does not give the size (400), as a service that "
        "needs it would; by default the size may be left unknown until finalize",
    )


def _read_keys(args: argparse.Namespace) -> frozenset[str]:
    keys = [k.strip() for k in args.api_key]
    if any(not k for k in keys):
        raise UsageError("--api-key must not be empty")
    for path in args.api_key_file:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise UsageError(f"cannot read --api-key-file {path}: {exc.strerror}") from None
        found = [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
        if not found:
            raise UsageError(f"--api-key-file {path} contains no key")
        keys.extend(found)
    return frozenset(project_of_key(k) for k in keys)


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be 0-65535, not {args.port}")
    if args.public_url and not re.match(r"https?://[^/]+", args.public_url):
        raise UsageError("--public-url must be an absolute http:// or https:// URL")
    if args.sweep_interval <= 0:
        raise UsageError("--sweep-interval must be > 0")
    processing = dict(wire.DEFAULT_PROCESSING_SECONDS)
    for given in args.processing_seconds:
        processing.update(given)
    if args.video_processing_seconds is not None:
        if any("video" in given for given in args.processing_seconds):
            raise UsageError("give the video processing time once, not in both options")
        processing["video"] = args.video_processing_seconds
    return ServerConfig(
        data_dir=(args.data or default_data_dir()).expanduser(),
        projects=_read_keys(args),
        file_ttl_seconds=args.file_ttl,
        max_file_size=args.max_file_size,
        project_quota=args.project_quota,
        latency_seconds=args.latency_ms / 1000.0,
        processing_seconds=processing,
        admin=args.admin,
        public_url=args.public_url,
        sweep_interval_seconds=args.sweep_interval,
        access_log=args.access_log,
        require_upload_size=args.require_upload_size,
    )


def store_limits(config: ServerConfig) -> Limits:
    """What the store enforces, from the server's settings."""
    from gemfs.server.store import Limits

    return Limits(
        file_ttl_seconds=config.file_ttl_seconds,
        max_file_size=config.max_file_size,
        project_quota=config.project_quota,
        processing_seconds=config.processing_seconds,
    )


def _configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def redact_query(query: str) -> str:
    pairs = parse_qsl(query, keep_blank_values=True)
    return urlencode([(k, "REDACTED" if k in _SECRET_PARAMS else v) for k, v in pairs])


class AccessLog:
    """Logs one line per request, without secrets (uvicorn's own access log prints raw query
    strings, so it stays off)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.log = logging.getLogger("gemfs.server.access")
        self.log.setLevel(logging.INFO)  # asked for explicitly, so shown at any --log-level

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = [0]

        async def send_and_note(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            query = scope.get("query_string", b"").decode("latin-1")
            target = scope["path"] + ("?" + redact_query(query) if query else "")
            self.log.info("%s %s %s", scope["method"], target, status[0] or "-")


def _make_protocol_class() -> type:
    from uvicorn.protocols.http.h11_impl import H11Protocol

    from gemfs.server.control import ABORT_EXTENSION, CLOSE_EXTENSION

    class AbortableH11Protocol(H11Protocol):
        """uvicorn's h11 protocol, offering the app a way to reset or close the connection
        without answering (used by fault injection to simulate a network failure)."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            app = self.app

            async def app_with_abort(scope: Scope, receive: Receive, send: Send) -> None:
                extensions = scope.setdefault("extensions", {})
                extensions[ABORT_EXTENSION] = self._abort
                extensions[CLOSE_EXTENSION] = self.transport.close
                await app(scope, receive, send)

            self.app = app_with_abort

        def _abort(self) -> None:
            sock = self.transport.get_extra_info("socket")
            if sock is not None:
                # Linger 0: close with RST rather than FIN, like a dropped connection.
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.transport.abort()

    return AbortableH11Protocol


def _make_server(config: Any, announce: Any) -> Any:
    import asyncio

    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, announcing itself once listening, and exiting 0 on SIGINT/SIGTERM
        (uvicorn re-raises the signal after shutdown, which would make the exit status -15).
        Signals go through the event loop, so shutdown starts at once instead of at the next
        0.1 s poll."""

        _woken: asyncio.Event | None = None

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if self.started and not self.should_exit:
                announce()

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            loop = asyncio.get_running_loop()  # serve() enters this inside the loop
            self._woken = asyncio.Event()
            signals = (signal.SIGINT, signal.SIGTERM)
            for sig in signals:
                loop.add_signal_handler(sig, self._on_signal, sig)
            try:
                yield
            finally:
                for sig in signals:
                    loop.remove_signal_handler(sig)

        def _on_signal(self, sig: int) -> None:
            self.handle_exit(sig, None)
            if self._woken is not None:
                self._woken.set()

        async def main_loop(self) -> None:
            counter = 0
            while not await self.on_tick(counter):
                counter = (counter + 1) % 864000
                if self._woken is None:
                    await asyncio.sleep(0.1)
                    continue
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._woken.wait(), 0.1)

    return Server(config)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must be IPPROTO_TCP, not 0: asyncio only sets TCP_NODELAY on accepted sockets whose
    # proto says TCP, and without it every response waits ~40 ms for a delayed ACK (Nagle).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except BaseException:
        sock.close()
        raise
    return sock


def run(args: argparse.Namespace) -> int:
    _configure_logging(args.log_level)
    try:
        config = config_from_args(args)
    except UsageError as exc:
        print(f"gemfs serve: {exc}", file=sys.stderr)
        return 2
    if config.open_mode:
        print(
            "gemfs serve: no API key configured (open mode): any non-empty key is accepted "
            "and each distinct key is its own project",
            file=sys.stderr,
            flush=True,
        )

    import uvicorn

    from gemfs.server.app import create_app
    from gemfs.server.store import Clock, Store, StoreError

    try:
        store = Store(config.data_dir, limits=store_limits(config), clock=Clock())
    except (StoreError, OSError) as exc:
        print(f"gemfs serve: cannot open data directory {config.data_dir}: {exc}", file=sys.stderr)
        return 1
    try:
        try:
            sock = _bind(args.host, args.port)
        except OSError as exc:
            print(f"gemfs serve: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
            return 1
        port = sock.getsockname()[1]
        host = f"[{args.host}]" if ":" in args.host else args.host

        def announce() -> None:
            print(f"gemfs serve: listening on http://{host}:{port}", flush=True)

        app: Any = create_app(config, store)
        if config.access_log:
            app = AccessLog(app)
        server = _make_server(
            uvicorn.Config(
                app,
                http=_make_protocol_class(),
                lifespan="on",
                access_log=False,
                log_config=None,
                server_header=False,
                timeout_graceful_shutdown=_GRACEFUL_SHUTDOWN_SECONDS,
            ),
            announce,
        )
        server.run(sockets=[sock])
        return 0 if server.started else 1
    finally:
        store.close()
