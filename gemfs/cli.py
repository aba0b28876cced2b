"""`gemfs mount | unmount | status | serve`: argument parsing and wiring only."""

from __future__ import annotations

import argparse
import os
import sys

GB = 1024**3  # the server and the mount count in binary units (docs/SERVER.md)


def _read_key_file(path: str) -> str:
    with open(path) as f:
        key = f.read().strip()
    if not key:
        raise SystemExit(f"gemfs: {path} holds no API key")
    return key


def _cmd_mount(args: argparse.Namespace) -> int:
    from gemfs.mount import MountOptions, run

    key = None
    if args.api_key_file:
        key = _read_key_file(args.api_key_file)
    elif not args.local:
        # The SDK's own convention; GOOGLE_API_KEY wins when both are set, as in the SDK.
        key = os.environ.get("GOOGLE_API_KEY") or os.environ.get("GEMINI_API_KEY")
    server_args: list[str] = []
    if args.local:
        server_args += ["--project-quota", str(args.quota), "--max-file-size", str(args.max_file_size)]
    opts = MountOptions(
        mountpoint=args.mountpoint,
        api_key=key,
        base_url=args.base_url,
        local=args.local,
        data_dir=args.data,
        foreground=args.foreground,
        list_ttl=args.list_ttl,
        show_meta=args.show_meta,
        staging_dir=args.staging_dir,
        allow_other=args.allow_other,
        read_only=args.read_only,
        log_file=os.path.abspath(args.log_file) if args.log_file else None,
        debug=args.debug,
        quota=args.quota,
        max_file_size=args.max_file_size,
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


def build_parser() -> argparse.ArgumentParser:
    from gemfs.server import main as server_main

    parser = argparse.ArgumentParser(
        prog="gemfs", description="The Gemini Files API as a folder on your disk."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    m = sub.add_parser("mount", help="mount a Gemini project's Files at MOUNTPOINT",
                       description="Mount the Files API of one project (one API key) at MOUNTPOINT. "
                       "The key comes from GEMINI_API_KEY or GOOGLE_API_KEY, or --api-key-file; "
                       "--local mounts an embedded local Files API server instead.")
    m.add_argument("mountpoint")
    m.add_argument("--local", action="store_true",
                   help="start the embedded local Files API server (gemfs serve) and mount it")
    m.add_argument("--data", metavar="DIR",
                   help="with --local: where the server keeps its data (default ~/.local/share/gemfs/local)")
    m.add_argument("--api-key-file", metavar="FILE",
                   help="read the API key from FILE (keys never go on the command line)")
    m.add_argument("--base-url", metavar="URL", help="any Files API server (default: the real service)")
    m.add_argument("-f", "--foreground", action="store_true", help="stay attached; Ctrl-C unmounts")
    m.add_argument("--list-ttl", type=float, default=30.0, metavar="SECONDS",
                   help="refresh the listing in the background when older than this (default 30)")
    m.add_argument("--show-meta", action="store_true", help="list the NAME.meta.json sidecars too")
    m.add_argument("--staging-dir", metavar="DIR",
                   help="where written files wait for upload (default ~/.cache/gemfs/staging)")
    m.add_argument("--allow-other", action="store_true",
                   help="let other users see the mount (needs user_allow_other in /etc/fuse.conf)")
    m.add_argument("--read-only", action="store_true", help="refuse writes, deletes and mkdir")
    m.add_argument("--log-file", metavar="FILE", help="write the daemon's log here")
    m.add_argument("--debug", action="store_true",
                   help="log every FUSE operation and API call (never the API key)")
    m.add_argument("--quota", type=int, default=20 * GB, metavar="BYTES",
                   help="the project's storage quota that df shows (default 20 GB)")
    m.add_argument("--max-file-size", type=int, default=2 * GB, metavar="BYTES",
                   help="largest file accepted (default 2 GB)")
    m.add_argument("--retry-deadline", type=float, default=60.0, metavar="SECONDS",
                   help="how long one operation retries 429/5xx/connection errors (default 60)")
    m.add_argument("--request-timeout", type=float, default=120.0, metavar="SECONDS",
                   help="timeout of one HTTP request (default 120)")
    m.add_argument("--attr-timeout", type=float, default=1.0, metavar="SECONDS",
                   help="how long the kernel may cache attributes and lookups (default 1)")
    m.set_defaults(func=_cmd_mount)

    u = sub.add_parser("unmount", help="finish uploads in flight, then unmount",
                       description="Wait for uploads in flight, then unmount; also cleans up a "
                       "stale mount left by a killed daemon.")
    u.add_argument("mountpoint")
    u.add_argument("--timeout", type=float, default=600.0, metavar="SECONDS",
                   help="how long to wait for uploads in flight (default 600)")
    u.set_defaults(func=_cmd_unmount)

    s = sub.add_parser("status", help="mounts, uploads in flight, staged bytes, quota")
    s.add_argument("mountpoint", nargs="?")
    s.set_defaults(func=_cmd_status)

    serve = sub.add_parser(
        "serve",
        help="run a local Files API server",
        description="A local server that speaks the Gemini Files API wire protocol.",
    )
    server_main.add_arguments(serve)
    serve.set_defaults(func=server_main.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
