"""`mount.gemfs`: the mount(8) helper, so /etc/fstab, `mount -t fuse.gemfs` and systemd mount
units can mount gemfs. It turns `SOURCE MOUNTPOINT [-o OPTIONS]` into `gemfs mount` flags.

How mount(8) gets here: for type `fuse.gemfs` util-linux runs /sbin/mount.fuse (Debian's fuse3
package links it to mount.fuse3), which runs `gemfs SOURCE MOUNTPOINT -o OPTIONS` through
/bin/sh with mount's PATH; `gemfs` hands such a call to this module. For type `gemfs`, util-linux
runs /sbin/mount.gemfs itself (a link to this console script).

SOURCE is `gemini` (the real service, or `base_url=`), `local` (the embedded server; `data=DIR`)
or an http(s) URL (a Files API server, as `base_url=`). Each `-o` option is a long flag of
`gemfs mount` with `_` for `-` (`api_key_file=FILE`, `list_ttl=5`, `cache_size=10G`,
`allow_other`, `read_only`); `ro` is `read_only`. The generic options mount(8) and systemd pass
along (`rw`, `_netdev`, `nofail`, `noauto`, `x-systemd.*`, `dev`, `suid`, ...) are ignored.
"""

from __future__ import annotations

import argparse
import os
import sys

SOURCES = "gemini, local, or an http(s):// URL"

# Options meant for mount(8), systemd, the kernel or mount.fuse3, not for gemfs: ignored.
GENERIC = {
    "defaults", "rw", "auto", "noauto", "user", "nouser", "users", "owner", "group", "_netdev",
    "nofail", "dev", "nodev", "suid", "nosuid", "exec", "noexec", "atime", "noatime",
    "relatime", "norelatime", "strictatime", "lazytime", "nodiratime", "diratime", "async",
    "sync", "dirsync", "silent", "loud", "mand", "nomand", "iversion", "noiversion",
}
GENERIC_PREFIXES = ("x-", "comment=", "setuid=", "drop_privileges")
# Not options for fstab: the key never goes in (see api_key_file), and the daemon must detach.
REFUSED = {"api_key": "put the key in a file and use api_key_file=FILE",
           "foreground": "mount(8) waits for the helper; run `gemfs mount -f` under systemd instead"}
ALIASES = {"ro": "read_only"}


def _mount_flags() -> dict[str, bool]:
    """`gemfs mount`'s long flags as option names: name -> whether it takes a value."""
    from gemfs.cli import Parser, add_mount_arguments

    parser = Parser(prog="gemfs mount")
    add_mount_arguments(parser)
    flags = {}
    for action in parser._actions:  # argparse has no public list of a parser's options
        longs = [o for o in action.option_strings if o.startswith("--")]
        if longs and action.help != argparse.SUPPRESS and longs[0] != "--help":
            flags[longs[0][2:].replace("-", "_")] = action.nargs != 0
    return flags


class HelperError(Exception):
    """A line of fstab that cannot work; said in one line, exit 2 (mount(8)'s usage error)."""


def translate(source: str, mountpoint: str, options: list[str], sloppy: bool = False) -> list[str]:
    """The `gemfs mount` arguments for one mount(8) call."""
    flags = _mount_flags()
    args = ["mount", mountpoint]
    if source == "local":
        args.append("--local")
    elif source.startswith(("http://", "https://")):
        args += ["--base-url", source]
    elif source != "gemini":
        raise HelperError(f"unknown source {source!r}: use {SOURCES}")
    for opt in options:
        name, has_value, value = opt.partition("=")
        name = ALIASES.get(name, name)
        if opt in GENERIC or opt.startswith(GENERIC_PREFIXES):
            continue
        if name in REFUSED:
            raise HelperError(f"option {name} is not taken here: {REFUSED[name]}")
        if name in ("local", "base_url") and name in flags:
            raise HelperError(f"option {name}: say it in the source field ({SOURCES})")
        if name not in flags:
            if sloppy:
                continue
            raise HelperError(f"unknown option {opt!r} (options are gemfs mount's long flags "
                              f"with _ for -, e.g. api_key_file=FILE, list_ttl=5, allow_other)")
        takes_value = flags[name]
        if takes_value and not has_value:
            raise HelperError(f"option {name} needs a value: {name}=...")
        if not takes_value and has_value:
            raise HelperError(f"option {name} takes no value")
        args.append("--" + name.replace("_", "-"))
        if takes_value:
            args.append(value)
    return args


def parse_argv(argv: list[str]) -> tuple[str, str, list[str], bool, bool]:
    """mount(8)'s helper calling convention: `SOURCE DIR [-sfnv] [-N NS] [-o OPTS] [-t TYPE]`.
    Returns source, mount point, options, sloppy, fake."""
    positional: list[str] = []
    options: list[str] = []
    sloppy = fake = False
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-o", "-t", "-N"):
            if i + 1 == len(argv):
                raise HelperError(f"{arg} needs a value")
            if arg == "-o":
                options += [o for o in argv[i + 1].split(",") if o]
            elif arg == "-N":
                raise HelperError("mounting in another namespace (-N) is not supported")
            i += 2
            continue
        if arg.startswith("-o") and len(arg) > 2:
            options += [o for o in arg[2:].split(",") if o]
        elif arg.startswith("-") and len(arg) > 1 and set(arg[1:]) <= set("sfnvi"):
            sloppy |= "s" in arg
            fake |= "f" in arg
        elif arg.startswith("-"):
            raise HelperError(f"unknown flag {arg}")
        else:
            positional.append(arg)
        i += 1
    if len(positional) != 2:
        raise HelperError("usage: mount.gemfs SOURCE MOUNTPOINT [-o OPTIONS]")
    return positional[0], positional[1], options, sloppy, fake


def main(argv: list[str] | None = None, prog: str = "mount.gemfs") -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in ("-h", "--help"):
        try:
            print(__doc__.strip(), flush=True)
        except BrokenPipeError:  # `mount.gemfs --help | head`
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    try:
        source, mountpoint, options, sloppy, fake = parse_argv(argv)
        args = translate(source, mountpoint, options, sloppy)
    except HelperError as e:
        if prog == "gemfs" and str(e).startswith("unknown source"):
            from gemfs.cli import COMMANDS

            e = HelperError(f"{argv[0]!r} is neither a command ({', '.join(COMMANDS)}) "
                            f"nor a mount source ({SOURCES}); see gemfs --help")
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    if fake:  # mount -f: do everything but the mount
        return 0
    from gemfs.cli import main as cli_main

    return cli_main(args)


if __name__ == "__main__":
    sys.exit(main())
