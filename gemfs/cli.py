"""`gemfs mount | unmount | status | wait | serve`: argument parsing, checking and wiring only.

Every mistake on the command line is one line on stderr and exit 2; every failure at run time
one line and exit 1; never a traceback. `gemfs SOURCE MOUNTPOINT -o OPTIONS` (how mount.fuse3
runs a `fuse.gemfs` line of /etc/fstab) goes to the mount helper in `fstab.py`.
"""

from __future__ import annotations

import argparse
import os
import sys
from urllib.parse import urlsplit

from gemfs.units import format_size, parse_size

COMMANDS = ("mount", "unmount", "status", "wait", "serve")


class UsageError(Exception):
    """A command line that cannot work; said in one line, exit 2."""


class Parser(argparse.ArgumentParser):
    """argparse with no abbreviations (`--api-key` must not become `--api-key-file`) and its
    errors in one line."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # noqa: D102 (argparse's)
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("gemfs")
    except Exception:  # not installed (running from a checkout): the package's own
        from gemfs import __version__

        return __version__


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number >= 0: {text!r}")
    return value


def _positive_seconds(text: str) -> float:
    value = _seconds(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"must be more than 0: {text!r}")
    return value


class _RefuseKeyOnCommandLine(argparse.Action):
    """`gemfs mount --api-key KEY` (a flag `gemfs serve` has): refused with what to use instead."""

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error("--api-key is not taken by mount (a key on the command line shows in ps): "
                     "set GEMINI_API_KEY or use --api-key-file FILE")


def check_base_url(url: str) -> str:
    """The URL of a Files API server as the SDK wants it, or a UsageError saying what to write."""
    parts = urlsplit(url.strip())
    example = "e.g. http://127.0.0.1:8765"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"--base-url {url}: needs http:// or https:// and a host ({example})")
    try:
        parts.port  # noqa: B018 (raises on a bad port)
    except ValueError:
        raise UsageError(f"--base-url {url}: not a valid port ({example})") from None
    segments = [s for s in parts.path.split("/") if s]
    if segments and segments[-1].lower().startswith("v1"):
        # The SDK adds the version itself: /v1beta/v1beta/files is "Method not found".
        root = f"{parts.scheme}://{parts.netloc}/" + "".join(s + "/" for s in segments[:-1])
        raise UsageError(f"--base-url {url}: leave out the API version /{segments[-1]}, "
                         f"the client adds it: write --base-url {root}")
    if parts.query or parts.fragment:
        raise UsageError(f"--base-url {url}: no query or fragment ({example})")
    return url.strip()


def read_key_file(path: str) -> str:
    try:
        with open(path) as f:
            key = f.read().strip()
    except IsADirectoryError:
        raise UsageError(f"--api-key-file {path}: is a directory") from None
    except OSError as e:
        raise UsageError(f"--api-key-file {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"--api-key-file {path}: not a text file") from None
    if not key:
        raise UsageError(f"--api-key-file {path}: holds no API key")
    if any(c.isspace() for c in key):
        raise UsageError(f"--api-key-file {path}: holds more than one word; put only the key in it")
    return key


def _cmd_mount(args: argparse.Namespace) -> int:
    from gemfs.mount import MountOptions, run

    if args.data and not args.local:
        raise UsageError("--data is for --local (the embedded server's data directory)")
    if args.local and args.base_url:
        raise UsageError("--local starts its own server: leave out --base-url, or --local")
    if args.local and args.api_key_file:
        raise UsageError("--local makes its own key: leave out --api-key-file, or --local")
    base_url = check_base_url(args.base_url) if args.base_url else None
    key = None
    if args.api_key_file:
        key = read_key_file(args.api_key_file)
    elif not args.local:
        # The SDK's own convention; GOOGLE_API_KEY wins when both are set, as in the SDK.
        key = os.environ.get("GOOGLE_API_KEY") or os.environ.get("GEMINI_API_KEY")
    server_args: list[str] = []
    if args.local:
        server_args += ["--project-quota", str(args.quota), "--max-file-size", str(args.max_file_size)]
    opts = MountOptions(
        mountpoint=args.mountpoint,
        api_key=key,
        base_url=base_url,
        local=args.local,
        data_dir=args.data,
        foreground=args.foreground,
        list_ttl=args.list_ttl,
        show_meta=args.show_meta,
        staging_dir=args.staging_dir,
        cache_dir=args.cache_dir,
        state_dir=args.state_dir,
        cache_size=args.cache_size,
        wait_active=args.wait_active,
        allow_other=args.allow_other,
        read_only=args.read_only,
        log_file=os.path.abspath(args.log_file) if args.log_file else None,
        debug=args.debug,
        quota=args.quota,
        max_file_size=args.max_file_size,
        stream_from=args.stream_from,
        retry_deadline=args.retry_deadline,
        request_timeout=args.request_timeout,
        attr_timeout=args.attr_timeout,
        server_args=tuple(server_args),
    )
    return run(opts)


def _cmd_unmount(args: argparse.Namespace) -> int:
    from gemfs.mount import unmount

    return unmount(args.mountpoint, timeout=args.timeout)


def _cmd_status(args: argparse.Namespace) -> int:
    from gemfs.status import run

    return run(args.mountpoint)


def _cmd_wait(args: argparse.Namespace) -> int:
    from gemfs.wait import run

    return run(args.paths, timeout=args.timeout)


def add_mount_arguments(m: argparse.ArgumentParser) -> None:
    from gemfs.mount import DEFAULTS as D

    m.add_argument("mountpoint")
    m.add_argument("--local", action="store_true",
                   help="start the embedded local Files API server (gemfs serve) and mount it")
    m.add_argument("--data", metavar="DIR",
                   help="with --local: where the server keeps its data (default ~/.local/share/gemfs/local)")
    m.add_argument("--api-key-file", metavar="FILE",
                   help="read the API key from FILE (keys never go on the command line)")
    m.add_argument("--api-key", nargs="?", action=_RefuseKeyOnCommandLine, help=argparse.SUPPRESS)
    m.add_argument("--base-url", metavar="URL",
                   help="any Files API server, without the version path (default: the real service)")
    m.add_argument("-f", "--foreground", action="store_true",
                   help="stay attached; Ctrl-C unmounts (use this under systemd, Type=notify)")
    m.add_argument("--list-ttl", type=_seconds, default=D.list_ttl, metavar="SECONDS",
                   help=f"refresh the listing in the background when older than this (default {D.list_ttl:g})")
    m.add_argument("--show-meta", action="store_true", help="list the NAME.meta.json sidecars too")
    m.add_argument("--staging-dir", metavar="DIR",
                   help="where written files wait for upload (default ~/.cache/gemfs/staging)")
    m.add_argument("--cache-dir", metavar="DIR",
                   help="where downloaded bytes are cached (default ~/.cache/gemfs/cache)")
    m.add_argument("--cache-size", type=_size, default=D.cache_size, metavar="BYTES",
                   help=f"most bytes the cache keeps, e.g. 512M, 10G; 0 turns it off "
                   f"(default {format_size(D.cache_size)})")
    m.add_argument("--state-dir", metavar="DIR",
                   help="the daemon's own state (default ~/.local/state/gemfs)")
    m.add_argument("--wait-active", action="store_true",
                   help="close() of a written file returns only once its File is ACTIVE")
    m.add_argument("--allow-other", action="store_true",
                   help="let other users see the mount (needs user_allow_other in /etc/fuse.conf)")
    m.add_argument("--read-only", action="store_true", help="refuse writes, deletes and mkdir")
    m.add_argument("--log-file", metavar="FILE", help="write the daemon's log here")
    m.add_argument("--debug", action="store_true",
                   help="log every FUSE operation and API call (never the API key)")
    m.add_argument("--quota", type=_size, default=D.quota, metavar="BYTES",
                   help=f"the project's storage quota that df shows (default {format_size(D.quota)})")
    m.add_argument("--max-file-size", type=_size, default=D.max_file_size, metavar="BYTES",
                   help=f"largest file accepted (default {format_size(D.max_file_size)})")
    m.add_argument("--stream-from", type=_size, default=D.stream_from, metavar="BYTES",
                   help="a file written this big starts uploading before its close; 0: only at "
                   f"the close (default {format_size(D.stream_from)})")
    m.add_argument("--retry-deadline", type=_seconds, default=D.retry_deadline, metavar="SECONDS",
                   help=f"how long one operation retries 429/5xx/connection errors (default {D.retry_deadline:g})")
    m.add_argument("--request-timeout", type=_positive_seconds, default=D.request_timeout,
                   metavar="SECONDS", help=f"timeout of one HTTP request (default {D.request_timeout:g})")
    m.add_argument("--attr-timeout", type=_seconds, default=D.attr_timeout, metavar="SECONDS",
                   help=f"how long the kernel may cache attributes and lookups (default {D.attr_timeout:g})")
    m.set_defaults(func=_cmd_mount)


def build_parser() -> argparse.ArgumentParser:
    from gemfs.server import main as server_main

    parser = Parser(prog="gemfs", description="The Gemini Files API as a folder on your disk.",
                    epilog="In /etc/fstab: `gemini /mnt/gemini fuse.gemfs OPTIONS 0 0`, which "
                    "mount runs as `gemfs SOURCE MOUNTPOINT -o OPTIONS` (see mount.gemfs --help).")
    parser.add_argument("--version", action="version", version=f"gemfs {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    m = sub.add_parser("mount", help="mount a Gemini project's Files at MOUNTPOINT",
                       description="Mount the Files API of one project (one API key) at MOUNTPOINT. "
                       "The key comes from GEMINI_API_KEY or GOOGLE_API_KEY, or --api-key-file; "
                       "--local mounts an embedded local Files API server instead. Sizes take "
                       "binary suffixes: 512M, 10G (= 10 GiB, as df -h says).")
    add_mount_arguments(m)

    u = sub.add_parser("unmount", help="finish uploads in flight, then unmount",
                       description="Wait for uploads in flight, then unmount; also cleans up a "
                       "stale mount left by a killed daemon. Plain `umount` works too.")
    u.add_argument("mountpoint")
    u.add_argument("--timeout", type=_seconds, default=600.0, metavar="SECONDS",
                   help="how long to wait for uploads in flight (default 600)")
    u.set_defaults(func=_cmd_unmount)

    s = sub.add_parser("status", help="mounts, uploads in flight, staged bytes, quota")
    s.add_argument("mountpoint", nargs="?")
    s.set_defaults(func=_cmd_status)

    w = sub.add_parser("wait", help="wait until Files are ACTIVE (processing done)",
                       description="Wait until the File behind each PATH on a gemfs mount is "
                       "ACTIVE. Exit 0 when all are, 1 when one FAILED (its error is printed), "
                       "2 on timeout.")
    w.add_argument("paths", nargs="+", metavar="PATH")
    w.add_argument("--timeout", type=_seconds, default=600.0, metavar="SECONDS",
                   help="give up after this long (default 600)")
    w.set_defaults(func=_cmd_wait)

    serve = sub.add_parser(
        "serve",
        help="run a local Files API server",
        description="A local server that speaks the Gemini Files API wire protocol.",
    )
    server_main.add_arguments(serve)
    serve.set_defaults(func=server_main.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if len(argv) >= 2 and argv[0] not in COMMANDS and not argv[0].startswith("-"):
            # `gemfs SOURCE MOUNTPOINT -o OPTIONS`: mount.fuse3 running a fuse.gemfs fstab line.
            from gemfs.fstab import main as helper_main

            return helper_main(argv, prog="gemfs")
        args = build_parser().parse_args(argv)
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # here, so a closed pipe is caught below and not at exit
        return code
    except UsageError as e:
        print(f"gemfs: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gemfs: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `gemfs status | head`: the reader is gone; say nothing more, and keep Python from
        # complaining about stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        print(f"gemfs: {where}{e.strerror or e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
