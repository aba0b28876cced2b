"""`make test-gui` only: the file-manager smoke test needs an X server and a GTK file manager,
so it runs when GEMFS_TEST_GUI=1 (set by that target) and is skipped, visibly, otherwise."""

from __future__ import annotations

import os
import shutil

import pytest

GUI_TOOLS = ("Xvfb", "pcmanfm", "xdotool", "import", "dbus-run-session")


def pytest_collection_modifyitems(config, items):
    here = os.path.dirname(__file__)
    mine = [item for item in items if str(item.fspath).startswith(here)]
    if not mine:
        return
    if os.environ.get("GEMFS_TEST_GUI") != "1":
        reason = "the file-manager smoke test runs with `make test-gui` (GEMFS_TEST_GUI=1)"
    else:
        missing = [tool for tool in GUI_TOOLS if shutil.which(tool) is None]
        if not missing:
            return
        reason = f"missing {', '.join(missing)}: `make gui-deps` installs them"
    for item in mine:
        item.add_marker(pytest.mark.skip(reason=reason))
