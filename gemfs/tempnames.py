"""Which file names are someone's temporary or lock file, by the exact conventions of the tools
that make them (docs/SEMANTICS.md, "Temporary, lock and swap files").

Two kinds, and everything else is an ordinary name that is uploaded at close:
- *held*: a temp file that its writer renames over the final name right after closing it
  (rsync, GIO, mktemp, sed -i). Holding it saves one upload and one delete; it is a saving only, since a
  rename of any closed file works, so the patterns are exact and never catch an ordinary name.
- *local*: lock, swap and autosave files of editors and office suites. They exist to be seen by
  the same machine's next editor, never by the Files API: they stay on this mount, are never
  uploaded, and are gone at unmount.
"""

from __future__ import annotations

import re

# rsync's receiver writes `.NAME.XXXXXX` (mkstemp) and renames it; the same shape is a common
# ordinary dotfile name (`.bashrc.backup`), so it counts only when rsync itself made it.
_RSYNC = re.compile(r"^\..+\.[A-Za-z0-9]{6}$")
# GIO's g_file_replace: `.goutputstream-XXXXXX` (every GTK file manager and gio save/copy).
_GIO = re.compile(r"^\.goutputstream-[A-Za-z0-9]{6}$")
# sed -i writes `sedXXXXXX` beside the file and renames it over.
_SED = re.compile(r"^sed[A-Za-z0-9]{6}$")
# mktemp(1)'s default template, `tmp.XXXXXXXXXX`.
_MKTEMP = re.compile(r"^tmp\.[A-Za-z0-9]{10}$")

_LOCAL = re.compile(
    r"^\..+\.sw[a-px]$"  # vim/neovim swap files (.swp, .swo, ... .swa) and the .swx probe
    r"|^4913$"  # vim's probe for whether it may write the directory
    r"|^\.~lock\..+#$"  # LibreOffice / OpenOffice lock files
    r"|^~\$."  # Microsoft Office owner files
    r"|^\.#."  # emacs lock files
    r"|^#.+#$"  # emacs autosave files
    r"|^\..+\.kate-swp$"  # Kate/KWrite swap files
)


def is_held(name: str, command: str = "") -> bool:
    """A temp name whose writer renames it right after close (`command` is the creator's comm)."""
    if _GIO.match(name) or _MKTEMP.match(name):
        return True
    if command == "sed":
        return bool(_SED.match(name))
    return command == "rsync" and bool(_RSYNC.match(name))


def is_local(name: str) -> bool:
    """A lock, swap or autosave file: kept on this mount only, never uploaded."""
    return bool(_LOCAL.search(name))
